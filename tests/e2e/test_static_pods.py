"""The sandbox as a kubeadm cluster: static pod manifests run by the runner, mirror pods, and what
an administrator does to them — edit a flag, move a manifest out and back, change an image tag,
kill a component — with the results checked in the processes and through the API.

These tests change the control plane itself, so they get a sandbox of their own (one for the
module; crash back-off shortened to 1 s); the HA test gets one with three control planes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions, process
from kubecare.sandbox.binaries import (
    DEFAULT_KUBE_VERSION,
    KUBE_VERSIONS,
    ensure_binaries,
    find_kubectl,
)
from kubecare.sandbox.mirror import HASH
from kubecare.sandbox.staticpods import digest_of

from .conftest import own_sandbox, run_cli
from .workloads import wait_for

pytestmark = pytest.mark.e2e

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@pytest.fixture(scope="module")
async def kubeadm_sb(sandbox_state_dir: Path) -> AsyncIterator[Sandbox]:
    async with own_sandbox("static", SandboxOptions(workers=1, crash_backoff=1)) as sb:
        yield sb
    assert leftover(sb) == []


def leftover(sb: Sandbox) -> list[int]:
    """Live processes whose command line mentions the sandbox's state dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(sb.dir) in cmdline and process.is_running(int(proc.name)):
                pids.append(int(proc.name))
    return pids


def runner_pod(sb: Sandbox, component: str, node: str = "control-plane") -> dict[str, Any]:
    for p in sb.runner_report()["pods"]:
        if p["component"] == component and p["node"] == node:
            return dict(p)
    return {}


async def settled(sb: Sandbox, quiet: float = 3.0, timeout: float = 60) -> dict[str, int]:
    """Wait until every component runs, is ready and keeps its pid for `quiet` seconds.

    After a test restarts the apiserver, the scheduler and the controller-manager lose their
    leader lease and exit by themselves (that is kube-scheduler's behaviour, not a fault), so a
    test that snapshots pids must first let that settle.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: dict[str, int] = {}
    since = loop.time()
    while loop.time() < deadline:
        pods = {c: runner_pod(sb, c) for c in COMPONENTS}
        now = {
            c: int(p["pid"])
            for c, p in pods.items()
            if p.get("pid") and p.get("running") and p.get("ready")
        }
        if len(now) != len(COMPONENTS) or now != seen:
            seen, since = now, loop.time()
        elif loop.time() - since >= quiet:
            return now
        await asyncio.sleep(0.25)
    raise AssertionError(f"control plane did not settle in {timeout} s: {seen}")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def apiserver_ready(sb: Sandbox, timeout: float = 60) -> None:
    async def ready() -> bool:
        try:
            async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig), connect_timeout=1)) as k:
                return (await k.http.get("/readyz")).status_code == 200
        except Exception:
            return False

    await wait_for(ready, timeout=timeout, interval=0.5)


async def mirror_pods(sb: Sandbox) -> dict[str, dict[str, Any]]:
    async with Kube(sb.client_options()) as kube:
        items, _ = await kube.list_all(
            "/api/v1/namespaces/kube-system/pods", params={"labelSelector": "tier=control-plane"}
        )
    return {p["metadata"]["name"]: p for p in items}


def test_the_tree_and_the_manifests_are_kubeadms(kubeadm_sb: Sandbox) -> None:
    k8s = kubeadm_sb.node_dir("control-plane") / "etc" / "kubernetes"
    for name in (
        "admin.conf",
        "super-admin.conf",
        "controller-manager.conf",
        "scheduler.conf",
        "kubelet.conf",
    ):
        assert (k8s / name).exists(), name
    for rel in (
        "ca.crt",
        "apiserver.crt",
        "front-proxy-ca.crt",
        "sa.key",
        "etcd/ca.crt",
        "etcd/peer.crt",
    ):
        assert (k8s / "pki" / rel).exists(), rel
    assert (kubeadm_sb.node_dir("control-plane") / "var" / "lib" / "etcd" / "member").is_dir()
    for component in COMPONENTS:
        doc = yaml.safe_load((k8s / "manifests" / f"{component}.yaml").read_text())
        assert (doc["apiVersion"], doc["kind"]) == ("v1", "Pod")
        container = doc["spec"]["containers"][0]
        assert container["command"][0] == component
        assert container["image"].startswith(f"registry.k8s.io/{component}:")
        assert doc["spec"]["priorityClassName"] == "system-node-critical"
        assert container["livenessProbe"]["httpGet"]["port"] == "probe-port"
        # kubeadm wrote it: its own paths (/etc/kubernetes/pki, /var/lib/etcd, /etc/ssl/certs);
        # the runner resolves them inside the node's tree, never the machine's /etc
        for volume in doc["spec"]["volumes"]:
            assert volume["hostPath"]["path"].startswith(("/etc/", "/var/", "/usr/"))
        pid = runner_pod(kubeadm_sb, component)["pid"]
        paths = [a.split("=", 1)[1] for a in cmdline(pid) if "=/" in a]
        assert paths and all(p.startswith(str(kubeadm_sb.dir)) for p in paths), paths
    api = yaml.safe_load((k8s / "manifests" / "kube-apiserver.yaml").read_text())
    assert (
        api["spec"]["containers"][0]["image"]
        == f"registry.k8s.io/kube-apiserver:v{DEFAULT_KUBE_VERSION}"
    )
    assert "--client-ca-file=/etc/kubernetes/pki/ca.crt" in api["spec"]["containers"][0]["command"]
    assert api["metadata"]["annotations"] == {
        "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint": "192.0.2.11:6443"
    }
    etcd = yaml.safe_load((k8s / "manifests" / "etcd.yaml").read_text())
    assert etcd["spec"]["containers"][0]["image"] == "registry.k8s.io/etcd:3.7.0-0"  # kubeadm's pin
    assert etcd["metadata"]["annotations"] == {
        "kubeadm.kubernetes.io/etcd.advertise-client-urls": "https://192.0.2.11:2379"
    }
    # kubelet.conf is the node's own identity, from kubeadm's kubeconfig phase
    kubelet = yaml.safe_load((k8s / "kubelet.conf").read_text())
    assert kubelet["users"][0]["name"] == "system:node:control-plane"


async def test_kubectl_shows_the_control_plane_as_mirror_pods(kubeadm_sb: Sandbox) -> None:
    pods = await mirror_pods(kubeadm_sb)
    assert set(pods) == {f"{c}-control-plane" for c in COMPONENTS}
    for c in COMPONENTS:
        p = pods[f"{c}-control-plane"]
        annotations = p["metadata"]["annotations"]
        assert annotations["kubernetes.io/config.source"] == "file"
        assert (
            annotations["kubernetes.io/config.mirror"] == annotations["kubernetes.io/config.hash"]
        )
        assert p["metadata"]["ownerReferences"][0]["kind"] == "Node"
        assert p["status"]["phase"] == "Running"
        assert p["status"]["containerStatuses"][0]["image"].startswith(f"registry.k8s.io/{c}:")
    out = subprocess.run(
        [
            str(find_kubectl()),
            "--kubeconfig",
            str(kubeadm_sb.kubeconfig),
            "-n",
            "kube-system",
            "get",
            "pods",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "kube-apiserver-control-plane" in out and "Running" in out


async def test_editing_a_flag_restarts_the_apiserver_with_it(kubeadm_sb: Sandbox) -> None:
    manifest = kubeadm_sb.manifest_path("kube-apiserver")
    before = runner_pod(kubeadm_sb, "kube-apiserver")["pid"]
    text = manifest.read_text()
    manifest.write_text(text.replace("- --profiling=false", "- --profiling=true"))
    try:
        await wait_for(
            lambda: _async(
                runner_pod(kubeadm_sb, "kube-apiserver").get("pid") not in (None, before)
            ),
            timeout=30,
        )
        await apiserver_ready(kubeadm_sb)
        pid = runner_pod(kubeadm_sb, "kube-apiserver")["pid"]
        assert "--profiling=true" in cmdline(pid)
    finally:
        manifest.write_text(text)
        await wait_for(
            lambda: _async(
                "--profiling=false"
                in cmdline(runner_pod(kubeadm_sb, "kube-apiserver").get("pid") or 1)
            ),
            timeout=30,
        )
        await apiserver_ready(kubeadm_sb)


async def _async(value: Any) -> Any:
    return value


async def test_moving_the_manifest_out_stops_the_apiserver_and_back_restores_it(
    kubeadm_sb: Sandbox,
) -> None:
    manifest = kubeadm_sb.manifest_path("kube-apiserver")
    parked = manifest.parent.parent / "kube-apiserver.yaml"  # what an admin does: one dir up
    pid = runner_pod(kubeadm_sb, "kube-apiserver")["pid"]
    shutil.move(manifest, parked)
    try:
        await wait_for(lambda: _async(not process.is_running(pid)), timeout=30)
        res = run_cli("nodes", kubeconfig=kubeadm_sb.kubeconfig, timeout=30)
        assert res.returncode == 1 and "unreachable" in res.stderr
    finally:
        shutil.move(parked, manifest)
    await apiserver_ready(kubeadm_sb)
    assert run_cli("nodes", kubeconfig=kubeadm_sb.kubeconfig).returncode == 0


def restart_kubelet(sb: Sandbox) -> None:
    res = run_cli("sandbox", "exec", "--name", sb.name, "control-plane", "--",
                  "systemctl", "restart", "kubelet")  # fmt: skip
    assert res.returncode == 0, res.stderr


RUNNING_FROM_ALT = ("etcd", "kube-apiserver", "kube-controller-manager")


def from_dir(sb: Sandbox, where: Path) -> bool:
    pods = [runner_pod(sb, c) for c in RUNNING_FROM_ALT]
    return all(
        p.get("running") and p.get("ready") and str(p.get("file", "")).startswith(str(where))
        for p in pods
    )


def kubelet_report(sb: Sandbox) -> dict[str, Any]:
    return dict(sb.runner_report().get("kubelets", {}).get("control-plane") or {})


async def test_the_kubelet_config_is_reread_when_the_kubelet_restarts(kubeadm_sb: Sandbox) -> None:
    """As a kubelet: staticPodPath is read at (re)start, not when the file changes; a config
    the kubelet cannot start with changes nothing that runs."""
    root = kubeadm_sb.node_dir("control-plane")
    config = root / "var" / "lib" / "kubelet" / "config.yaml"
    original = config.read_text()
    manifests = root / "etc" / "kubernetes" / "manifests"
    alt = manifests.with_name("manifests-alt")
    alt.mkdir()
    for m in manifests.iterdir():  # the new dir holds every manifest but the scheduler's
        if m.name != "kube-scheduler.yaml":
            shutil.copy2(m, alt / m.name)
    pids = await settled(kubeadm_sb)
    doc = yaml.safe_load(original)
    assert doc["staticPodPath"] == "/etc/kubernetes/manifests"  # kubeadm's
    doc["staticPodPath"] = "/etc/kubernetes/manifests-alt"
    config.write_text(yaml.safe_dump(doc))
    try:
        await asyncio.sleep(5)  # two rescans: an edited config alone changes nothing
        assert process.is_running(pids["kube-scheduler"])
        restart_kubelet(kubeadm_sb)
        await wait_for(lambda: _async(not process.is_running(pids["kube-scheduler"])), timeout=30)
        # runner.json follows within its 0.25 s loop
        moved = {"staticPodPath": str(alt), "error": None}
        await wait_for(lambda: _async(kubelet_report(kubeadm_sb) == moved), timeout=5)
        # the same bytes in another file are other pods (the kubelet's pod UID hashes the path):
        # each runs again, from the new dir
        await wait_for(lambda: _async(from_dir(kubeadm_sb, alt)), timeout=90)
        await apiserver_ready(kubeadm_sb)
        pids = {c: runner_pod(kubeadm_sb, c)["pid"] for c in RUNNING_FROM_ALT}
        assert "kube-scheduler-control-plane" not in await mirror_pods(kubeadm_sb)

        config.write_text("apiVersion: v1\nkind: ConfigMap\n")  # a kubelet that cannot start
        restart_kubelet(kubeadm_sb)
        await wait_for(lambda: _async(bool(kubelet_report(kubeadm_sb)["error"])), timeout=30)
        report = kubelet_report(kubeadm_sb)
        assert "not a KubeletConfiguration" in report["error"]
        assert report["staticPodPath"] == str(alt)  # what ran runs on
        assert runner_pod(kubeadm_sb, "kube-apiserver")["pid"] == pids["kube-apiserver"]
        # and nothing manages it: a manifest removed meanwhile stops nothing
        (alt / "kube-controller-manager.yaml").unlink()
        await asyncio.sleep(5)
        assert process.is_running(pids["kube-controller-manager"])
    finally:
        config.write_text(original)
        restart_kubelet(kubeadm_sb)
    await wait_for(lambda: _async(bool(runner_pod(kubeadm_sb, "kube-scheduler").get("running"))),
                   timeout=30)  # fmt: skip
    back = {"staticPodPath": str(manifests), "error": None}
    await wait_for(lambda: _async(kubelet_report(kubeadm_sb) == back), timeout=5)
    shutil.rmtree(alt)
    await settled(kubeadm_sb, timeout=120)  # back in the first dir: each pod once more
    await apiserver_ready(kubeadm_sb)


async def test_the_previous_minors_image_tag_runs_that_version_and_back(
    kubeadm_sb: Sandbox,
) -> None:
    older = KUBE_VERSIONS[1]
    ensure_binaries(older)
    await kubeadm_sb.restart_component("kube-apiserver", version=older)
    async with Kube(kubeadm_sb.client_options()) as kube:
        assert (await kube.version())["gitVersion"] == f"v{older}"
        node = await kube.get_json("/api/v1/nodes/worker-1")  # the kubelets are not touched
        assert node["status"]["nodeInfo"]["kubeletVersion"] == f"v{DEFAULT_KUBE_VERSION}"
    status = {c.name: c for c in kubeadm_sb.status()[1]}["kube-apiserver-control-plane"]
    assert (status.version, status.image) == (
        f"v{older}",
        f"registry.k8s.io/kube-apiserver:v{older}",
    )
    await kubeadm_sb.restart_component("kube-apiserver", version=DEFAULT_KUBE_VERSION)
    async with Kube(kubeadm_sb.client_options()) as kube:
        assert (await kube.version())["gitVersion"] == f"v{DEFAULT_KUBE_VERSION}"

    async def mirror_image() -> bool:
        pods = await mirror_pods(kubeadm_sb)
        image = (
            pods.get("kube-apiserver-control-plane", {})
            .get("spec", {})
            .get("containers", [{}])[0]
            .get("image")
        )
        return bool(image == f"registry.k8s.io/kube-apiserver:v{DEFAULT_KUBE_VERSION}")

    await wait_for(mirror_image, timeout=30)


async def test_a_killed_component_is_restarted_and_counted(kubeadm_sb: Sandbox) -> None:
    await settled(kubeadm_sb)
    before = runner_pod(kubeadm_sb, "kube-scheduler")
    os.kill(before["pid"], signal.SIGKILL)

    async def back() -> bool:
        now = runner_pod(kubeadm_sb, "kube-scheduler")
        return bool(now.get("running") and now.get("pid") != before["pid"])

    await wait_for(back, timeout=40)
    # (at least: the scheduler also restarts by itself when it loses its leader lease)
    restarts = runner_pod(kubeadm_sb, "kube-scheduler")["restarts"]
    assert restarts >= before["restarts"] + 1

    async def mirror_counts() -> bool:
        p = (await mirror_pods(kubeadm_sb))["kube-scheduler-control-plane"]
        return bool(p["status"]["containerStatuses"][0]["restartCount"] >= restarts)

    await wait_for(mirror_counts, timeout=30)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("not-yaml.yaml", "kind: Pod\n  bad: [", "is not valid YAML"),
        ("no-command.yaml", None, "has no command"),
        ("outside.yaml", None, "is outside the sandbox's state dir"),
        ("kube-scheduler.yaml.orig", None, "already runs; one static pod per name"),
    ],
)
async def test_a_bad_manifest_is_reported_and_the_others_keep_running(
    kubeadm_sb: Sandbox, name: str, content: str | None, message: str
) -> None:
    path = kubeadm_sb.manifest_path("etcd").parent / name
    if content is None:
        doc = yaml.safe_load(kubeadm_sb.manifest_path("kube-scheduler").read_text())
        if name == "no-command.yaml":
            doc["metadata"]["name"] = "no-command"
            del doc["spec"]["containers"][0]["command"]
        elif name == "outside.yaml":
            doc["metadata"]["name"] = "outside"
            # absolute paths are the node's own (inside its root); a symlink there leads out.
            # (A path with "..", the other way out, is no valid Pod: the apiserver refuses its
            # mirror pod, the kubelet the manifest; the unit tests cover it.)
            escape = kubeadm_sb.manifest_path("etcd").parents[1] / "escape"
            escape.unlink(missing_ok=True)
            escape.symlink_to("/etc")
            doc["spec"]["volumes"][0]["hostPath"]["path"] = "/etc/kubernetes/escape"
        # else: a backup copy left in the dir, with the running pod's name
        content = yaml.safe_dump(doc)
    pids = await settled(kubeadm_sb)
    path.write_text(content)
    try:

        async def reported() -> bool:
            return any(
                message in (p.get("error") or "") for p in kubeadm_sb.runner_report()["pods"]
            )

        await wait_for(reported, timeout=20)
        assert message in process.tail(kubeadm_sb.log_path("runner"), 20)
        assert {c: runner_pod(kubeadm_sb, c)["pid"] for c in COMPONENTS} == pids  # untouched
        status = run_cli("sandbox", "status", "--name", kubeadm_sb.name)
        assert "InvalidManifest" in status.stdout
        if name in ("no-command.yaml", "outside.yaml"):
            # a valid Pod that cannot run: as the kubelet, its mirror pod exists with the
            # manifest's hash and the error (kubeadm waits on that hash), it is not deleted
            want_hash = digest_of(content.encode())

            async def mirrored() -> dict[str, Any] | None:
                p = (await mirror_pods(kubeadm_sb)).get(f"{name[:-5]}-control-plane")
                if not p or p["metadata"]["annotations"].get(HASH) != want_hash:
                    return None
                return p

            mirror = await wait_for(mirrored, timeout=20)
            waiting = mirror["status"]["containerStatuses"][0]["state"]["waiting"]
            assert waiting["reason"] == "InvalidManifest" and message in waiting["message"]
    finally:
        path.unlink()
        (kubeadm_sb.manifest_path("etcd").parents[1] / "escape").unlink(missing_ok=True)


async def test_an_image_never_built_shows_the_build_command_on_its_mirror_pod(
    kubeadm_sb: Sandbox,
) -> None:
    doc = yaml.safe_load(kubeadm_sb.manifest_path("kube-scheduler").read_text())
    doc["metadata"]["name"] = "second-scheduler"
    doc["spec"]["containers"][0]["image"] = "registry.k8s.io/kube-scheduler:v1.30.0"
    path = kubeadm_sb.manifest_path("etcd").parent / "second-scheduler.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:

        async def waiting() -> dict[str, Any] | None:
            p = (await mirror_pods(kubeadm_sb)).get("second-scheduler-control-plane")
            if not p:
                return None
            state = p["status"].get("containerStatuses", [{}])[0].get("state", {})
            return state.get("waiting")

        try:
            waiting_state = await wait_for(waiting, timeout=30)
        except AssertionError as e:
            raise AssertionError(
                f"{e}; runner log:\n{process.tail(kubeadm_sb.log_path('runner'), 30)}"
            ) from None
        assert waiting_state["reason"] == "ErrImagePull"
        assert "not a version the sandbox can build" in waiting_state["message"]
    finally:
        path.unlink()

    async def gone() -> bool:
        return "second-scheduler-control-plane" not in await mirror_pods(kubeadm_sb)

    await wait_for(gone, timeout=30)  # manifest removed: mirror pod removed


async def test_an_apiserver_outage_mid_drain_is_retried_then_reported_and_the_rerun_resumes(
    kubeadm_sb: Sandbox,
) -> None:
    """A drain waiting on a PDB when the apiserver process stops (on this module's sandbox,
    whose control plane the tests stop and start): retried for the whole transient budget,
    then reported; the node stays cordoned, and the same drain again finishes."""
    from kubecare.nodes.cordon import set_unschedulable

    from .conftest import cli_argv
    from .test_drain import DS, _pdb_observed, states
    from .workloads import apply, cordoned, deployment, pdb, wait_running

    ns, node = "outage-drain", "worker-1"  # the control plane is tainted: web lands here
    async with Kube(kubeadm_sb.client_options()) as k:
        await k.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        await wait_for(lambda: _account(k, ns), timeout=60)
        await apply(k, ns, deployment("web", 2, {"containers": [{"name": "c", "image": "pause"}],
                                                 "terminationGracePeriodSeconds": 0}),
                    pdb("web", {"app": "web"}, max_unavailable=0))  # fmt: skip
        await wait_running(k, ns, 2)
        await wait_for(lambda: _pdb_observed(k, ns, "web"))
    try:
        argv = cli_argv("drain", node, DS, kubeconfig=kubeadm_sb.kubeconfig)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        await asyncio.sleep(4)  # the drain is now waiting on the PDB
        kubeadm_sb.stop_component("kube-apiserver")
        _, err = await asyncio.to_thread(proc.communicate, timeout=120)
        assert proc.returncode == 1, err
        assert f"retrying pod {ns}/" in err
        assert f'drain of node "{node}" stopped: apiserver at https://127.0.0.1:' in err
        assert "the node stays cordoned; run the same drain again to resume" in err
        assert "Traceback" not in err
        await kubeadm_sb.start_component("kube-apiserver")
        async with Kube(kubeadm_sb.client_options()) as k:
            assert await cordoned(k, node)
            await k.request_json(
                "DELETE", f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/web"
            )
        res = run_cli("drain", node, DS, "-o", "json", kubeconfig=kubeadm_sb.kubeconfig,
                      timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert set(states(json.loads(res.stdout)[0], ns)) == {"evicted"}
    finally:
        await kubeadm_sb.start_component("kube-apiserver")
        async with Kube(kubeadm_sb.client_options()) as k:
            await set_unschedulable(k, node, False)
            await k.request_json("DELETE", f"/api/v1/namespaces/{ns}")


async def _account(kube: Kube, ns: str) -> bool:
    path = f"/api/v1/namespaces/{ns}/serviceaccounts/default"
    return bool((await kube.http.get(path)).status_code == 200)


async def test_outage_settings_come_from_the_static_pods(sandbox: Sandbox) -> None:
    """The session sandbox runs with a 10 s node-monitor grace period: kubecare reads it from the
    controller-manager's mirror pod, as on any kubeadm cluster."""
    res = run_cli("outage", "-o", "json", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 0, res.stderr
    grace = json.loads(res.stdout)["settings"]["node_monitor_grace_period"]
    assert grace == {
        "name": "node-monitor-grace-period",
        "seconds": 10,
        "source": "kube-controller-manager flag (static pod)",
    }
