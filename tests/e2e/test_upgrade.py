"""Versions and cluster upgrades on a real HA sandbox (three control-plane nodes, Kubernetes
1.36) upgraded to 1.37 for real, by the real kubeadm v1.37.2 on each node (`kubeadm upgrade
apply` on the first control plane, `kubeadm upgrade node` elsewhere): kubeadm rewrites the static
pods' manifests and the runner restarts each component at the new binary.

One sandbox for the module, in this order (each later test needs the earlier state): versions and
skew, plan refusals and bad input, a deprecated CRD version in use, the full rolling upgrade with
the sandbox executor (workloads under a PDB watched throughout; run as the second wave of a fleet
upgrade after a one-node canary), then — on nodes added at the old
version — a failing executor step and its resume, kill -9 and resume, the ssh executor against
Debian's OpenSSH server, and the job executor.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kubecare.errors import KubecareError
from kubecare.kube import ClientOptions, Kube
from kubecare.nodes.cordon import set_unschedulable
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import etcd_version_for
from kubecare.sandbox.nodes import set_kubelet_version

from .conftest import cli_argv, own_sandbox, run_cli
from .workloads import apply, cordoned, deployment, is_ready, pdb, pods, wait_for, wait_running

pytestmark = pytest.mark.e2e

OLD, NEW = "1.36.3", "1.37.2"
KUBECTL = Path(sys.executable).parent / "kubectl"


@pytest.fixture(scope="module")
async def usb(sandbox_state_dir: Path) -> AsyncIterator[Sandbox]:
    opts = SandboxOptions(workers=3, control_planes=3, version=OLD)
    async with own_sandbox("upgrade", opts) as sb:
        yield sb


@pytest.fixture(scope="module")
async def ukube(usb: Sandbox) -> AsyncIterator[Kube]:
    async with Kube(ClientOptions(kubeconfig=str(usb.kubeconfig))) as k:
        yield k


async def new_namespace(kube: Kube, name: str) -> str:
    await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})

    async def account() -> bool:
        return (
            await kube.http.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
        ).status_code == 200

    await wait_for(account, timeout=60)
    return name


def cli(sb: Sandbox, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, kubeconfig=sb.kubeconfig, timeout=timeout)


def one_error_line(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def versions(sb: Sandbox) -> dict[str, Any]:
    res = cli(sb, "versions", "--sandbox", sb.name, "-o", "json")
    assert res.returncode == 0, res.stderr
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def by(data: dict[str, Any], name: str) -> dict[str, str]:
    return {c["node"]: c["version"] for c in data["components"] if c["name"] == name}


def cluster_violations(data: dict[str, Any]) -> list[dict[str, Any]]:
    # the kubectl on this machine's $PATH is the operator's client, not the cluster's
    return [v for v in data["violations"] if v["component"] != "kubectl"]


async def journal(kube: Kube) -> dict[str, Any]:
    cm = await kube.get_json("/api/v1/namespaces/kube-system/configmaps/kubecare-upgrade")
    data: dict[str, Any] = json.loads(cm["data"]["journal.json"])
    return data


async def kubelet(kube: Kube, node: str) -> str:
    obj = await kube.get_json(f"/api/v1/nodes/{node}")
    return str(obj["status"]["nodeInfo"]["kubeletVersion"])


# -- 1. versions -------------------------------------------------------------------------------
async def test_versions_reports_every_component_and_the_skew(usb: Sandbox, ukube: Kube) -> None:
    data = versions(usb)
    cps = {"control-plane-1", "control-plane-2", "control-plane-3"}
    assert by(data, "kube-apiserver") == dict.fromkeys(cps, f"v{OLD}")
    sources = {c["source"] for c in data["components"] if c["name"] == "kube-apiserver"}
    # each instance asked at the address its mirror pod names (through the host's forward)
    assert sources == {f"/version at 192.0.2.1{i}:6443" for i in (1, 2, 3)}
    assert by(data, "kube-controller-manager") == dict.fromkeys(cps, f"v{OLD}")
    assert by(data, "kube-scheduler") == dict.fromkeys(cps, f"v{OLD}")
    etcd = [c for c in data["components"] if c["name"] == "etcd"]
    assert {c["version"] for c in etcd if c["source"] == "mirror pod image"} == {"3.6.8-0"}
    # the etcd each member really runs: the release of its tag's minor (Status RPC)
    served = [c["version"] for c in etcd if c["source"] == "Status RPC"]
    assert served == [f"v{etcd_version_for(OLD)}"] * 3
    assert set(by(data, "kubelet")) == cps | {"worker-1", "worker-2", "worker-3"}
    # kubeadm's addon phase installed them: the sandbox's kubeadm of this version pins the tags
    assert by(data, "kube-proxy") == {"": f"v{OLD}"}
    assert by(data, "coredns") == {"": "v1.14.2"}  # kubeadm v1.36's constants.CoreDNSVersion
    assert not any("not installed" in n for n in data["notes"])
    assert cluster_violations(data) == []

    # A kubelet four minors behind and one newer than every apiserver: both reported.
    await set_kubelet_version(ukube, "worker-1", "1.32.0")
    await set_kubelet_version(ukube, "worker-2", NEW)
    try:
        res = cli(usb, "versions", "--strict", "-o", "json")
        assert res.returncode == 1
        got = {(v["node"], v["rule"]) for v in cluster_violations(json.loads(res.stdout))}
        # and kube-proxy (v{OLD}, kubeadm's) four minors from worker-1's kubelet
        assert got == {
            ("worker-1", "kubelet-older"),
            ("worker-2", "kubelet-newer"),
            ("", "proxy-kubelet"),
        }
        table = cli(usb, "versions").stdout
        assert "kubelet v1.37.2 on worker-2: newer than kube-apiserver v1.36.3" in table
        assert "kubelet v1.32.0 on worker-1: 4 minors behind" in table
    finally:
        for n in ("worker-1", "worker-2"):
            await set_kubelet_version(ukube, n, OLD)


# -- 2. plan: refusals and bad input -------------------------------------------------------------
async def test_plan_refuses_skips_and_downgrades_and_bad_input_changes_nothing(
    usb: Sandbox, ukube: Kube
) -> None:
    skip = cli(usb, "upgrade", "plan", "--to", "v1.38.0")
    assert skip.returncode == 1
    assert (
        "NO-GO: v1.38.0 is too high" in skip.stdout and "1 minor version at a time" in skip.stdout
    )
    down = cli(usb, "upgrade", "plan", "--to", "v1.35.9")
    assert down.returncode == 1 and "kubecare does not downgrade" in down.stdout
    patch_down = cli(usb, "upgrade", "plan", "--to", "v1.36.1", "-o", "json")
    assert patch_down.returncode == 1 and not json.loads(patch_down.stdout)["go"]

    good = cli(usb, "upgrade", "plan", "--to", f"v{NEW}", "--ignore-daemonsets", "-o", "json")
    assert good.returncode == 0, good.stdout + good.stderr
    plan = json.loads(good.stdout)
    assert plan["go"] and plan["etcd_target"] == "3.7.0-0"
    assert [(s["node"], s["role"]) for s in plan["steps"]][:3] == [
        ("control-plane-1", "first-control-plane"),
        ("control-plane-2", "control-plane"),
        ("control-plane-3", "control-plane"),
    ]

    bad = [
        (("upgrade", "plan", "--to", "1.37"), "not a Kubernetes version"),
        (("upgrade", "plan", "--to", "v1.37.x"), "not a Kubernetes version"),
        (("upgrade", "plan", "--to", f"v{NEW}", "--max-unavailable", "0"), "--max-unavailable"),
        (
            ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "command", "--yes",
             "--command", "echo {nodename}"),
            "unknown placeholder {nodename}",
        ),
        (
            ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "command", "--yes",
             "--command", "echo {node"),
            "--command 'echo {node'",
        ),
        (("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--yes"), "needs --sandbox"),
        (
            ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox", "nosuch",
             "--yes"),
            'sandbox "nosuch" not found',
        ),
        (("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox", usb.name,
          "--yes", "--window", "Someday 02:00-06:00"), "--window"),
        (("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox", usb.name),
         "add --yes"),
    ]  # fmt: skip
    for args, message in bad:
        res = cli(usb, *args)
        assert res.returncode in (1, 2), (args, res.stderr)
        assert message in one_error_line(res), (args, res.stderr)
    # Nothing changed: no journal, no node cordoned, every version where it was.
    with pytest.raises(Exception, match="not found"):
        await journal(ukube)
    for n in ("control-plane-1", "worker-1", "worker-2", "worker-3"):
        assert not await cordoned(ukube, n)
    assert set(by(versions(usb), "kube-apiserver").values()) == {f"v{OLD}"}


# -- 2b. the plan against kubeadm's own -----------------------------------------------------------
def on_node(sb: Sandbox, node: str, *command: str) -> subprocess.CompletedProcess[str]:
    return run_cli("sandbox", "exec", "--name", sb.name, node, "--", *command, timeout=300)


def _v(text: str) -> str:
    return text.removeprefix("v")  # kubeadm writes kube-proxy's current version without the v


async def test_the_plan_lists_what_kubeadm_upgrade_plan_lists(usb: Sandbox) -> None:
    """The real kubeadm v1.37.2 on the first control plane, asked for its plan of the same
    cluster: every row (component, node, current, new) kubeadm would change, kubecare's plan
    has, and no other. Then kubeadm's `upgrade diff` and `upgrade apply --dry-run` run through
    on the sandbox, and change nothing."""
    from kubecare.sandbox.executor import cgroup_v1

    first = "control-plane-1"
    await usb.install(first, "kubeadm", NEW)
    skip = ["--ignore-preflight-errors=SystemVerification"] if cgroup_v1() else []
    res = on_node(usb, first, "kubeadm", "upgrade", "plan", f"v{NEW}", "-o", "json", *skip)
    assert res.returncode == 0, res.stderr[-2000:]
    upgrade = json.loads(res.stdout)["availableUpgrades"]
    assert len(upgrade) == 1
    theirs = {
        (c["name"].lower(), c.get("nodeName", ""), _v(c["currentVersion"]), _v(c["newVersion"]))
        for c in upgrade[0]["components"]
        if c["name"] != "kubeadm" and c["currentVersion"] != c["newVersion"]
    }
    ours_res = cli(usb, "upgrade", "plan", "--to", f"v{NEW}", "--ignore-daemonsets", "-o", "json")
    assert ours_res.returncode == 0, ours_res.stderr
    plan = json.loads(ours_res.stdout)
    ours = {
        (c["component"], s["node"], _v(c["current"]), _v(c["target"]))
        for s in plan["steps"]
        for c in s["changes"]
    } | {(c["component"], "", _v(c["current"]), _v(c["target"])) for c in plan["addons"]}
    assert ours == theirs
    assert ("coredns", "", "1.14.2", "1.14.6") in ours  # kubeadm v1.37's CoreDNS
    # no --to: the next minor's newest release kubecare knows, and the plan says where from
    dflt = cli(usb, "upgrade", "plan", "--ignore-daemonsets", "-o", "json")
    assert dflt.returncode == 0, dflt.stderr
    d = json.loads(dflt.stdout)
    assert d["target"] == f"v{NEW}" and "release list" in d["target_reason"], d["target_reason"]
    assert [s["changes"] for s in d["steps"]] == [s["changes"] for s in plan["steps"]]

    manifests = usb.node_root(first) / "etc" / "kubernetes" / "manifests"
    before = {p.name: p.read_bytes() for p in manifests.iterdir()}
    diff = on_node(usb, first, "kubeadm", "upgrade", "diff", f"v{NEW}")
    assert diff.returncode == 0, diff.stderr[-2000:]
    assert f"image: registry.k8s.io/kube-apiserver:v{NEW}" in diff.stdout
    dry = on_node(usb, first, "kubeadm", "upgrade", "apply", f"v{NEW}", "--dry-run", "--yes", *skip)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-2000:]
    assert "Finished dryrunning successfully!" in dry.stdout + dry.stderr
    assert {p.name: p.read_bytes() for p in manifests.iterdir()} == before


async def test_the_preflight_counts_only_this_clusters_snapshot_and_backup(
    usb: Sandbox, sandbox: Sandbox, tmp_path: Path
) -> None:
    """A snapshot directory and a backup store shared with another cluster (the session's
    sandbox): the preflight names this cluster's own snapshot and backup, though the other
    cluster's are newer, and says what it passed over."""
    snaps, store = tmp_path / "snapshots", tmp_path / "store"
    snaps.mkdir()
    for age, (sb, name) in ((3600, (usb, "mine")), (60, (sandbox, "theirs"))):
        res = run_cli("etcd", "snapshot", "save", str(snaps / f"{name}.db"), "--sandbox", sb.name)
        assert res.returncode == 0, res.stderr
        res = run_cli("backup", "create", name, "--to", str(store), "--include-namespaces",
                      "default", "--allow-plaintext-secrets", kubeconfig=sb.kubeconfig)  # fmt: skip
        assert res.returncode == 0, res.stderr
        stamp = time.time() - age
        for path in (snaps / f"{name}.db", store / f"{name}.tar.zst"):
            os.utime(path, (stamp, stamp))
    res = cli(usb, "upgrade", "plan", "--to", f"v{NEW}", "--ignore-daemonsets", "--snapshot-dir",
              str(snaps), "--backup-store", str(store), "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    checks = {c["name"]: c["detail"] for c in json.loads(res.stdout)["checks"]}
    assert f"({snaps / 'mine.db'})" in checks["etcd-snapshot"], checks["etcd-snapshot"]
    assert "last etcd snapshot: 1.0 h old" in checks["etcd-snapshot"], checks["etcd-snapshot"]
    assert (
        f"{store / 'mine.tar.zst'}; newer ones passed over: 1 of other clusters"
        in (checks["backup"])
    ), checks["backup"]
    # the other cluster sees its own
    res = cli(sandbox, "upgrade", "plan", "--to", "v1.37.2", "--ignore-daemonsets",
              "--snapshot-dir", str(snaps), "--backup-store", str(store), "-o", "json")  # fmt: skip
    checks = {c["name"]: c["detail"] for c in json.loads(res.stdout)["checks"]}
    assert f"({snaps / 'theirs.db'})" in checks["etcd-snapshot"], checks["etcd-snapshot"]
    assert f"({store / 'theirs.tar.zst'})" in checks["backup"], checks["backup"]


# -- fleets: this module's previous-minor cluster beside the session's (no sandbox of their own)


def fleet_kubeconfig(tmp_path: Path, *sandboxes: Sandbox) -> str:
    """The sandboxes' own kubeconfigs, a context whose apiserver is not there and one whose
    credentials the first sandbox's apiserver rejects, merged as $KUBECONFIG merges them."""
    import yaml

    dead = tmp_path / "dead.yaml"
    dead.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: gone\n"
        "clusters: [{name: gone, cluster: {server: 'https://127.0.0.1:9'}}]\n"
        "users: [{name: gone, user: {token: x}}]\n"
        "contexts: [{name: gone, context: {cluster: gone, user: gone}}]\n"
    )
    doc = yaml.safe_load(sandboxes[0].kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    bad = tmp_path / "badcreds.yaml"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "badcreds",
        "clusters": [{"name": "badcreds", "cluster": cluster}],
        "users": [{"name": "badcreds", "user": {"token": "not-a-token"}}],
        "contexts": [{"name": "badcreds", "context": {"cluster": "badcreds", "user": "badcreds"}}],
    }))  # fmt: skip
    bad.chmod(0o600)
    return os.pathsep.join([*(str(sb.kubeconfig) for sb in sandboxes), str(dead), str(bad)])


async def test_a_fleet_is_reported_and_run_per_cluster_with_the_unreachable_one_a_row(
    usb: Sandbox, ukube: Kube, sandbox: Sandbox, tmp_path: Path
) -> None:
    kubeconfig = fleet_kubeconfig(tmp_path, usb, sandbox)
    nodes = await ukube.list_objects("/api/v1/nodes")
    mine, theirs = f"kubecare-{usb.name}", f"kubecare-{sandbox.name}"
    snaps, store = tmp_path / "snapshots", tmp_path / "store"
    snaps.mkdir()
    res = run_cli("etcd", "snapshot", "save", str(snaps / "u.db"), "--sandbox", usb.name)
    assert res.returncode == 0, res.stderr
    # a command that changes clusters, on more than one, without a terminal: nothing runs
    worker = next(
        n["metadata"]["name"]
        for n in nodes
        if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
    )
    res = run_cli("fleet", "run", "--kubeconfig", kubeconfig, "/^kubecare-/", "--", "cordon",
                  worker)  # fmt: skip
    assert res.returncode == 2 and "add --yes" in res.stderr, res.stderr
    assert not await cordoned(ukube, worker)
    # one backup per cluster, {context} in its name; the dead cluster fails alone
    res = run_cli("fleet", "run", "--kubeconfig", kubeconfig, "--", "backup", "create",
                  "fleet-{context}", "--to", str(store), "--include-namespaces", "default",
                  "--allow-plaintext-secrets", timeout=300)  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert sorted(p.name for p in store.glob("*.tar.zst")) == sorted(
        [f"fleet-{mine}.tar.zst", f"fleet-{theirs}.tar.zst"]
    )
    summary = {ln.split()[0]: ln.split()[1] for ln in res.stderr.splitlines() if ln[:1].strip()
               and len(ln.split()) > 1 and ln.split()[1].isdigit()}  # fmt: skip
    assert summary == {mine: "0", theirs: "0", "gone": "1", "badcreds": "1"}, res.stderr
    assert all(ln.startswith((f"{mine} ", f"{theirs} ", "gone ", "badcreds ")) for ln in
               res.stdout.splitlines()), res.stdout  # fmt: skip

    t0 = time.monotonic()
    res = run_cli("fleet", "status", "--kubeconfig", kubeconfig, "--snapshot-dir", str(snaps),
                  "--backup-store", str(store), "-o", "json", timeout=120)  # fmt: skip
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stderr  # one cluster could not be read; all are reported
    rows = {r["context"]: r for r in json.loads(res.stdout)}
    assert list(rows) == [mine, theirs, "gone", "badcreds"]
    assert "unreachable" in rows["gone"]["error"] and rows["gone"]["version"] is None
    assert "the credentials were rejected" in rows["badcreds"]["error"], rows["badcreds"]
    assert rows["badcreds"]["version"] is None
    old, new = rows[mine], rows[theirs]
    assert old["error"] is None and new["error"] is None, (old, new)
    assert old["version"] == f"v{OLD}" and new["version"].startswith("v1.37."), (old, new)
    assert old["nodes"] == {"ready": len(nodes), "total": len(nodes)}
    assert old["upgrade"]["to"].startswith("v1.37.") and isinstance(old["upgrade"]["go"], bool)
    assert old["upgrade"]["pendingNodes"] == len(nodes)
    assert old["snapshotAgeSeconds"] is not None and new["snapshotAgeSeconds"] is None
    assert old["backupAgeSeconds"] is not None and new["backupAgeSeconds"] is not None
    assert old["certificate"]["notAfter"] and old["lock"] == [] and old["journal"] is None
    print(f"fleet status of 3 clusters: {took:.1f}s")


async def test_a_control_plane_without_its_label_is_planned_as_one(
    usb: Sandbox, ukube: Kube
) -> None:
    """Someone removed control-plane-2's role label: its kube-apiserver and etcd mirror pods
    still say what it is, so it is upgraded as a control plane, alone, before any worker."""
    label = "node-role.kubernetes.io/control-plane"
    patch = {"metadata": {"labels": {label: None}}}
    path = "/api/v1/nodes/control-plane-2"
    await ukube.request_json("PATCH", path, body=patch, content_type="application/merge-patch+json")
    try:
        res = cli(usb, "upgrade", "plan", "--to", f"v{NEW}", "--ignore-daemonsets", "-o", "json")
        assert res.returncode == 0, res.stderr
        plan = json.loads(res.stdout)
        step = next(s for s in plan["steps"] if s["node"] == "control-plane-2")
        assert step["role"] == "control-plane", step
        cps = [s for s in plan["steps"] if s["role"] != "worker"]
        assert len(cps) == 3 and len({s["batch"] for s in cps}) == 3  # one at a time
        assert max(s["batch"] for s in cps) < min(
            s["batch"] for s in plan["steps"] if s["role"] == "worker"
        )
        assert any("control-plane-2: no node-role" in c["detail"] for c in plan["checks"])
    finally:
        patch = {"metadata": {"labels": {label: ""}}}
        await ukube.request_json(
            "PATCH", path, body=patch, content_type="application/merge-patch+json"
        )


# -- 3. deprecated APIs ----------------------------------------------------------------------------
def gadget_crd() -> dict[str, Any]:
    schema = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.upgrade.example.com"},
        "spec": {
            "group": "upgrade.example.com",
            "scope": "Namespaced",
            "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
            "versions": [
                {"name": "v1alpha1", "served": True, "storage": False, "deprecated": True,
                 "schema": schema},
                {"name": "v1", "served": True, "storage": True, "schema": schema},
            ],
        },
    }  # fmt: skip


async def test_a_deprecated_crd_version_in_use_is_found(usb: Sandbox, ukube: Kube) -> None:
    await ukube.request_json(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=gadget_crd()
    )

    async def established() -> bool:
        crd = await ukube.get_json(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/gadgets.upgrade.example.com"
        )
        conds = (crd.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    await wait_for(established, timeout=60)
    ns = await new_namespace(ukube, "upgrade-gadgets")
    # A client still on the deprecated version: the apiserver answers with a warning header
    # and sets its deprecated-API gauge.
    path = f"/apis/upgrade.example.com/v1alpha1/namespaces/{ns}/gadgets"
    body = {
        "apiVersion": "upgrade.example.com/v1alpha1",
        "kind": "Gadget",
        "metadata": {"name": "g1"},
    }

    async def created() -> bool:
        try:
            await ukube.request_json("POST", path, body=body)
        except Exception as e:  # the CRD's REST endpoint may need a moment on every instance
            return "AlreadyExists" in str(e) or "already exists" in str(e)
        return True

    await wait_for(created, timeout=30)
    _, warnings = await ukube.get_with_warnings(path)
    text = "upgrade.example.com/v1alpha1 Gadget is deprecated; use upgrade.example.com/v1 Gadget"
    assert warnings == [text]

    res = cli(usb, "upgrade", "plan", "--to", f"v{NEW}", "--ignore-daemonsets", "-o", "json")
    plan = json.loads(res.stdout)
    found = [
        c for c in plan["checks"] if c["name"] == "deprecated-api" and "gadgets" in c["detail"]
    ]
    # each instance's metric, asked at the address its mirror pod names
    assert found and all("metric on apiserver 192.0.2.1" in c["detail"] for c in found)
    # kubecare words the warning as the apiserver does (without asking the deprecated version,
    # which would count itself as a client): the same text the server sent above
    assert all(text in c["detail"] and not c["blocking"] for c in found)
    assert plan["go"]  # deprecated, not removed by 1.37: a warning, not a no-go


# -- 4. the full rolling upgrade ------------------------------------------------------------------
def fleet_file(tmp_path: Path, *clusters: tuple[str, Sandbox, list[str]]) -> Path:
    """A fleet file: each sandbox a cluster (its own kubeconfig, its sandbox executor and its
    own flags), one wave each, in order."""
    import yaml

    doc = {
        "clusters": [
            {"name": name, "context": f"kubecare-{sb.name}", "kubeconfig": str(sb.kubeconfig),
             "upgrade": ["--executor", "sandbox", "--sandbox", sb.name, *flags]}
            for name, sb, flags in clusters
        ],
        "waves": [{"name": name, "clusters": [name]} for name, _, _ in clusters],
    }  # fmt: skip
    f = tmp_path / "fleet.yaml"
    f.write_text(yaml.safe_dump(doc))
    return f


async def test_rolling_ha_upgrade_through_real_kubeadm_as_the_second_wave_of_a_fleet(
    usb: Sandbox, ukube: Kube, tmp_path: Path
) -> None:
    """A fleet of two: a canary with a real node (a real kubelet and containerd), then this HA
    cluster. The canary's real node is upgraded for real (the real `kubeadm upgrade node`, the
    kubelet package swapped, `systemctl restart kubelet`: the node then reports what its new
    binary says); its gate fails after the upgrade, so the second wave does not start; the
    rerun only gates the canary again, then upgrades this cluster (the rest of the test checks
    that upgrade)."""
    import pyrage

    from .test_real_nodes import new_namespace as real_namespace
    from .test_real_nodes import ready_on, web

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    snaps, store = tmp_path / "snapshots", tmp_path / "backups"
    opts = SandboxOptions(version=OLD, workers=1, real_nodes=1)  # a kwok worker for CoreDNS
    async with (
        own_sandbox("canary", opts) as canary,
        Kube(ClientOptions(kubeconfig=str(canary.kubeconfig))) as ckube,
    ):
        assert await kubelet(ckube, "real-1") == f"v{OLD}"
        real_ns = await real_namespace(ckube)
        await apply(ckube, real_ns, web("web", 1, "real-1"))
        await wait_for(lambda: ready_on(ckube, real_ns, "real-1"), timeout=60)
        fleet = fleet_file(
            tmp_path,
            ("canary", canary, ["--no-snapshot", "--no-backup"]),
            ("upgrade", usb, ["--encrypt-to", recipient, "--snapshot-dir", str(snaps),
                              "--backup-store", str(store)]),
        )  # fmt: skip
        stop = tmp_path / "stop-canary"
        stop.touch()
        # a smoke test after the upgrade: plain kubectl (the gate's KUBECONFIG makes the
        # cluster's context current); the canary fails it once no kubelet is at the old version
        gate = (
            f"v=$({KUBECTL} get nodes -o jsonpath='{{.items[*].status.nodeInfo.kubeletVersion}}')"
            f' || exit 1; case "$v" in *v{OLD}*) exit 0;; esac; '
            f'if [ -e {tmp_path}/stop-"$KUBECARE_CLUSTER" ]; then echo "canary told to fail"; '
            "exit 3; fi"
        )
        base = ["fleet", "upgrade", "apply", "--fleet", str(fleet), "--to", f"v{NEW}", "--gate",
                gate]  # fmt: skip
        fleet_argv = cli_argv(*base, "--yes", "--", "--ignore-daemonsets")
        # without --yes and without a terminal: nothing runs
        res = run_cli(*base, "--", "--ignore-daemonsets")
        assert res.returncode == 2 and "add --yes" in res.stderr, res.stderr
        first = await asyncio.to_thread(
            subprocess.run, fleet_argv, capture_output=True, text=True, timeout=600, check=False
        )
        assert first.returncode == 1, first.stderr[-3000:]
        said = first.stdout + first.stderr
        assert "wave canary failed: canary: the gate command exited 3: canary told to fail" in (
            said
        ), said[-3000:]
        assert "wave upgrade not run: wave canary failed" in said
        assert set(by(versions(canary), "kubelet").values()) == {f"v{NEW}"}
        # the real node: uncordoned, and its new kubelet binary is what runs
        assert not (await ckube.get_json("/api/v1/nodes/real-1"))["spec"].get("unschedulable")
        ps = run_cli("sandbox", "exec", "--name", canary.name, "real-1", "--", "ps", "-ww", "-o",
                     "args")  # fmt: skip
        running = [x for x in ps.stdout.splitlines() if "kubelet --" in x]
        assert len(running) == 1, ps.stdout + ps.stderr
        assert Path(running[0].split()[0]).resolve().parent.name == f"kubelet-v{NEW}"
        # its workload was drained away and comes back: the node runs real pods again
        await wait_for(lambda: ready_on(ckube, real_ns), timeout=60)
        assert set(by(versions(usb), "kubelet").values()) == {f"v{OLD}"}  # the second wave waited
        res = run_cli("fleet", "upgrade", "status", "--fleet", str(fleet), "-o", "json")
        assert res.returncode == 0, res.stderr
        canary_row, usb_row = json.loads(res.stdout)
        assert canary_row["journal"]["state"] == "done" and usb_row["journal"] is None
        assert canary_row["fleet"]["gate"].startswith("failed: the gate command exited 3")
        # the gate judges against the canary as it was before its upgrade, on the rerun too
        baseline = canary_row["fleet"]["baseline"]
        stop.unlink()

        ns = await new_namespace(ukube, "upgrade-web")
        await apply(ukube, ns, deployment("web", 4), pdb("web", {"app": "web"}, min_available=3))
        await wait_running(ukube, ns, 4)
        lowest: list[int] = []
        watching = asyncio.Event()

        async def watch_ready() -> None:
            # The PDB allows one disruption at a time: never fewer than 3 ready web pods.
            while not watching.is_set():
                try:
                    ps = await pods(ukube, ns, "app=web")
                except KubecareError:  # the apiserver it reached is restarting: ask again
                    await asyncio.sleep(0.1)
                    continue
                lowest.append(
                    sum(1 for p in ps if is_ready(p) and not p["metadata"].get("deletionTimestamp"))
                )
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_ready())
        try:
            res = await asyncio.to_thread(
                subprocess.run, fleet_argv, capture_output=True, text=True, timeout=600,
                check=False,
            )  # fmt: skip
        finally:
            watching.set()
            await watcher
        assert res.returncode == 0, res.stderr[-3000:]
        assert f"canary  : already upgraded to v{NEW} (its journal is done)" in res.stderr
        assert f"every wave passed: the fleet is at v{NEW}" in res.stdout
        after = run_cli("fleet", "upgrade", "status", "--fleet", str(fleet), "-o", "json")
        canary_row, usb_row = json.loads(after.stdout)
        assert canary_row["fleet"]["gate"] == "passed" and usb_row["fleet"]["gate"] == "passed"
        assert canary_row["fleet"]["baseline"] == baseline  # kept from before its upgrade
    status = cli(usb, "upgrade", "status", "-o", "json")
    assert status.returncode == 0, status.stderr
    done = json.loads(status.stdout)
    assert done["state"] == "done" and done["target"] == f"v{NEW}"
    assert [n["name"] for n in done["nodes"]] == [
        "control-plane-1", "control-plane-2", "control-plane-3", "worker-1", "worker-2", "worker-3",
    ]  # fmt: skip
    assert {n["state"] for n in done["nodes"]} == {"done"}

    # The cluster is at the target: each apiserver instance, the static pods, etcd, kubelets.
    data = versions(usb)
    assert set(by(data, "kube-apiserver").values()) == {f"v{NEW}"}
    assert set(by(data, "kube-controller-manager").values()) == {f"v{NEW}"}
    assert set(by(data, "kube-scheduler").values()) == {f"v{NEW}"}
    images = [
        c for c in data["components"] if c["name"] == "etcd" and c["source"] == "mirror pod image"
    ]
    assert {c["version"] for c in images} == {"3.7.0-0"}
    etcd = [c for c in data["components"] if c["name"] == "etcd"]
    served = [c["version"] for c in etcd if c["source"] == "Status RPC"]
    assert etcd_version_for(NEW) != etcd_version_for(OLD)  # 3.6 -> 3.7: another binary
    assert served == [f"v{etcd_version_for(NEW)}"] * 3
    assert set(by(data, "kubelet").values()) == {f"v{NEW}"}
    assert cluster_violations(data) == []
    for n in by(data, "kubelet"):
        assert not await cordoned(ukube, n)

    # Workloads under the PDB never dropped below what it allows; they did move.
    assert lowest and min(lowest) >= 3, lowest
    assert sum(n["seconds"].get("drain", 0) for n in done["nodes"]) > 0
    await wait_running(ukube, ns, 4)

    # The first steps: an etcd snapshot and a resource backup, named in the journal, 0600.
    snapshot, backup = Path(done["snapshot"]), Path(done["backup"])
    assert snapshot.parent == snaps and backup.parent == store
    for f in (snapshot, backup):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600 and f.stat().st_size > 0
    assert "Upgrade v1.36.3 -> v1.37.2" in res.stderr  # the plan shown before it started
    # The real kubeadm did it, in each node's view: its own words, per node.
    assert f"control-plane-1 | $ kubeadm upgrade apply v{NEW} --yes" in res.stderr
    assert (
        f'control-plane-1 | [upgrade] SUCCESS! A control plane node of your cluster was upgraded to "v{NEW}".'
        in res.stderr
    )
    for n in ("control-plane-2", "control-plane-3", "worker-1"):
        assert f"{n} | $ kubeadm upgrade node" in res.stderr
        assert (
            f"{n} | [upgrade/kubelet-config] The kubelet configuration for this node was successfully upgraded!"
            in res.stderr
        )
    # kubeadm's traces: the old manifests kept, kubeadm-config at the new version, the addons
    # kubeadm v1.37 installs, each node's kubelet config rewritten by it.
    for n in ("control-plane-1", "control-plane-2", "control-plane-3"):
        tmp = usb.node_root(n) / "etc" / "kubernetes" / "tmp"
        assert any(p.name.startswith("kubeadm-backup-manifests-") for p in tmp.iterdir())
    cm = await ukube.get_json("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
    assert f"kubernetesVersion: v{NEW}" in cm["data"]["ClusterConfiguration"]
    proxy = await ukube.get_json("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy")
    assert proxy["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":v{NEW}")
    worker_tmp = usb.dir / "nodes" / "worker-1" / "etc" / "kubernetes" / "tmp"
    assert any(p.name.startswith("kubeadm-kubelet-config-") for p in worker_tmp.iterdir())

    # Again: nothing to do, nothing touched.
    again = cli(usb, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox",
                usb.name, "--yes", "--no-snapshot", "--no-backup", "-o", "json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["nodes"] == []


# -- after the upgrade: nodes added at the old version ---------------------------------------
async def old_nodes(sb: Sandbox, kube: Kube, *names: str) -> None:
    for n in names:
        await sb.add_node(n)
    # kwok's node-initialize stage can patch a new node once more after it is Ready (queued from
    # an earlier event, its template read the registered version): set the old version until it
    # has stayed for 1.5 s, so the plan sees it.
    deadline = time.monotonic() + 30
    for n in names:
        stable = 0
        while stable < 3:
            if await kubelet(kube, n) == f"v{OLD}":
                stable += 1
            else:
                assert time.monotonic() < deadline, f"{n} never kept kubelet v{OLD}"
                await set_kubelet_version(kube, n, OLD)
                stable = 0
            await asyncio.sleep(0.5)


def step_script(tmp_path: Path, kubeconfig: Path, *, pause: float = 0) -> Path:
    """A node's "upgrade": log the node, fail if told to, else report the new kubelet version
    (what the package manager and a kubelet restart do on a real node)."""
    script = tmp_path / "step.sh"
    script.write_text(
        "set -e\n"
        f'echo "start $1" >> {tmp_path}/log\n'
        f'if [ -e {tmp_path}/fail-$1 ]; then echo "upgrade of $1 broke" >&2; exit 3; fi\n'
        f"sleep {pause}\n"
        f"{KUBECTL} --kubeconfig {kubeconfig} patch node $1 --subresource=status --type=merge "
        '-p "{\\"status\\":{\\"nodeInfo\\":{\\"kubeletVersion\\":\\"v$2\\"}}}" >/dev/null\n'
        f'echo "done $1" >> {tmp_path}/log\n'
    )
    return script


def log_of(tmp_path: Path) -> list[str]:
    f = tmp_path / "log"
    return f.read_text().splitlines() if f.exists() else []


async def test_a_failing_step_stops_the_run_and_the_same_command_resumes(
    usb: Sandbox, ukube: Kube, tmp_path: Path
) -> None:
    nodes = ("worker-f1", "worker-f2", "worker-f3")
    await old_nodes(usb, ukube, *nodes)
    await set_unschedulable(ukube, "worker-f3", True)  # cordoned by someone before the upgrade
    script = step_script(tmp_path, usb.kubeconfig)
    (tmp_path / "fail-worker-f2").touch()
    args = ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "command", "--command",
            f"sh {script} {{node}} {{version}}", "--yes", "--no-snapshot", "--no-backup",
            "--ignore-daemonsets", "-o", "json")  # fmt: skip
    try:
        res = cli(usb, *args)
        assert res.returncode == 1
        line = one_error_line(res)
        assert "node worker-f2 failed while running the executor's upgrade steps" in line
        assert "upgrade of worker-f2 broke" in line and "it stays cordoned" in line
        # The failed node stays cordoned, the one done is back, the untouched one untouched.
        assert await cordoned(ukube, "worker-f2") and await kubelet(ukube, "worker-f2") == f"v{OLD}"
        assert (
            not await cordoned(ukube, "worker-f1")
            and await kubelet(ukube, "worker-f1") == f"v{NEW}"
        )
        assert await kubelet(ukube, "worker-f3") == f"v{OLD}"  # untouched
        j = await journal(ukube)
        assert j["state"] == "failed"
        assert {n["name"]: n["state"] for n in j["nodes"]} == {
            "worker-f1": "done", "worker-f2": "failed", "worker-f3": "pending",
        }  # fmt: skip

        (tmp_path / "fail-worker-f2").unlink()
        again = cli(usb, *args)
        assert again.returncode == 0, again.stderr
        assert "resuming the upgrade to v1.37.2" in again.stderr
        starts = [ln.split()[1] for ln in log_of(tmp_path) if ln.startswith("start")]
        assert starts == ["worker-f1", "worker-f2", "worker-f2", "worker-f3"]  # f1 not redone
        for n in nodes:
            assert await kubelet(ukube, n) == f"v{NEW}"
        assert not await cordoned(ukube, "worker-f1") and not await cordoned(ukube, "worker-f2")
        assert await cordoned(ukube, "worker-f3")  # as it was before the upgrade
    finally:
        for n in nodes:
            await usb.remove_node(n)


async def test_kubeadm_failing_half_way_leaves_the_node_cordoned_with_kubeadms_words(
    usb: Sandbox, ukube: Kube
) -> None:
    """A worker whose kubelet config is gone: `kubeadm upgrade node` passes its preflight, then
    fails in its kubelet-config phase. The run stops on that node, cordoned, the journal and the
    error carrying kubeadm's own line; repaired, the same command finishes it."""
    await old_nodes(usb, ukube, "worker-b1")
    try:
        made = on_node(usb, "worker-b1", "true")  # its tree, as a joined worker has it
        assert made.returncode == 0, made.stderr
        config = usb.dir / "nodes" / "worker-b1" / "var" / "lib" / "kubelet" / "config.yaml"
        saved = config.read_bytes()
        config.unlink()
        args = ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox",
                usb.name, "--yes", "--no-snapshot", "--no-backup", "--ignore-daemonsets")  # fmt: skip
        res = cli(usb, *args)
        assert res.returncode == 1, res.stderr
        line = one_error_line(res)
        assert "kubeadm upgrade node on worker-b1 failed (exit 1)" in line
        assert "error backing up the kubelet config file" in line and "it stays cordoned" in line
        assert await cordoned(ukube, "worker-b1") and await kubelet(ukube, "worker-b1") == f"v{OLD}"
        j = await journal(ukube)
        node = next(n for n in j["nodes"] if n["name"] == "worker-b1")
        assert node["state"] == "failed" and "error backing up the kubelet config" in node["error"]

        config.write_bytes(saved)  # the operator puts it back
        again = cli(usb, *args)
        assert again.returncode == 0, again.stderr
        assert not await cordoned(ukube, "worker-b1")
        assert await kubelet(ukube, "worker-b1") == f"v{NEW}"
    finally:
        await usb.remove_node("worker-b1")


async def test_kill_9_mid_run_then_resume_without_redoing_finished_nodes(
    usb: Sandbox, ukube: Kube, tmp_path: Path
) -> None:
    nodes = ("worker-k1", "worker-k2", "worker-k3")
    await old_nodes(usb, ukube, *nodes)
    script = step_script(tmp_path, usb.kubeconfig, pause=1.5)
    args = ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "command", "--command",
            f"sh {script} {{node}} {{version}}", "--yes", "--no-snapshot", "--no-backup",
            "--ignore-daemonsets")  # fmt: skip
    proc = subprocess.Popen(
        cli_argv(*args, kubeconfig=usb.kubeconfig),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        async def mid_run() -> bool:
            lines = log_of(tmp_path)
            return "done worker-k1" in lines and "start worker-k2" in lines

        await wait_for(mid_run, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the step it was running
        proc.wait()
    try:
        j = await journal(ukube)
        states = {n["name"]: n["state"] for n in j["nodes"]}
        assert states["worker-k1"] == "done" and states["worker-k2"] == "upgrading"
        assert await cordoned(ukube, "worker-k2")  # drained when it was killed

        again = cli(usb, *args)
        assert again.returncode == 0, again.stderr
        starts = [ln.split()[1] for ln in log_of(tmp_path) if ln.startswith("start")]
        assert starts.count("worker-k1") == 1  # finished before the kill: not redone
        assert starts.count("worker-k2") == 2 and starts.count("worker-k3") == 1
        assert (await journal(ukube))["state"] == "done"
        for n in nodes:
            assert not await cordoned(ukube, n) and await kubelet(ukube, n) == f"v{NEW}"
    finally:
        for n in nodes:
            await usb.remove_node(n)


# -- executors: ssh (Debian's OpenSSH server) and job ------------------------------------------
@pytest.fixture
def openssh(tmp_path: Path) -> Iterator[tuple[int, Path, Path, Path]]:
    """Debian's sshd on 127.0.0.1 with a config of the test's own (host key, authorized key,
    pid file in tmp_path); yields (port, client key, wrong key, known_hosts)."""
    import socket

    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    assert Path(sshd).is_file(), "openssh-server is not installed (make test installs it)"
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host", "client", "wrong"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    shutil.copy(d / "client.pub", d / "authorized_keys")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "PermitRootLogin prohibit-password\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "sshd.log", "w"),  # noqa: SIM115 (closed with the process)
    )
    host_pub = (d / "host.pub").read_text().split()
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, (d / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not listen"
            time.sleep(0.05)
        yield port, d / "client", d / "wrong", known
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_ssh_executor_runs_the_steps_over_openssh(
    usb: Sandbox, ukube: Kube, tmp_path: Path, openssh: tuple[int, Path, Path, Path]
) -> None:
    port, key, wrong, known = openssh
    await old_nodes(usb, ukube, "worker-s1")
    steps = tmp_path / "steps.yaml"
    patch = (
        f"{KUBECTL} --kubeconfig {usb.kubeconfig} patch node {{node}} --subresource=status "
        '--type=merge -p \'{{"status":{{"nodeInfo":{{"kubeletVersion":"v{version}"}}}}}}\''
    )
    steps.write_text(
        json.dumps(
            {
                "worker": [
                    f"echo upgrading {{node}} to {{version}} as $(id -un) >> {tmp_path}/ssh.log",
                    patch,
                ]
            }
        )
    )

    def run(identity: Path) -> subprocess.CompletedProcess[str]:
        return cli(usb, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "ssh",
                   "--ssh-host", f"127.0.0.1:{port}", "--ssh-key", str(identity),
                   "--known-hosts", str(known), "--steps", str(steps), "--yes",
                   "--no-snapshot", "--no-backup", "--ignore-daemonsets")  # fmt: skip

    try:
        denied = await asyncio.to_thread(run, wrong)
        assert denied.returncode == 1
        assert "authentication failed" in one_error_line(denied)
        # Found before anything changed: the node is neither cordoned nor upgraded.
        assert not await cordoned(ukube, "worker-s1")
        assert await kubelet(ukube, "worker-s1") == f"v{OLD}"

        res = await asyncio.to_thread(run, key)
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "ssh.log").read_text() == f"upgrading worker-s1 to {NEW} as root\n"
        assert "[2/2]" in res.stderr  # each step shown as it runs
        assert await kubelet(ukube, "worker-s1") == f"v{NEW}"
        assert not await cordoned(ukube, "worker-s1")
    finally:
        await usb.remove_node("worker-s1")


async def test_job_executor_runs_a_privileged_job_pinned_to_the_node(
    usb: Sandbox, ukube: Kube
) -> None:
    await old_nodes(usb, ukube, "worker-j1")
    seen: dict[str, Any] = {}

    async def play_the_node() -> None:
        # kwok runs no containers: the test does what the Job's steps would (the kubelet
        # package upgraded, the kubelet restarted), once the Job exists; kwok completes its pod.
        async def job() -> dict[str, Any] | None:
            items = await ukube.list_objects(
                "/apis/batch/v1/namespaces/kube-system/jobs",
                params={"labelSelector": "kubecare.io/upgrade-node=worker-j1"},
            )
            return items[0] if items else None

        seen["job"] = await wait_for(job, timeout=120)
        await set_kubelet_version(ukube, "worker-j1", NEW)

    player = asyncio.create_task(play_the_node())
    try:
        res = await asyncio.to_thread(
            cli, usb, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "job", "--yes",
            "--no-snapshot", "--no-backup", "--ignore-daemonsets",
        )  # fmt: skip
        await player
        assert res.returncode == 0, res.stderr
        pod = seen["job"]["spec"]["template"]["spec"]
        assert pod["nodeName"] == "worker-j1" and pod["hostPID"] is True
        assert pod["containers"][0]["securityContext"]["privileged"] is True
        assert "kubeadm upgrade node" in pod["containers"][0]["command"][-1]
        assert "completed" in res.stderr
        assert not await cordoned(ukube, "worker-j1")
    finally:
        player.cancel()
        await usb.remove_node("worker-j1")


async def test_surge_replaces_a_worker_with_a_new_node(usb: Sandbox, ukube: Kube) -> None:
    await old_nodes(usb, ukube, "worker-g1")
    res = cli(usb, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox",
              usb.name, "--strategy", "surge", "--yes", "--no-snapshot", "--no-backup",
              "--ignore-daemonsets", "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    node = json.loads(res.stdout)["nodes"][0]
    assert node["name"] == "worker-g1" and node["replaced_by"] == "worker-g1-v1-37"
    names = {n["metadata"]["name"] for n in await ukube.list_objects("/api/v1/nodes")}
    assert "worker-g1" not in names and "worker-g1-v1-37" in names
    assert await kubelet(ukube, "worker-g1-v1-37") == f"v{NEW}"
    await usb.remove_node("worker-g1-v1-37")


async def test_outside_the_window_nothing_starts_and_the_run_pauses(
    usb: Sandbox, ukube: Kube
) -> None:
    import datetime

    await old_nodes(usb, ukube, "worker-w1")
    # a one-hour window that closed an hour ago, every day
    start = (datetime.datetime.now() - datetime.timedelta(hours=2)).strftime("%H:00")
    end = (datetime.datetime.now() - datetime.timedelta(hours=1)).strftime("%H:00")
    args = ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox",
            usb.name, "--yes", "--no-snapshot", "--no-backup", "--ignore-daemonsets")  # fmt: skip
    try:
        res = cli(usb, *args, "--window", f"{start}-{end}")
        assert res.returncode == 3, res.stderr
        assert "outside the maintenance window" in one_error_line(res)
        assert (await journal(ukube))["state"] == "paused"
        assert not await cordoned(ukube, "worker-w1")
        assert await kubelet(ukube, "worker-w1") == f"v{OLD}"
        resumed = cli(usb, *args)  # no window: the paused run goes on
        assert resumed.returncode == 0, resumed.stderr
        assert await kubelet(ukube, "worker-w1") == f"v{NEW}"
    finally:
        await usb.remove_node("worker-w1")


async def test_two_writers_of_one_journal_conflict_instead_of_overwriting(ukube: Kube) -> None:
    from kubecare.errors import OperationFailed
    from kubecare.upgrade.journal import ConfigMapStore, Journal

    a = ConfigMapStore(ukube, name="kubecare-upgrade-conflict")
    b = ConfigMapStore(ukube, name="kubecare-upgrade-conflict")
    try:
        await a.save(Journal("v1.37.2", "t", "command", "rolling", 1, []))
        ja, jb = await a.load(), await b.load()
        assert ja is not None and jb is not None
        jb.message = "b was here"
        await b.save(jb)
        ja.message = "a was here"
        with pytest.raises(OperationFailed, match="changed by someone else"):
            await a.save(ja)  # a 409 from the apiserver: a's stale copy is not written
        again = await a.load()
        assert again is not None and again.message == "b was here"
    finally:
        await a.delete()


async def test_a_failed_health_gate_is_checked_again_when_the_run_resumes(
    usb: Sandbox, ukube: Kube
) -> None:
    await old_nodes(usb, ukube, "worker-h1")
    ns = await new_namespace(ukube, "upgrade-gate")
    spec = {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        "terminationGracePeriodSeconds": 0,
        "nodeSelector": {"kubernetes.io/hostname": "worker-h1"},
    }
    # Its pod takes 6 s to become Ready (kwok's pod-ready delay): so does its replacement once
    # the node is drained and back, longer than the first run's gate waits.
    pinned = deployment("pinned", 1, spec, {"pod-ready.stage.kwok.x-k8s.io/delay": "6s"})
    await apply(ukube, ns, pinned)
    await wait_running(ukube, ns, 1, timeout=60)
    args = ("upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox", "--sandbox",
            usb.name, "--yes", "--no-snapshot", "--no-backup", "--ignore-daemonsets")  # fmt: skip
    try:
        res = cli(usb, *args, "--gate-timeout", "1s")
        assert res.returncode == 1
        line = one_error_line(res)
        assert "health gate after worker-h1 failed" in line
        assert f"{ns}/Deployment/pinned" in line
        j = await journal(ukube)
        assert j["state"] == "failed" and j["gate_pending"] >= 0
        assert {n["name"]: n["state"] for n in j["nodes"]} == {"worker-h1": "done"}

        # Resumed: no node is left, but the gate that failed is checked again, against the
        # baseline of the first run, before the run may call itself done.
        again = cli(usb, *args, "--gate-timeout", "90s")
        assert again.returncode == 0, again.stderr
        j = await journal(ukube)
        assert j["state"] == "done" and j["gate_pending"] == -1
        await wait_running(ukube, ns, 1, timeout=5)  # the gate passed on a Ready pod
    finally:
        await ukube.http.delete(f"/api/v1/namespaces/{ns}")
        await usb.remove_node("worker-h1")


async def test_the_health_gate_lists_once_and_then_watches(usb: Sandbox, ukube: Kube) -> None:
    """The gate waits for a pod that takes 6 s to become Ready after its node's upgrade: read
    from one list per type and watches, not a list of every pod, ReplicaSet and workload each
    second; a watch cut half way is re-opened and the gate still passes on the real state."""
    from ..faultproxy import FaultProxy, Rule

    await old_nodes(usb, ukube, "worker-w1")
    ns = await new_namespace(ukube, "upgrade-watch")
    spec = {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        "terminationGracePeriodSeconds": 0,
        "nodeSelector": {"kubernetes.io/hostname": "worker-w1"},
    }
    await apply(
        ukube, ns, deployment("slow", 1, spec, {"pod-ready.stage.kwok.x-k8s.io/delay": "6s"})
    )
    await wait_running(ukube, ns, 1, timeout=60)
    whole = re.compile(r"^/api/v1/pods(\?|$)")
    try:
        async with FaultProxy(usb) as proxy:
            cut = proxy.add(Rule("GET", r"^/api/v1/pods\?.*watch=1", cut_after=200, times=1,
                                 when=lambda _m, t: "Selector" not in t))  # fmt: skip
            res = await asyncio.to_thread(
                run_cli, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox",
                "--sandbox", usb.name, "--yes", "--no-snapshot", "--no-backup",
                "--ignore-daemonsets", "-o", "json", kubeconfig=proxy.kubeconfig, timeout=300,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            every = [r for r in proxy.log if whole.match(r.target) and "Selector" not in r.target]
            lists = [r for r in every if "watch=1" not in r.target]
            watches = [r for r in every if "watch=1" in r.target]
        j = await journal(ukube)
        node = next(n for n in j["nodes"] if n["name"] == "worker-w1")
        assert node["seconds"]["gate"] >= 3, node  # it really waited for the pod
        # Lists of every pod: the plan's snapshot, the baseline (once per run), the gate's
        # informer and the list that confirms the pass, whatever the gate's length; the gate
        # listing each second adds one a second.
        assert len(lists) <= 4, [r.target for r in lists]
        assert cut.hits == 1 and len(watches) >= 2, [r.target for r in watches]
        await wait_running(ukube, ns, 1, timeout=5)  # the gate passed on a Ready pod
    finally:
        await ukube.http.delete(f"/api/v1/namespaces/{ns}")
        await usb.remove_node("worker-w1")


async def test_apiserver_errors_while_journaling_and_waiting_are_retried(
    usb: Sandbox, ukube: Kube
) -> None:
    from ..faultproxy import FaultProxy, Rule

    await old_nodes(usb, ukube, "worker-p1")
    try:
        async with FaultProxy(usb) as proxy:
            # The journal's writes and the wait for the node meet a restarting apiserver.
            journal_put = proxy.add(
                Rule("PUT", r"/configmaps/kubecare-upgrade$", status=500, times=3)
            )
            # ... and one write is committed but its answer lost (the apiserver died between
            # commit and reply): the retry meets 409, which is this run's own write, not
            # another run's.
            lost = proxy.add(
                Rule("PUT", r"/configmaps/kubecare-upgrade$", drop_answer=True, times=1)
            )
            node_get = proxy.add(Rule("GET", r"/api/v1/nodes/worker-p1$", status=503, times=2))
            res = await asyncio.to_thread(
                run_cli, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "sandbox",
                "--sandbox", usb.name, "--yes", "--no-snapshot", "--no-backup",
                "--ignore-daemonsets", kubeconfig=proxy.kubeconfig, timeout=300,
            )  # fmt: skip
            assert res.returncode == 0, res.stderr
            assert journal_put.hits == 3 and node_get.hits == 2  # every fault was met
            assert lost.hits == 1 and "journal taken" not in res.stderr.lower()
        assert (await journal(ukube))["state"] == "done"
        assert await kubelet(ukube, "worker-p1") == f"v{NEW}"
        assert not await cordoned(ukube, "worker-p1")
    finally:
        await usb.remove_node("worker-p1")


async def test_the_job_executor_waits_out_an_apiserver_outage_and_adopts_a_running_job(
    usb: Sandbox, ukube: Kube
) -> None:
    """An earlier run left the node's Job running (the run was killed; kubeadm in the Job goes
    on): the rerun waits for that Job instead of deleting it (which would kill kubeadm mid
    static-pod swap), and its polls ride out an apiserver that does not answer."""
    from kubecare.upgrade.executors import JobExecutor
    from kubecare.upgrade.plan import NodeStep
    from kubecare.versions.semver import Version

    from ..faultproxy import FaultProxy, Rule

    node = "worker-j2"
    await old_nodes(usb, ukube, node)
    executor = JobExecutor(ukube)
    manifest = executor.manifest(NodeStep(node, "worker", 0, ()), Version.parse(f"v{NEW}"))
    manifest["spec"]["suspend"] = True  # running as far as anyone can tell, not finishing yet
    jobs = "/apis/batch/v1/namespaces/kube-system/jobs"
    name = manifest["metadata"]["name"]
    earlier = await ukube.request_json("POST", jobs, body=manifest)
    try:
        async with FaultProxy(usb) as proxy:
            outage = proxy.add(Rule("GET", rf"/jobs/{name}$", status=503, times=4))
            run = asyncio.create_task(asyncio.to_thread(
                run_cli, "upgrade", "apply", "--to", f"v{NEW}", "--executor", "job", "--yes",
                "--no-snapshot", "--no-backup", "--ignore-daemonsets",
                kubeconfig=proxy.kubeconfig, timeout=300,
            ))  # fmt: skip

            async def waiting() -> bool:  # the rerun polls the Job (through the outage)
                return run.done() or proxy.count("GET", rf"/jobs/{name}$") > outage.hits >= 4

            await wait_for(waiting, timeout=120)
            assert not run.done(), run.result().stderr
            # The Job's kubeadm finishes: kwok completes the pod, the kubelet reports the target.
            await ukube.request_json(
                "PATCH", f"{jobs}/{name}", body={"spec": {"suspend": False}},
                content_type="application/merge-patch+json",
            )  # fmt: skip
            await set_kubelet_version(ukube, node, NEW)
            res = await run
            assert res.returncode == 0, res.stderr
            assert proxy.count("DELETE", rf"/jobs/{name}") == 0, "the running Job was deleted"
            assert proxy.count("POST", r"/jobs$") == 0  # (the check's POST is a ?dryRun=All)
        job = await ukube.get_json(f"{jobs}/{name}")
        assert job["metadata"]["uid"] == earlier["metadata"]["uid"]
        assert "still running from an earlier run" in res.stderr, res.stderr
        assert "apiserver not answering" in res.stderr and "apiserver back after" in res.stderr
        assert not await cordoned(ukube, node)
    finally:
        await ukube.http.delete(f"{jobs}/{name}?propagationPolicy=Background")
        await usb.remove_node(node)
