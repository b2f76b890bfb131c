"""etcd snapshots against the sandbox's real etcd, checked with etcd's own tools: etcdutl must
accept every file kubecare saves and give the same status numbers kubecare computes; a restore
takes the cluster back to the snapshot through the static pod manifests.

Save and status use the session's sandbox (a snapshot changes nothing). Restores roll the whole
cluster back, so they get sandboxes of their own (one control plane; three for HA).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecare.errors import NotFound
from kubecare.etcd.members import read_members
from kubecare.kube import Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION, binary_path, etcd_version_for
from kubecare.sandbox.target import etcd_target

from .conftest import cli_argv, own_sandbox, run_cli
from .workloads import deployment, wait_for, wait_running

pytestmark = pytest.mark.e2e

#: The etcd of the default sandbox (kubeadm 1.37's etcd tag, 3.7.0-0, runs etcd 3.7.4).
ETCD_VERSION = etcd_version_for(DEFAULT_KUBE_VERSION)
ETCDUTL = binary_path("etcdutl", ETCD_VERSION)
ETCDCTL = binary_path("etcdctl", ETCD_VERSION)


def etcdutl_status(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [str(ETCDUTL), "-w", "json", "snapshot", "status", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def kubecare_status(path: Path) -> dict[str, Any]:
    res = run_cli("etcd", "snapshot", "status", str(path), "-o", "json")
    assert res.returncode == 0, res.stderr
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def etcdctl(sb: Sandbox, *args: str, every: bool = False) -> str:
    """etcdctl from the host, at the first member (``every``: all of them) through the
    sandbox's forwards (``--cluster`` would dial the members' 192.0.2.x from the host)."""
    members = read_members(*etcd_target(sb.name))
    ep = members[0].endpoint
    urls = ",".join(m.endpoint.url for m in members) if every else ep.url
    out = subprocess.run(
        [
            str(ETCDCTL),
            f"--endpoints={urls}",
            f"--cacert={ep.cacert}",
            f"--cert={ep.cert}",
            f"--key={ep.key}",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


def save(sb: Sandbox, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("etcd", "snapshot", "save", str(path), "--sandbox", sb.name, *extra)


async def configmaps(kube: Kube, ns: str, count: int, size: int, prefix: str = "cm") -> None:
    for i in range(count):
        await kube.request_json(
            "POST",
            f"/api/v1/namespaces/{ns}/configmaps",
            body={"metadata": {"name": f"{prefix}{i}"}, "data": {"blob": "x" * size}},
        )


def test_save_writes_a_file_etcdutl_accepts(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    res = save(sandbox, path, "--verify")
    assert res.returncode == 0, res.stderr
    # the cluster version etcd reports is its minor's (etcdctl prints the same line)
    minor = ETCD_VERSION.rsplit(".", 1)[0]
    assert res.stdout.startswith(f"Snapshot saved at {path}\nServer version {minor}.0")
    assert "SHA-256 verified" in res.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["snap.db"]  # no temp file left
    # etcdutl restores it as is (no --skip-hash-check): the trailer is etcdctl's
    subprocess.run(
        [str(ETCDUTL), "snapshot", "restore", str(path), "--data-dir", str(tmp_path / "r")],
        capture_output=True,
        check=True,
    )
    assert (tmp_path / "r" / "member" / "snap" / "db").exists()
    ours = kubecare_status(path)
    assert {k: ours[k] for k in ("hash", "revision", "totalKey", "totalSize", "version")} == (
        etcdutl_status(path)
    )
    assert ours["sha256"] == "ok"
    resources = {r["resource"]: r["count"] for r in ours["kubernetes"]["resources"]}
    assert resources["nodes"] >= 4 and resources["namespaces"] >= 4


async def test_status_equals_etcdutl_through_deletes_large_values_compaction_and_defrag(
    sandbox: Sandbox, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    await configmaps(kube, namespace, 40, 20_000)  # overflow pages
    for i in range(0, 40, 3):
        await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/cm{i}")
    first = tmp_path / "deleted.db"
    assert save(sandbox, first).returncode == 0
    rev = json.loads(etcdctl(sandbox, "-w", "json", "endpoint", "status"))[0]["Status"]["header"][
        "revision"
    ]
    etcdctl(sandbox, "compact", str(rev - 5))
    etcdctl(sandbox, "defrag")
    second = tmp_path / "compacted.db"
    assert save(sandbox, second).returncode == 0
    for path in (first, second):
        ours = kubecare_status(path)
        assert {k: ours[k] for k in ("hash", "revision", "totalKey", "totalSize", "version")} == (
            etcdutl_status(path)
        ), path.name
    counts = {
        (n["namespace"]): n["count"] for n in kubecare_status(second)["kubernetes"]["namespaces"]
    }
    assert counts[namespace] >= 40 - 14


def test_zstd_snapshots_are_read_as_they_are(sandbox: Sandbox, tmp_path: Path) -> None:
    path = tmp_path / "snap.db.zst"
    assert save(sandbox, path, "--compress", "zstd").returncode == 0
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert kubecare_status(path)["sha256"] == "ok"


def test_several_endpoints_the_snapshot_comes_from_a_healthy_one(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    ep = read_members(*etcd_target(sandbox.name))[0].endpoint
    res = run_cli(
        "etcd",
        "snapshot",
        "save",
        str(tmp_path / "s.db"),
        "--endpoints",
        f"https://127.0.0.1:1,{ep.url}",
        "--cacert",
        str(ep.cacert),
        "--cert",
        str(ep.cert),
        "--key",
        str(ep.key),
    )
    assert res.returncode == 0, res.stderr
    assert f"taking the snapshot from {ep.url}" in res.stderr


def test_member_status_names_the_leader(sandbox: Sandbox) -> None:
    res = run_cli("etcd", "status", "--sandbox", sandbox.name, "-o", "json")
    assert res.returncode == 0, res.stderr
    (member,) = json.loads(res.stdout)
    assert member["version"] == ETCD_VERSION and member["isLeader"] is True


def test_bad_input_is_one_line_and_leaves_no_file(sandbox: Sandbox, tmp_path: Path) -> None:
    ep = read_members(*etcd_target(sandbox.name))[0].endpoint
    pki = Path(str(ep.cacert)).parent.parent  # the cluster CA's client cert: not etcd's
    wrong = run_cli(
        "etcd", "snapshot", "save", str(tmp_path / "a.db"),
        "--endpoints", ep.url, "--cacert", str(ep.cacert),
        "--cert", str(pki / "apiserver-kubelet-client.crt"),
        "--key", str(pki / "apiserver-kubelet-client.key"),
    )  # fmt: skip
    assert wrong.returncode == 1 and "check --cacert/--cert/--key" in wrong.stderr
    down = run_cli(
        "etcd", "snapshot", "save", str(tmp_path / "b.db"), "--endpoints", "http://127.0.0.1:1"
    )
    assert down.returncode == 1 and "unreachable" in down.stderr
    missing = run_cli(
        "etcd",
        "snapshot",
        "save",
        str(tmp_path / "c.db"),
        "--cacert",
        "/nope",
        "--endpoints",
        ep.url,
    )
    assert missing.returncode == 1 and "/nope not found" in missing.stderr
    existing = tmp_path / "keep.db"
    existing.write_text("precious")
    clash = save(sandbox, existing)
    assert clash.returncode == 2 and "--overwrite" in clash.stderr
    assert existing.read_text() == "precious"
    nodir = save(sandbox, tmp_path / "no" / "such" / "dir.db")
    assert nodir.returncode == 2 and "does not exist" in nodir.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.db"]
    for res in (wrong, down, missing, clash, nodir):
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    # status: not a snapshot, truncated
    junk = run_cli("etcd", "snapshot", "status", str(existing))
    assert junk.returncode == 1 and "not a bbolt database" in junk.stderr
    good = tmp_path / "good.db"
    assert save(sandbox, good).returncode == 0
    cut = tmp_path / "cut.db"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    short = run_cli("etcd", "snapshot", "status", str(cut))
    assert short.returncode == 1 and "truncated" in short.stderr


# -- restore -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def restore_sb(sandbox_state_dir: Path) -> AsyncIterator[Sandbox]:
    async with own_sandbox("restore", SandboxOptions(workers=1)) as sb:
        yield sb


async def exists(kube: Kube, path: str) -> bool:
    try:
        await kube.get_json(path)
    except NotFound:
        return False
    return True


def data_hostpath(manifest: Path) -> str:
    doc = yaml.safe_load(manifest.read_text())
    return next(v["hostPath"]["path"] for v in doc["spec"]["volumes"] if v["name"] == "etcd-data")


async def test_restore_refuses_what_it_must_and_changes_nothing(
    restore_sb: Sandbox, tmp_path: Path
) -> None:
    snap = tmp_path / "s.db"
    assert save(restore_sb, snap).returncode == 0
    manifest = restore_sb.manifest_path("etcd")
    before = manifest.read_text()
    no_yes = run_cli("etcd", "restore", str(snap), "--sandbox", restore_sb.name)
    assert no_yes.returncode == 2 and "--yes" in no_yes.stderr
    systemd = run_cli(
        "etcd", "restore", str(snap), "--endpoints", "https://10.0.0.1:2379", "--dry-run"
    )
    assert systemd.returncode == 0 and "systemctl stop etcd" in systemd.stdout
    dry = run_cli("etcd", "restore", str(snap), "--sandbox", restore_sb.name, "--dry-run")
    assert dry.returncode == 0 and "etcdutl snapshot restore" in dry.stdout
    assert "stop kube-apiserver" in dry.stdout
    full = restore_sb.node_root("control-plane") / "var" / "lib" / "full"
    full.mkdir(parents=True)
    (full / "x").write_text("data")
    busy = run_cli(
        "etcd", "restore", str(snap), "--sandbox", restore_sb.name, "--yes", "--data-dir", str(full)
    )
    assert busy.returncode == 2 and "not empty" in busy.stderr
    shutil.rmtree(full)
    # a dir the node's etcd would not see (the machine's, not the node's): refused up front
    away = run_cli(
        "etcd", "restore", str(snap), "--sandbox", restore_sb.name, "--yes",
        "--data-dir", str(tmp_path / "away"),
    )  # fmt: skip
    assert away.returncode == 1 and "outside the node's tree" in away.stderr
    assert not (tmp_path / "away").exists()
    bad = tmp_path / "bad.db"
    raw = bytearray(snap.read_bytes())
    raw[-1] ^= 0xFF  # the trailer no longer matches the data
    bad.write_bytes(bytes(raw))
    corrupt = run_cli("etcd", "restore", str(bad), "--sandbox", restore_sb.name, "--yes")
    assert corrupt.returncode == 1 and "SHA-256" in corrupt.stderr
    no_tool = run_cli(
        "etcd", "restore", str(snap), "--sandbox", restore_sb.name, "--yes", "--etcdutl", "/nope"
    )
    assert no_tool.returncode == 1 and "etcdutl not found" in no_tool.stderr
    assert manifest.read_text() == before
    assert not [p for p in manifest.parent.iterdir() if p.name.startswith(".")]
    for res in (no_yes, busy, away, corrupt, no_tool):
        assert "Traceback" not in res.stderr


async def test_restore_brings_deleted_objects_back_and_drops_later_ones(
    restore_sb: Sandbox, tmp_path: Path
) -> None:
    async with Kube(restore_sb.client_options()) as kube:
        ns = f"r{uuid.uuid4().hex[:6]}"
        await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        await configmaps(kube, ns, 1, 10, prefix="before")
        snap = tmp_path / "before.db"
        assert save(restore_sb, snap).returncode == 0
        await kube.request_json("DELETE", f"/api/v1/namespaces/{ns}/configmaps/before0")
        await configmaps(kube, ns, 1, 10, prefix="after")
    manifest = restore_sb.manifest_path("etcd")
    root = restore_sb.node_root("control-plane")
    assert data_hostpath(manifest) == "/var/lib/etcd"  # kubeadm's, the node's own path
    old_dir = str(root / "var" / "lib" / "etcd")  # where that is, seen from the host
    res = run_cli(
        "etcd", "restore", str(snap), "--sandbox", restore_sb.name, "--yes", "-o", "json",
        timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["revision"] == kubecare_status(snap)["revision"] + 1_000_000_000  # bumped
    (member,) = report["members"]
    assert member["oldDataDir"] == old_dir and Path(old_dir, "member").is_dir()  # untouched
    # the manifest names the node's own path, /var/lib/etcd-restore-STAMP, as on a kubeadm node
    new_dir = Path(member["newDataDir"])
    assert root in new_dir.parents and new_dir != Path(old_dir)
    assert data_hostpath(manifest) == "/" + str(new_dir.relative_to(root))
    # and kubeadm's ClusterConfiguration, so the next kubeadm upgrade keeps it
    assert report["kubeadmConfig"].startswith("kubeadm-config: etcd.local.dataDir is now /var")
    assert [Path(b).name for b in report["backups"]] == [
        f".etcd.yaml.kubecare-{report['backups'][0].rsplit('-', 1)[1]}"
    ]
    assert {s["step"] for s in report["steps"]} >= {
        "stop every kube-apiserver",
        "start etcd on the restored data",
    }
    async with Kube(restore_sb.client_options()) as kube:
        assert await exists(kube, f"/api/v1/namespaces/{ns}/configmaps/before0")
        assert not await exists(kube, f"/api/v1/namespaces/{ns}/configmaps/after0")

        async def nodes_ready() -> bool:
            items = (await kube.get_json("/api/v1/nodes"))["items"]
            return all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n["status"]["conditions"]
                )
                for n in items
            )

        await wait_for(nodes_ready, timeout=60)
        await kube.request_json(
            "POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=deployment("web", 2)
        )
        await wait_running(kube, ns, 2, timeout=90)  # controllers and scheduler work again


def kubeadm_on(sb: Sandbox, *command: str) -> str:
    res = run_cli("sandbox", "exec", "--name", sb.name, "control-plane", "--", *command,
                  timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


async def test_after_a_restore_the_real_kubeadm_upgrade_keeps_the_restored_data(
    restore_sb: Sandbox, tmp_path: Path
) -> None:
    """kubeadm regenerates etcd.yaml from kubeadm-config on every upgrade: the restored dir
    must be recorded there, or etcd comes back on the data from before the restore. Then the
    manifests are kubeadm's own (its paths, /etc/kubernetes/pki, /var/lib/...): status,
    snapshot and a second restore all work inside the node's tree."""
    manifest = restore_sb.manifest_path("etcd")
    restored = data_hostpath(manifest)  # the previous test's restore
    assert restored != "/var/lib/etcd", "runs after the restore above (module order)"
    async with Kube(restore_sb.client_options()) as kube:
        ns = f"k{uuid.uuid4().hex[:6]}"
        await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    out = kubeadm_on(
        restore_sb, "kubeadm", "upgrade", "apply", f"v{restore_sb.load().version}", "--yes",
        "--ignore-preflight-errors=SystemVerification",
    )  # fmt: skip
    assert "[upgrade] SUCCESS!" in out
    doc = yaml.safe_load(manifest.read_text())
    paths = {v["name"]: v["hostPath"]["path"] for v in doc["spec"]["volumes"]}
    assert paths == {"etcd-certs": "/etc/kubernetes/pki/etcd", "etcd-data": restored}
    async with Kube(restore_sb.client_options()) as kube:
        await wait_for(lambda: exists(kube, f"/api/v1/namespaces/{ns}"), timeout=60)

    status = run_cli("etcd", "status", "--sandbox", restore_sb.name, "-o", "json")
    assert status.returncode == 0, status.stderr  # the certificates at kubeadm's paths
    assert json.loads(status.stdout)[0]["version"] == ETCD_VERSION
    snap = tmp_path / "again.db"
    assert save(restore_sb, snap).returncode == 0
    async with Kube(restore_sb.client_options()) as kube:
        await kube.request_json("DELETE", f"/api/v1/namespaces/{ns}")
    res = run_cli("etcd", "restore", str(snap), "--sandbox", restore_sb.name, "--yes",
                  "-o", "json", timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr
    (member,) = json.loads(res.stdout)["members"]
    root = restore_sb.node_root("control-plane")
    assert member["oldDataDir"] == str(root / restored.lstrip("/"))
    # next to the old one, not etcd-restore-A-restore-B; never on the machine's own /var/lib
    assert re.fullmatch(r"etcd-restore-\d{8}T\d{6}", Path(member["newDataDir"]).name)
    assert Path(member["newDataDir"]).parent == root / "var" / "lib"
    assert not list(Path("/var/lib").glob("etcd-restore-*"))
    async with Kube(restore_sb.client_options()) as kube:
        assert await exists(kube, f"/api/v1/namespaces/{ns}")  # back from the snapshot


@pytest.fixture(scope="module")
async def ha_sb(sandbox_state_dir: Path) -> AsyncIterator[Sandbox]:
    async with own_sandbox("restore-ha", SandboxOptions(workers=1, control_planes=3)) as sb:
        yield sb


async def test_restore_on_three_control_planes(ha_sb: Sandbox, tmp_path: Path) -> None:
    async with Kube(ha_sb.client_options()) as kube:
        await configmaps(kube, "default", 1, 10, prefix="ha-before")
        snap = tmp_path / "ha.db"
        saved = save(ha_sb, snap)
        assert saved.returncode == 0, saved.stderr
        assert "taking the snapshot from" in saved.stderr  # three members: a healthy one chosen
        await kube.request_json("DELETE", "/api/v1/namespaces/default/configmaps/ha-before0")
        await configmaps(kube, "default", 1, 10, prefix="ha-after")
    res = run_cli("etcd", "restore", str(snap), "--sandbox", ha_sb.name, "--yes", timeout=900)
    assert res.returncode == 0, res.stderr
    status = run_cli("etcd", "status", "--sandbox", ha_sb.name, "-o", "json")
    members = json.loads(status.stdout)
    assert len(members) == 3 and sum(m["isLeader"] for m in members) == 1
    assert len({m["leader"] for m in members}) == 1
    async with Kube(ha_sb.client_options()) as kube:
        assert await exists(kube, "/api/v1/namespaces/default/configmaps/ha-before0")
        assert not await exists(kube, "/api/v1/namespaces/default/configmaps/ha-after0")
        await configmaps(kube, "default", 1, 10, prefix="ha-new")  # writes work


def endpoint_status(sb: Sandbox) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(
        etcdctl(sb, "endpoint", "status", "-w", "json", every=True)
    )
    return result


def cp_names(sb: Sandbox) -> list[str]:
    return [cp["node"] for cp in sb.load().control_planes]


def initial_cluster(manifest: Path) -> tuple[str, str | None]:
    command = yaml.safe_load(manifest.read_text())["spec"]["containers"][0]["command"]
    flags = dict(a[2:].split("=", 1) for a in command if a.startswith("--") and "=" in a)
    return flags["initial-cluster"], flags.get("initial-cluster-state")


async def test_etcd_members_joined_as_kubeadm_joins_them(ha_sb: Sandbox) -> None:
    """kubeadm init's member alone; each join's manifest names the members so far, existing."""
    first, second, third = (ha_sb.manifest_path("etcd", node) for node in cp_names(ha_sb))
    names = [c.split("=")[0] for c in initial_cluster(third)[0].split(",")]
    assert initial_cluster(first)[1] is None and initial_cluster(first)[0].count("=") == 1
    assert initial_cluster(second)[1] == "existing" and initial_cluster(second)[0].count("=") == 2
    assert initial_cluster(third)[1] == "existing" and sorted(names) == cp_names(ha_sb)
    listed = json.loads(etcdctl(ha_sb, "member", "list", "-w", "json"))["members"]
    assert len(listed) == 3 and not any(m.get("isLearner") for m in listed)  # promoted


async def test_with_etcd_down_the_data_dirs_say_who_must_be_restored(
    ha_sb: Sandbox, tmp_path: Path
) -> None:
    """The first control plane's manifest names one member; restoring it alone would leave two
    members with the old data and their quorum. The data dir's membership records refuse it."""
    snap = tmp_path / "down.db"
    assert save(ha_sb, snap).returncode == 0
    nodes = cp_names(ha_sb)
    # The first node's manifests, as if only that node were here, in a dir of that node's own
    # (its manifests name the node's paths: /var/lib/etcd-restore-... since the restore above).
    kube_dir = ha_sb.node_root(nodes[0]) / "etc" / "kubernetes"
    alone = kube_dir / "alone"
    alone.mkdir()
    (alone / "etcd.yaml").write_bytes(ha_sb.manifest_path("etcd", nodes[0]).read_bytes())
    # Two members whose manifests resolve to one data dir: copied from other machines.
    twin = kube_dir / "twin"
    twin.mkdir()
    var_lib = ha_sb.node_root(nodes[0]) / "var" / "lib"
    dirs_before = set(var_lib.iterdir())
    doc = yaml.safe_load(ha_sb.manifest_path("etcd", nodes[0]).read_text())
    command = doc["spec"]["containers"][0]["command"]
    for flag, value in (
        ("name", "elsewhere"),
        ("initial-advertise-peer-urls", "https://127.0.0.1:1"),
    ):
        command[:] = [f"--{flag}={value}" if a.startswith(f"--{flag}=") else a for a in command]
    (twin / "etcd.yaml").write_text(yaml.safe_dump(doc))
    before = {n: ha_sb.manifest_path("etcd", n).read_bytes() for n in nodes}
    cluster = initial_cluster(ha_sb.manifest_path("etcd", nodes[2]))[0]  # the last joiner's
    for n in nodes:
        assert ha_sb.stop_component("etcd", node=n)
    try:
        res = run_cli(
            "etcd", "restore", str(snap), "--manifests-dir", str(alone),
            "--etcdutl", str(ETCDUTL), "--yes",
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        assert "etcd does not answer" in res.stderr and "membership recorded in" in res.stderr
        assert f"does not cover: {nodes[1]}, {nodes[2]}" in res.stderr
        assert "--initial-cluster " in res.stderr and "Traceback" not in res.stderr
        dry = run_cli(
            "etcd", "restore", str(snap), "--manifests-dir", str(alone),
            "--etcdutl", str(ETCDUTL), "--dry-run",
        )  # fmt: skip
        # refused: no steps (they would restore one member of three), the per-node way instead
        assert dry.returncode == 2 and "etcdutl" not in dry.stdout
        assert f"does not cover: {nodes[1]}, {nodes[2]}" in dry.stderr
        assert f"--initial-cluster {cluster.split(',')[0]}" in dry.stderr or all(
            part in dry.stderr for part in cluster.split(",")
        )
        per_node = run_cli(
            "etcd", "restore", str(snap), "--manifests-dir", str(alone),
            "--etcdutl", str(ETCDUTL), "--initial-cluster", cluster, "--token", "t", "--dry-run",
        )  # fmt: skip
        assert per_node.returncode == 0, per_node.stderr  # this node's part of the whole cluster
        assert "first: stop kube-apiserver on every control-plane node" in per_node.stdout
        assert f"--initial-cluster={cluster}" in per_node.stdout
        same = run_cli(
            "etcd", "restore", str(snap), "--manifests-dir", str(alone),
            "--manifests-dir", str(twin), "--etcdutl", str(ETCDUTL), "--yes",
        )  # fmt: skip
        assert same.returncode == 2 and "resolve to the same data dir" in same.stderr
        assert not list(alone.glob(".*")) and set(var_lib.iterdir()) == dirs_before
    finally:  # together: one member alone has no quorum, so it never becomes ready
        await asyncio.gather(*(ha_sb.start_component("etcd", node=n) for n in nodes))
        shutil.rmtree(alone)
        shutil.rmtree(twin)
    assert {n: ha_sb.manifest_path("etcd", n).read_bytes() for n in nodes} == before


async def test_a_per_node_restore_run_on_every_node_restores_the_cluster(
    ha_sb: Sandbox, tmp_path: Path
) -> None:
    """As on real machines: each node restores its own member, all with one cluster list and
    token; each run waits for the quorum the others bring."""
    async with Kube(ha_sb.client_options()) as kube:
        await configmaps(kube, "default", 1, 10, prefix="pn-before")
        snap = tmp_path / "pn.db"
        assert save(ha_sb, snap).returncode == 0
        await kube.request_json("DELETE", "/api/v1/namespaces/default/configmaps/pn-before0")
        await configmaps(kube, "default", 1, 10, prefix="pn-after")
    nodes = cp_names(ha_sb)
    cluster = initial_cluster(ha_sb.manifest_path("etcd", nodes[2]))[0]  # the last joiner's
    base = ["etcd", "restore", str(snap), "--etcdutl", str(ETCDUTL)]
    before = {e["Status"]["header"]["cluster_id"] for e in endpoint_status(ha_sb)}
    runs = [
        subprocess.Popen(
            [
                *cli_argv(*base, "--manifests-dir", str(ha_sb.manifest_path("etcd", n).parent)),
                "--initial-cluster",
                cluster,
                "--initial-cluster-token",
                "per-node-1",
                "--yes",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in nodes
    ]
    try:
        outs = [p.communicate(timeout=600) for p in runs]
    finally:
        for p in runs:  # a failed assert above must not leave runs changing the sandbox
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in runs), [o[1] for o in outs]
    # one new cluster, the ID etcd derives from the list and the (snapshot-mixed) token
    after = {e["Status"]["header"]["cluster_id"] for e in endpoint_status(ha_sb)}
    assert len(after) == 1 and after != before
    members = json.loads(run_cli("etcd", "status", "--sandbox", ha_sb.name, "-o", "json").stdout)
    assert len(members) == 3 and sum(m["isLeader"] for m in members) == 1
    async with Kube(ha_sb.client_options()) as kube:
        assert await exists(kube, "/api/v1/namespaces/default/configmaps/pn-before0")
        assert not await exists(kube, "/api/v1/namespaces/default/configmaps/pn-after0")
        await configmaps(kube, "default", 1, 10, prefix="pn-new")  # writes work


async def test_a_node_restored_from_another_snapshot_never_joins_and_says_how_to_go_back(
    ha_sb: Sandbox, tmp_path: Path
) -> None:
    """Per-node runs given another bump (or snapshot) get another cluster ID from the mixed
    token: that node's member never forms a quorum with the others, its run stops at
    --quorum-timeout with the rollback commands; followed, and run again right, it joins."""
    import re

    snap = tmp_path / "mixed.db"
    assert save(ha_sb, snap).returncode == 0
    nodes = cp_names(ha_sb)
    cluster = initial_cluster(ha_sb.manifest_path("etcd", nodes[2]))[0]

    def argv(node: str, *extra: str) -> list[str]:
        return cli_argv(
            "etcd", "restore", str(snap), "--etcdutl", str(ETCDUTL),
            "--manifests-dir", str(ha_sb.manifest_path("etcd", node).parent),
            "--initial-cluster", cluster, "--initial-cluster-token", "mixed-1", "--yes", *extra,
        )  # fmt: skip

    runs = [
        subprocess.Popen(argv(n, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n, extra in (
            (nodes[0], ()),
            (nodes[1], ()),
            (nodes[2], ("--bump-revision", "5", "--quorum-timeout", "25s")),
        )
    ]
    try:
        outs = [p.communicate(timeout=600) for p in runs]
    finally:
        for p in runs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert runs[0].returncode == 0 and runs[1].returncode == 0, [o[1] for o in outs]
    err = outs[2][1]
    assert runs[2].returncode == 1 and "become healthy: not within 25s" in err, err
    # the others in --initial-cluster's order (the last joiner's manifest: etcd's member order)
    assert any(
        f"this node only: the runs on {a}, {b} may have restored" in err
        for a, b in ((nodes[0], nodes[1]), (nodes[1], nodes[0]))
    ), err
    # follow the advice: the moves back, the restored dir removed; then the same run, right
    for hidden, original in re.findall(r"mv (\S+) (\S+?)(?=;|$| )", err):
        os.rename(hidden, original)
    for restored in re.findall(r"rm -rf (\S+)", err):
        shutil.rmtree(restored)
    again = subprocess.run(argv(nodes[2]), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    status = {e["Status"]["header"]["cluster_id"] for e in endpoint_status(ha_sb)}
    assert len(status) == 1 and len(endpoint_status(ha_sb)) == 3
    async with Kube(ha_sb.client_options()) as kube:
        await configmaps(kube, "default", 1, 10, prefix="mixed-new")  # writes work
