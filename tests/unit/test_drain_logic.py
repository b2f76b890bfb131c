"""kubectl drain's filter table, and the plan built on it, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubecare.nodes.drain_plan import plan_drain
from kubecare.nodes.filters import (
    DAEMONSET_FATAL,
    LOCAL_STORAGE_FATAL,
    UNMANAGED_FATAL,
    Action,
    FilterOptions,
    blocking_errors,
    judge_all,
    pod_facts,
)
from kubecare.nodes.selectors import selector_matches
from kubecare.nodes.workloads import WorkloadIndex

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def pod(
    name: str,
    *,
    owner: str | None = "ReplicaSet",
    phase: str = "Running",
    empty_dir: bool = False,
    mirror: bool = False,
    deleted_ago: float | None = None,
    labels: dict[str, str] | None = None,
    ready: bool = True,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ns",
        "uid": f"uid-{name}",
        "labels": labels or {},
    }
    if owner:
        meta["ownerReferences"] = [
            {
                "apiVersion": "apps/v1" if owner != "Job" else "batch/v1",
                "kind": owner,
                "name": f"{name}-owner",
                "controller": True,
            }
        ]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "x"}
    if deleted_ago is not None:
        meta["deletionTimestamp"] = (
            (NOW - timedelta(seconds=deleted_ago)).isoformat().replace("+00:00", "Z")
        )
    spec = {"volumes": [{"name": "v", "emptyDir": {}}] if empty_dir else []}
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "spec": spec, "status": {"phase": phase, "conditions": conditions}}


DS_EXISTS = {"ns/ds-owner"}


@pytest.mark.parametrize(
    ("p", "opts", "action", "reason"),
    [
        (pod("rs"), FilterOptions(), Action.EVICT, ""),
        (pod("ds", owner="DaemonSet"), FilterOptions(), Action.BLOCK, DAEMONSET_FATAL),
        (
            pod("ds", owner="DaemonSet"),
            FilterOptions(ignore_daemonsets=True),
            Action.SKIP,
            "ignoring DaemonSet-managed Pods",
        ),
        (pod("ds", owner="DaemonSet", phase="Succeeded"), FilterOptions(), Action.EVICT, ""),
        (
            pod("orphan", owner="DaemonSet"),
            FilterOptions(ignore_daemonsets=True),
            Action.BLOCK,
            'daemonsets.apps "orphan-owner" not found',
        ),
        (pod("orphan", owner="DaemonSet"), FilterOptions(force=True), Action.EVICT, ""),
        (
            pod("static", owner=None, mirror=True),
            FilterOptions(),
            Action.SKIP,
            "mirror (static) pod",
        ),
        (pod("scratch", empty_dir=True), FilterOptions(), Action.BLOCK, LOCAL_STORAGE_FATAL),
        (
            pod("scratch", empty_dir=True),
            FilterOptions(delete_emptydir_data=True),
            Action.EVICT,
            "",
        ),
        (pod("scratch", empty_dir=True, phase="Failed"), FilterOptions(), Action.EVICT, ""),
        (pod("bare", owner=None), FilterOptions(), Action.BLOCK, UNMANAGED_FATAL),
        (pod("bare", owner=None), FilterOptions(force=True), Action.EVICT, ""),
        (pod("bare", owner=None, phase="Succeeded"), FilterOptions(), Action.EVICT, ""),
        (
            pod("old", deleted_ago=30),
            FilterOptions(skip_wait_for_delete_timeout=10),
            Action.SKIP,
            "terminating for longer than --skip-wait-for-delete-timeout",
        ),
        (
            pod("young", deleted_ago=5),
            FilterOptions(skip_wait_for_delete_timeout=10),
            Action.EVICT,
            "",
        ),
        (pod("old", deleted_ago=30), FilterOptions(), Action.EVICT, ""),
        # the first "don't delete" wins: a DaemonSet pod with emptyDir is blocked for the DaemonSet
        (
            pod("ds", owner="DaemonSet", empty_dir=True),
            FilterOptions(),
            Action.BLOCK,
            DAEMONSET_FATAL,
        ),
        # a mirror pod with emptyDir is skipped before local storage is looked at
        (
            pod("static", owner=None, mirror=True, empty_dir=True),
            FilterOptions(),
            Action.SKIP,
            "mirror (static) pod",
        ),
    ],
)
def test_filters_follow_kubectl(
    p: dict[str, Any], opts: FilterOptions, action: Action, reason: str
) -> None:
    [(_, verdict)] = judge_all([pod_facts(p)], opts, DS_EXISTS | {"ns/ds-owner"}, NOW)
    assert (verdict.action, verdict.reason) == (action, reason)


def test_warnings_from_every_filter_are_kept() -> None:
    p = pod("bare-scratch", owner=None, empty_dir=True)
    [(_, v)] = judge_all(
        [pod_facts(p)], FilterOptions(force=True, delete_emptydir_data=True), set(), NOW
    )
    assert v.action is Action.EVICT
    assert v.warnings == (
        "deleting Pods with local storage",
        "deleting Pods that declare no controller",
    )


def test_errors_group_pods_by_reason_in_kubectl_words() -> None:
    judged = judge_all(
        [
            pod_facts(p)
            for p in (pod("a", owner=None), pod("b", owner=None), pod("c", empty_dir=True))
        ],
        FilterOptions(),
        set(),
        NOW,
    )
    assert blocking_errors(judged) == [
        f"cannot delete {UNMANAGED_FATAL}: ns/a, ns/b",
        f"cannot delete {LOCAL_STORAGE_FATAL}: ns/c",
    ]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {"a": "1"}, True),
        (None, {"a": "1"}, False),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "x": "y"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
            {"tier": "b"},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "x"}, False),
        # invalid selectors match nothing (metav1.LabelSelectorAsSelector returns an error)
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": []}]},
            {"tier": "a"},
            False,
        ),
        (
            {"matchExpressions": [{"key": "tier", "operator": "Exists", "values": ["a"]}]},
            {"tier": "a"},
            False,
        ),
        (
            {"matchExpressions": [{"key": "tier", "operator": "Gt", "values": ["1"]}]},
            {"tier": "2"},
            False,
        ),
    ],
)
def test_pdb_selectors(
    selector: dict[str, Any] | None, labels: dict[str, str], matches: bool
) -> None:
    assert selector_matches(selector, labels) is matches


def pdb(name: str, app: str, allowed: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"selector": {"matchLabels": {"app": app}}},
        "status": {
            "disruptionsAllowed": allowed,
            "currentHealthy": 3,
            "desiredHealthy": 3,
            "expectedPods": 3,
        },
    }


def test_plan_names_pdbs_holds_and_workloads_that_lose_every_ready_replica() -> None:
    pods = [pod(f"web-{i}", labels={"app": "web"}) for i in range(2)] + [
        pod("db-0", owner="StatefulSet", labels={"app": "db"})
    ]

    def obj(name: str, ready: int, owner: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "ns"}
        if owner:
            meta["ownerReferences"] = [{"kind": "Deployment", "name": owner, "controller": True}]
        return {"metadata": meta, "status": {"readyReplicas": ready}}

    workloads = WorkloadIndex.from_objects(
        [
            ("ReplicaSet", obj("web-0-owner", 2, owner="web")),
            ("ReplicaSet", obj("web-1-owner", 2, owner="web")),
            ("Deployment", obj("web", 4)),
            ("StatefulSet", obj("db-0-owner", 1)),
        ]
    )
    plan = plan_drain(
        "n1",
        pods,
        FilterOptions(),
        daemonsets=set(),
        pdbs=[pdb("web-pdb", "web", 1), pdb("db-pdb", "db", 0)],
        workloads=workloads,
        now=NOW,
    )
    assert [p.owner for p in plan.pods] == [
        "Deployment/web",
        "Deployment/web",
        "StatefulSet/db-0-owner",
    ]
    assert plan.pods[0].pdbs == ("ns/web-pdb",)
    assert [r.workload for r in plan.at_risk] == [
        "ns/StatefulSet/db-0-owner"
    ]  # web keeps 2 of 4 elsewhere
    assert plan.holds == (
        "PDB ns/db-pdb allows 0 disruptions now: 1 pod(s) will wait for replacements to become ready",
        "PDB ns/web-pdb allows 1 disruption(s) for 2 pod(s): the rest will wait for replacements",
    )
    assert not plan.can_finish_now and not plan.blocked


def test_plan_of_an_empty_node_can_finish_now() -> None:
    plan = plan_drain("n1", [], FilterOptions(), daemonsets=set())
    assert plan.can_finish_now and plan.pods == ()


def test_pods_under_overlapping_pdbs_block_the_drain_unless_eviction_is_disabled() -> None:
    pods = [pod("web-0", labels={"app": "web"}), pod("other", labels={"app": "other"})]
    both = [pdb("a", "web", 1), pdb("b", "web", 1)]
    plan = plan_drain("n1", pods, FilterOptions(), daemonsets=set(), pdbs=both, now=NOW)
    assert plan.blocked
    assert plan.errors == (
        "cannot delete Pods covered by more than one PodDisruptionBudget (ns/a, ns/b), which the "
        "eviction API refuses (make the budgets not overlap, or use --disable-eviction to bypass "
        "them): ns/web-0",
    )
    assert [p.key for p in plan.to_evict] == ["ns/other"]
    deleting = plan_drain(
        "n1", pods, FilterOptions(eviction=False), daemonsets=set(), pdbs=both, now=NOW
    )
    assert not deleting.blocked and len(deleting.to_evict) == 2


def test_a_pod_no_pdb_will_ever_let_go_is_marked_for_surge_when_its_deployment_allows() -> None:
    """Issue 19 (16): stuck PDB (0 allowed, every expected pod healthy) -> the plan says whether
    ``--surge`` can replace the pod first; a StatefulSet's cannot."""
    solo = pod("solo-0", labels={"app": "solo"})
    db = pod("db-0", owner="StatefulSet", labels={"app": "db"})
    rs = {"metadata": {"name": "solo-0-owner", "namespace": "ns",
                       "ownerReferences": [{"kind": "Deployment", "name": "solo", "controller": True}]}}  # fmt: skip
    dep = {"metadata": {"name": "solo", "namespace": "ns"},
           "spec": {"replicas": 1, "strategy": {"type": "RollingUpdate",
                                                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}}  # fmt: skip
    workloads = WorkloadIndex.from_objects(
        [
            ("ReplicaSet", rs),
            ("Deployment", dep),
            ("StatefulSet", {"metadata": {"name": "db-0-owner", "namespace": "ns"}}),
        ]
    )

    def stuck(name: str, app: str) -> dict[str, Any]:
        doc = pdb(name, app, 0)
        doc["status"].update(currentHealthy=1, desiredHealthy=1, expectedPods=1)
        return doc

    args = dict(
        daemonsets=set(),
        pdbs=[stuck("solo", "solo"), stuck("db", "db")],
        workloads=workloads,
        now=NOW,
    )
    plan = plan_drain("n1", [solo, db], FilterOptions(), **args)  # type: ignore[arg-type]
    by = {p.name: p for p in plan.pods}
    assert by["solo-0"].surge_ok and by["solo-0"].deployment == "ns/solo"
    assert not by["db-0"].surge_ok and "owned by StatefulSet/db-0-owner" in by["db-0"].surge
    assert plan.to_surge == ("ns/solo",)
    assert (
        "pod ns/solo-0: PDB ns/solo allows no disruption with all 1 pod(s) healthy: the drain "
        "would wait for ever; --surge replaces it first (a rollout of Deployment ns/solo brings "
        "up 1 new pod(s) before each old one goes)"
    ) in plan.warnings
    surging = plan_drain("n1", [solo, db], FilterOptions(), surge=True, **args)  # type: ignore[arg-type]
    assert not any("--surge replaces" in w for w in surging.warnings)
    assert any("--surge cannot help" in w for w in surging.warnings)
    # A budget that allows 0 now but is waiting for a pod to heal is not stuck: no surge.
    healing = pdb("solo", "solo", 0)
    healing["status"].update(currentHealthy=0, desiredHealthy=1, expectedPods=1)
    waiting = plan_drain("n1", [solo], FilterOptions(), surge=True, daemonsets=set(), pdbs=[healing],
                         workloads=workloads, now=NOW)  # fmt: skip
    assert waiting.to_surge == () and waiting.pods[0].surge == ""
    # A budget whose status is of an older spec (the controller-manager has not looked yet) is
    # not judged stuck either.
    stale = stuck("solo", "solo")
    stale["metadata"]["generation"], stale["status"]["observedGeneration"] = 2, 1
    unknown = plan_drain("n1", [solo], FilterOptions(), surge=True, daemonsets=set(), pdbs=[stale],
                         workloads=workloads, now=NOW)  # fmt: skip
    assert unknown.stuck_pdbs == () and unknown.to_surge == ()
    # One stuck budget over a Deployment's pod and a StatefulSet's: the rollout's headroom
    # would let the StatefulSet's pod be evicted, so neither is surged.
    both = stuck("both", "solo")
    both["spec"]["selector"] = {
        "matchExpressions": [{"key": "app", "operator": "In", "values": ["solo", "db"]}]
    }
    mixed = plan_drain("n1", [solo, db], FilterOptions(), surge=True, daemonsets=set(), pdbs=[both],
                       workloads=workloads, now=NOW)  # fmt: skip
    assert mixed.to_surge == ()
    assert (
        "PDB ns/both also holds ns/db-0, which its rollout would not replace" in mixed.pods[0].surge
    )
