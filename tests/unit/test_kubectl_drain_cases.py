"""kubectl drain's own cases, ported (k8s.io/kubectl v0.37.2):

- pkg/cmd/drain/drain_test.go TestDrain: per pod kind and flags, fatal (the drain stops), deleted
  or kept, and the warning printed;
- pkg/drain/filter_test.go TestSkipDeletedFilter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubecare.nodes.filters import Action, FilterOptions, judge_all, pod_facts, warning_lines

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def pod(
    owner: tuple[str, str] | None = None,
    *,
    phase: str = "Running",
    empty_dir: bool = False,
    deleted_ago: int | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "bar", "namespace": "default", "uid": "u"}
    if owner:
        api_version, kind = owner
        meta["ownerReferences"] = [
            {"apiVersion": api_version, "kind": kind, "name": kind.lower(), "controller": True}
        ]
    if deleted_ago is not None:
        meta["deletionTimestamp"] = (NOW - timedelta(seconds=deleted_ago)).isoformat()
    volumes = [{"name": "scratch", "emptyDir": {"medium": ""}}] if empty_dir else []
    return {"metadata": meta, "spec": {"volumes": volumes}, "status": {"phase": phase}}


RC = ("v1", "ReplicationController")
DS = ("apps/v1", "DaemonSet")
JOB = ("batch/v1", "Job")
RS = ("apps/v1", "ReplicaSet")

# (description, pod, flags, fatal, deleted, warning) — TestDrain's rows that are about pods.
CASES = [
    ("RC-managed pod", pod(RC), FilterOptions(), False, True, ""),
    ("DS-managed pod", pod(DS), FilterOptions(), True, False, ""),
    ("DS-managed terminated pod", pod(DS, phase="Succeeded"), FilterOptions(), False, True, ""),
    ("orphaned DS-managed pod", pod(), FilterOptions(), True, False, ""),
    (
        "orphaned DS-managed pod with --force",
        pod(),
        FilterOptions(force=True),
        False,
        True,
        "deleting Pods that declare no controller: default/bar",
    ),
    (
        "DS-managed pod with --ignore-daemonsets",
        pod(DS),
        FilterOptions(ignore_daemonsets=True),
        False,
        False,
        "",
    ),
    (
        "DS-managed pod with emptyDir with --ignore-daemonsets",
        pod(DS, empty_dir=True),
        FilterOptions(ignore_daemonsets=True),
        False,
        False,
        "ignoring DaemonSet-managed Pods: default/bar",
    ),
    (
        "Job-managed pod with local storage",
        pod(JOB, empty_dir=True),
        FilterOptions(force=True, delete_emptydir_data=True),
        False,
        True,
        "",
    ),
    (
        "Job-managed terminated pod",
        pod(JOB, phase="Succeeded", empty_dir=True),
        FilterOptions(),
        False,
        True,
        "",
    ),
    ("RS-managed pod", pod(RS), FilterOptions(), False, True, ""),
    ("naked pod", pod(), FilterOptions(), True, False, ""),
    ("naked pod with --force", pod(), FilterOptions(force=True), False, True, ""),
    ("pod with EmptyDir", pod(empty_dir=True), FilterOptions(force=True), True, False, ""),
    (
        "terminated pod with emptyDir",
        pod(phase="Failed", empty_dir=True),
        FilterOptions(),
        False,
        True,
        "",
    ),
    (
        "pod with EmptyDir and --delete-emptydir-data",
        pod(empty_dir=True),
        FilterOptions(force=True, delete_emptydir_data=True),
        False,
        True,
        "",
    ),
]


@pytest.mark.parametrize(("description", "p", "opts", "fatal", "deleted", "warning"), CASES)
def test_kubectl_drain_cases(
    description: str,
    p: dict[str, Any],
    opts: FilterOptions,
    fatal: bool,
    deleted: bool,
    warning: str,
) -> None:
    judged = judge_all([pod_facts(p)], opts, {"default/daemonset"}, NOW)
    [(_, verdict)] = judged
    assert (verdict.action is Action.BLOCK) is fatal, description
    assert (verdict.action is Action.EVICT) is deleted, description
    if warning:
        assert warning in warning_lines(judged), description


@pytest.mark.parametrize(
    ("age", "timeout", "delete"), [(0, 20, True), (1, 20, True), (100, 20, False)]
)
def test_skip_deleted_filter(age: int, timeout: int, delete: bool) -> None:
    p = pod(RS, deleted_ago=age if age > 0 else None)
    [(_, verdict)] = judge_all(
        [pod_facts(p)], FilterOptions(skip_wait_for_delete_timeout=timeout), set(), NOW
    )
    assert (verdict.action is Action.EVICT) is delete
