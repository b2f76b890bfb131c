"""Backups when things go wrong, against the real apiserver behind the fault-injecting proxy, and
bad input through the CLI: an expired continue token, 5xx and 429 while listing, an apiserver
that goes away, one object failing in a restore; a full disk, archives that are not backups,
from a newer kubecare, with escaping member names, and types the target cluster does not serve.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubecare.backup.archive import ArchiveReader, member_path
from kubecare.backup.create import CreateOptions, create_backup
from kubecare.backup.restore import Outcome, RestoreOptions, restore_backup
from kubecare.backup.rules import Filters
from kubecare.errors import KubecareError
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox

from ..faultproxy import FaultProxy, Rule
from ..unit.test_backup_logic import cm, write_archive
from .conftest import run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture
async def proxy(sandbox: Sandbox) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(sandbox) as p:
        yield p


def via(proxy: FaultProxy) -> Kube:
    return Kube(ClientOptions(kubeconfig=str(proxy.kubeconfig)))


async def fill(kube: Kube, ns: str, n: int) -> None:
    """``n`` ConfigMaps c000, c001, ... (sent 20 at a time)."""
    sem = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with sem:
            await kube.request_json("POST", f"/api/v1/namespaces/{ns}/configmaps",
                                    body={"metadata": {"name": f"c{i:03d}"}, "data": {"i": str(i)}})  # fmt: skip

    await asyncio.gather(*(one(i) for i in range(n)))


def only(ns: str, *resources: str) -> CreateOptions:
    return CreateOptions(
        Filters(include_namespaces=(ns,), include_resources=resources), chunk_size=10
    )


async def test_expired_continue_token_lists_the_type_again_unpaged(
    kube: Kube, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    await fill(kube, namespace, 35)
    expired = proxy.add(Rule("GET", r"/configmaps\?.*continue=", status=410, reason="Expired",
                             message="The provided continue parameter is too old", times=1))  # fmt: skip
    async with via(proxy) as k:
        result = await create_backup(k, tmp_path / "b.tar.zst", "b", only(namespace, "configmaps"))
    assert expired.hits == 1
    (t,) = result.types
    assert t.restarted and t.count == 35
    # The fallback is one unpaged list (client-go's pager does the same).
    lists = [e.target for e in proxy.log if "/configmaps" in e.target and e.status == 200]
    assert any("limit=" not in target for target in lists), lists
    with ArchiveReader.open(tmp_path / "b.tar.zst") as r:
        (entry,) = r.manifest["types"]
        assert entry["count"] == 35 and entry["resourceVersion"]


async def test_server_errors_and_throttling_while_listing_are_retried(
    kube: Kube, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    await fill(kube, namespace, 25)
    errors = proxy.add(Rule("GET", r"/configmaps\?.*continue=", status=500, times=2))
    throttled = proxy.add(Rule("GET", r"/secrets", status=429, retry_after=0.3, times=1))
    opts = only(namespace, "configmaps", "secrets")
    opts = CreateOptions(opts.filters, allow_plaintext_secrets=True, chunk_size=10)
    async with via(proxy) as k:
        result = await create_backup(k, tmp_path / "b.tar.zst", "b", opts)
    assert errors.hits == 2 and throttled.hits == 1
    counts = {t.name: t.count for t in result.types}
    assert counts["configmaps"] == 25


async def test_apiserver_gone_mid_backup_leaves_no_archive(
    kube: Kube, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    await fill(kube, namespace, 30)
    proxy.add(Rule("GET", r"/configmaps\?.*continue=", cut=True))
    store = tmp_path / "store"
    store.mkdir()
    async with via(proxy) as k:
        with pytest.raises(KubecareError) as e:
            await create_backup(k, store / "b.tar.zst", "b", only(namespace, "configmaps"))
    assert "configmaps" in e.value.message or "127.0.0.1" in e.value.message
    assert list(store.iterdir()) == []  # no archive, no temp file, no spool


async def test_one_object_failing_does_not_stop_the_restore(
    kube: Kube, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    await fill(kube, namespace, 12)
    path = tmp_path / "b.tar.zst"
    await create_backup(kube, path, "b", only(namespace, "configmaps"))
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}/configmaps")
    # Objects the cluster lacks are created with one POST each (to the collection: which one
    # fails depends on the order they are sent in).
    broken = proxy.add(Rule("POST", r"/configmaps\?", status=500, message="etcd is sad", times=1))
    with ArchiveReader.open(path) as r:
        async with via(proxy) as k:
            result = await restore_backup(k, r, RestoreOptions(Filters()))
    assert broken.hits == 1
    failed = result.failed
    assert [o.outcome for o in failed] == [Outcome.FAILED]
    assert "etcd is sad" in failed[0].reason
    assert result.count(Outcome.CREATED) == 11
    assert proxy.count("PATCH", r"/configmaps/") == 0, "created without an apply"
    proxy.clear()
    with ArchiveReader.open(path) as r:
        again = await restore_backup(kube, r, RestoreOptions(Filters()))
    assert again.count(Outcome.CREATED) == 1 and again.count(Outcome.SKIPPED) == 11


async def test_an_object_created_after_the_list_is_skipped_or_updated_as_asked(
    kube: Kube, namespace: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The POST that creates a missing object meets a 409 when someone created it after the
    restore listed what exists (the namespace's default ServiceAccount, a controller, a person).
    That object is left alone by default and applied over with ``existing="update"``; it is never
    a failure. The race is made on demand: the proxy answers the restore's list of what exists
    with an empty list, so every object is POSTed into a cluster that has it."""
    await fill(kube, namespace, 3)
    path = tmp_path / "b.tar.zst"
    await create_backup(kube, path, "b", only(namespace, "configmaps"))
    changed = f"/api/v1/namespaces/{namespace}/configmaps/c001"
    await kube.request_json("PATCH", changed, body={"data": {"i": "changed"}},
                            content_type="application/merge-patch+json")  # fmt: skip
    empty = b'{"kind":"PartialObjectMetadataList","apiVersion":"meta.k8s.io/v1","metadata":{},"items":[]}'
    proxy.add(Rule("GET", r"/configmaps\?", transform=lambda _: empty))
    with ArchiveReader.open(path) as r:
        async with via(proxy) as k:
            skipped = await restore_backup(k, r, RestoreOptions(Filters()))
    mine = [o for o in skipped.objects if o.namespace == namespace]
    assert {o.outcome for o in mine} == {Outcome.SKIPPED}, mine
    assert all(o.reason == "already exists (created while restoring)" for o in mine)
    assert (await kube.get_json(changed))["data"] == {"i": "changed"}
    with ArchiveReader.open(path) as r:
        async with via(proxy) as k:
            updated = await restore_backup(k, r, RestoreOptions(Filters(), existing="update"))
    mine = [o for o in updated.objects if o.namespace == namespace]
    assert {o.outcome for o in mine} == {Outcome.UPDATED}, mine
    assert (await kube.get_json(changed))["data"] == {"i": "1"}


# -- bad input through the CLI -------------------------------------------------------------


def cli(sb: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    res = run_cli(*args, kubeconfig=sb.kubeconfig)
    assert "Traceback" not in res.stderr, res.stderr
    return res


def test_bad_archives_are_refused_with_one_line(sandbox: Sandbox, tmp_path: Path) -> None:
    (tmp_path / "noise.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(500))
    write_archive(tmp_path / "newer.tar.zst", {"configmaps": [cm("x")]}, formatVersion=2,
                  kubecareVersion="9.0.0")  # fmt: skip
    write_archive(tmp_path / "escape.tar.zst",
                  {"configmaps": [("resources/core/configmaps/a/../../../../../tmp/x.json", b"{}")]})  # fmt: skip
    good = tmp_path / "good.tar.zst"
    write_archive(good, {"configmaps": [cm("x")]})
    (tmp_path / "cut.tar.zst").write_bytes(good.read_bytes()[:-40])
    expect = {
        "noise": "not a kubecare backup",
        "newer": "format version 2 (by kubecare 9.0.0); this kubecare reads format 1: upgrade",
        "cut": "truncated",
    }
    readers = ("describe", "verify", "restore")
    for (name, message), reader in zip(expect.items(), readers, strict=True):
        for cmd in dict.fromkeys((reader, "restore")):  # each archive: one reader, and restore
            res = cli(sandbox, "backup", cmd, str(tmp_path / f"{name}.tar.zst"))
            assert res.returncode == 1 and message in res.stderr, (cmd, res.stderr)
            assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = cli(sandbox, "backup", "verify", str(tmp_path / "escape.tar.zst"))
    assert res.returncode == 1 and "could escape" in res.stderr
    res = cli(sandbox, "backup", "restore", str(tmp_path / "escape.tar.zst"))
    assert res.returncode == 1 and "nothing was restored" in res.stderr
    assert not Path("/tmp/x.json").exists()
    res = cli(sandbox, "backup", "describe", "nope", "--from", str(tmp_path))
    assert res.returncode == 1 and "backup nope is not in" in res.stderr
    for args, message in (
        (("restore", "x", "--namespace-map", "a"), "OLD=NEW"),
        (("create", "x", "-l", "x==a==b"), "invalid label selector"),
        (("create", "../x"), "invalid backup name"),
        (("create", "x", "--to", "ftp://host/x"), "unsupported store"),
        (("delete",), "name the backups"),
    ):
        res = cli(sandbox, "backup", *args)
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)


async def test_types_the_target_does_not_serve_are_reported_the_rest_restored(
    sandbox: Sandbox, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    path = tmp_path / "foreign.tar.zst"
    gadget = member_path("gadgets.nowhere.example.com", "gadgets", namespace, "g1", encrypted=False)
    w = {"configmaps": [(member_path("", "configmaps", namespace, "kept", encrypted=False),
                         json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                             "name": "kept", "namespace": namespace}}).encode())]}  # fmt: skip
    write_archive(path, w)
    # The same archive with a custom resource type nobody serves here.
    from kubecare.backup.archive import ArchiveWriter, TypeFrame, checksums_path

    mixed = tmp_path / "mixed.tar.zst"
    with ArchiveReader.open(path) as r:
        manifest = r.manifest
        writer = ArchiveWriter(mixed)
        with open(tmp_path / ".a", "w+b") as spool:
            frame = TypeFrame(spool, 0)
            for m in r.type_members(manifest["types"][0]):
                if not m.path.startswith("checksums/"):
                    frame.add(m.path, m.data)
            sha = frame.finish(checksums_path("", "configmaps"))
            off, length, fsha = writer.append(spool)
        manifest["types"][0].update(
            frame={"offset": off, "length": length, "sha256": fsha},
            checksums={"path": checksums_path("", "configmaps"), "sha256": sha},
        )
        with open(tmp_path / ".b", "w+b") as spool:
            frame = TypeFrame(spool, 0)
            frame.add(gadget, json.dumps({"apiVersion": "gadgets.nowhere.example.com/v1",
                                          "kind": "Gadget", "metadata": {"name": "g1",
                                          "namespace": namespace}}).encode())  # fmt: skip
            sha = frame.finish(checksums_path("gadgets.nowhere.example.com", "gadgets"))
            off, length, fsha = writer.append(spool)
        manifest["types"].append({
            "group": "gadgets.nowhere.example.com", "version": "v1", "resource": "gadgets",
            "kind": "Gadget", "namespaced": True, "custom": True, "count": 1,
            "frame": {"offset": off, "length": length, "sha256": fsha},
            "checksums": {"path": checksums_path("gadgets.nowhere.example.com", "gadgets"),
                          "sha256": sha}})  # fmt: skip
        writer.commit(manifest, 0)
    res = cli(sandbox, "backup", "restore", str(mixed), "-o", "json")
    assert res.returncode == 1, res.stderr
    outcomes = {o["name"]: (o["outcome"], o["reason"]) for o in json.loads(res.stdout)["objects"]}
    assert outcomes["kept"] == ("created", "")
    assert outcomes["g1"][0] == "failed" and "not served by this cluster" in outcomes["g1"][1]
    assert await kube.get_json(f"/api/v1/namespaces/{namespace}/configmaps/kept")


def test_a_full_disk_fails_cleanly(sandbox: Sandbox, tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(disk)], check=True)
    try:
        (disk / "filler").write_bytes(bytes(28 * 1024))  # about a page left: full at once
        res = cli(sandbox, "backup", "create", "big", "--to", str(disk),
                  "--allow-plaintext-secrets")  # fmt: skip
        assert res.returncode == 1, res.stderr
        assert "No space left on device" in res.stderr and "nothing was written" in res.stderr
        assert [p.name for p in disk.iterdir()] == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)
