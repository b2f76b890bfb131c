"""Backups scoped to their cluster: retention per cluster (restic's --group-by), pinned
backups never let go, and the upgrade preflight's newest *complete* backup *of this cluster*,
on a real directory store holding archives whose manifests name two clusters."""

from __future__ import annotations

import argparse
import datetime
import os
import time
from pathlib import Path
from typing import Any

import pytest

from kubecare.backup.archive import ArchiveWriter
from kubecare.backup.retention import to_delete
from kubecare.backup.scope import cluster_of, missing_types, same_cluster
from kubecare.backup.stores import Info, LocalStore
from kubecare.errors import UsageError

NOW = datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC)


def info(name: str, days: float) -> Info:
    return Info(name, 1, NOW - datetime.timedelta(days=days))


def test_retention_applies_per_cluster() -> None:
    infos = [info("a1", 1), info("a2", 2), info("a3", 3), info("b1", 4), info("b2", 5)]
    groups = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B"}
    # one group (the old behaviour): b1 and b2 are rotated out by cluster A's newer backups
    assert [i.name for i in to_delete(infos, keep_last=2, keep_within=None, now=NOW)] == [
        "b2", "b1", "a3",
    ]  # fmt: skip
    gone = to_delete(infos, keep_last=2, keep_within=None, now=NOW, groups=groups)
    assert [i.name for i in gone] == ["a3"]
    gone = to_delete(infos, keep_last=1, keep_within=None, now=NOW, groups=groups)
    assert [i.name for i in gone] == ["b2", "a3", "a2"]  # oldest first


def test_a_pinned_backup_is_never_let_go() -> None:
    infos = [info("a1", 1), info("a2", 2), info("a3", 3)]
    gone = to_delete(infos, keep_last=1, keep_within=None, now=NOW, pinned={"a3"})
    assert [i.name for i in gone] == ["a2"]


def test_manifest_scope() -> None:
    m = {"cluster": {"uid": "u1", "server": "https://127.0.0.1:1"}, "missing": []}
    assert cluster_of(m) == "u1" and missing_types(m) == {}
    assert same_cluster(m, "u1", "https://other") and not same_cluster(
        m, "u2", m["cluster"]["server"]
    )
    old = {"cluster": {"server": "https://127.0.0.1:1"}, "warnings": [
        "secrets: forbidden, not backed up (secrets is forbidden)",
        "worker processes unavailable (no fork); worked in one",
    ]}  # fmt: skip
    assert cluster_of(old) == "server:https://127.0.0.1:1"
    assert missing_types(old) == {"secrets": "forbidden"}
    # no UID on one side: the apiserver URL decides
    assert same_cluster(old, "u1", "https://127.0.0.1:1") and not same_cluster(old, "u1", "x")
    for bad in ({}, {"cluster": "x"}, {"cluster": None}):
        assert cluster_of(bad) == "" and not same_cluster(bad, "u1", "s")


def write_backup(
    root: Path, name: str, uid: str, days: float, missing: tuple[str, ...] = ()
) -> None:
    manifest: dict[str, Any] = {
        "format": "kubecare-backup", "formatVersion": 1, "name": name,
        "cluster": {"server": "https://127.0.0.1:6443", "version": "v1.37.2", "uid": uid},
        "missing": [{"type": t, "reason": "forbidden"} for t in missing], "types": [],
        "warnings": [],
    }  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    w = ArchiveWriter(root / f"{name}.tar.zst")
    w.commit(manifest, int(time.time()))
    stamp = time.time() - days * 86400
    os.utime(root / f"{name}.tar.zst", (stamp, stamp))


def test_prune_keeps_other_clusters_and_pinned_backups(tmp_path: Path) -> None:
    from kubecare.cli.backup import _prune

    for i in range(1, 4):
        write_backup(tmp_path, f"mine-{i}", "uid-mine", i)
        write_backup(tmp_path, f"theirs-{i}", "uid-theirs", i + 0.5)
    (tmp_path / "linux-6.1.tar.zst").write_bytes(b"not a backup")
    store = LocalStore(tmp_path)
    store.pin("mine-3", "rollback backup of the unfinished upgrade to v1.37.2")
    # backup create on cluster "mine": only its own backups, the pinned one kept
    pruned = _prune(store, 1, None, False, cluster="uid-mine")
    assert pruned.deleted == ["mine-2"]
    assert pruned.pinned == {"mine-3": "rollback backup of the unfinished upgrade to v1.37.2"}
    left = sorted(i.name for i in store.infos())
    assert left == ["linux-6.1", "mine-1", "mine-3", "theirs-1", "theirs-2", "theirs-3"]
    # backup delete --keep-last 1 (no cluster): the rule per cluster
    pruned = _prune(store, 1, None, True)
    assert pruned.deleted == ["theirs-3", "theirs-2"] and list(pruned.pinned) == ["mine-3"]


def test_a_pinned_backup_is_not_deleted_by_name_without_unpin(tmp_path: Path) -> None:
    from kubecare.cli.backup import delete_cmd

    write_backup(tmp_path, "before-v1.37.2", "u", 1)
    store = LocalStore(tmp_path)
    store.pin("before-v1.37.2", "rollback backup of the unfinished upgrade to v1.37.2")
    args = argparse.Namespace(
        names=["before-v1.37.2"], store=str(tmp_path), keep_last=None, keep_within=None,
        dry_run=False, unpin=False,
    )  # fmt: skip
    with pytest.raises(UsageError, match=r"pinned .*--unpin"):
        delete_cmd(args)
    assert store.exists("before-v1.37.2")
    args.unpin = True
    assert delete_cmd(args) == 0
    assert not store.exists("before-v1.37.2") and store.pins() == {}


def test_preflight_takes_the_newest_complete_backup_of_this_cluster(tmp_path: Path) -> None:
    from kubecare.upgrade.preflight import newest_backup

    write_backup(tmp_path, "theirs-new", "uid-theirs", 0.1)
    write_backup(tmp_path, "mine-partial", "uid-mine", 0.2, ("secrets",))
    write_backup(tmp_path, "mine-whole", "uid-mine", 2)
    age, where = newest_backup(str(tmp_path), "uid-mine", "https://127.0.0.1:6443")
    assert where.startswith(f"{tmp_path}/mine-whole.tar.zst")
    assert "1 partial, 1 of other clusters" in where
    assert age is not None and 2 * 86400 - 60 < age < 2 * 86400 + 60
    age, where = newest_backup(str(tmp_path), "uid-nobody", "https://elsewhere")
    assert age is None and "no complete backup of this cluster (3 of other clusters)" in where
