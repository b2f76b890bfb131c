from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kubecare.errors import UsageError
from kubecare.nodes.cordon import plan_cordon
from kubecare.nodes.inventory import summarize_nodes
from kubecare.nodes.select import validate_selection


def node(
    name: str,
    *,
    ready: str | None = "True",
    unschedulable: bool = False,
    roles: tuple[str, ...] = (),
    taints: list[dict[str, str]] | None = None,
) -> dict[str, object]:
    conditions = [] if ready is None else [{"type": "Ready", "status": ready}]
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": "2026-11-26T10:00:00Z",
            "labels": {f"node-role.kubernetes.io/{r}": "" for r in roles},
        },
        "spec": {"unschedulable": unschedulable, "taints": taints or []},
        "status": {"conditions": conditions, "nodeInfo": {"kubeletVersion": "v1.37.2"}},
    }


def pod(node_name: str, phase: str = "Running") -> dict[str, object]:
    return {"spec": {"nodeName": node_name}, "status": {"phase": phase}}


def test_plan_marks_only_nodes_that_need_a_change() -> None:
    plan = plan_cordon([node("a"), node("b", unschedulable=True)], unschedulable=True)
    assert [(c.node, c.needed) for c in plan.changes] == [("a", True), ("b", False)]
    back = plan_cordon([node("a"), node("b", unschedulable=True)], unschedulable=False)
    assert [(c.node, c.needed) for c in back.changes] == [("a", False), ("b", True)]


@pytest.mark.parametrize(
    ("ready", "unschedulable", "status"),
    [
        ("True", False, "Ready"),
        ("False", False, "NotReady"),
        ("Unknown", False, "Unknown"),
        (None, False, "Unknown"),  # a node that never reported
        ("True", True, "Ready,SchedulingDisabled"),
    ],
)
def test_status_column_reads_like_kubectl(
    ready: str | None, unschedulable: bool, status: str
) -> None:
    [row] = summarize_nodes([node("n", ready=ready, unschedulable=unschedulable)], [])
    assert row.status == status
    assert row.schedulable is not unschedulable


def test_rows_count_running_pods_roles_taints_and_age() -> None:
    nodes = [
        node(
            "cp",
            roles=("control-plane",),
            taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        ),
        node("w1", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoExecute"}]),
    ]
    pods = [pod("w1"), pod("w1"), pod("w1", "Succeeded"), pod("cp", "Failed"), pod("cp", "Pending")]
    now = datetime(2026, 11, 26, 11, 0, tzinfo=UTC)
    cp, w1 = summarize_nodes(nodes, pods, now)
    assert (cp.roles, cp.pods, cp.taints) == (
        ("control-plane",),
        1,
        ("node-role.kubernetes.io/control-plane:NoSchedule",),
    )
    assert (w1.roles, w1.pods, w1.taints) == ((), 2, ("dedicated=gpu:NoExecute",))
    assert cp.age_seconds == 3600


@pytest.mark.parametrize(
    ("names", "selector", "message"),
    [
        (["a"], "x=y", "not both"),
        ([], None, "name at least one node"),
        ([], "", "name at least one node"),
        ([], "a=b;rm", "invalid label selector"),
    ],
)
def test_selection_errors_are_usage_errors(
    names: list[str], selector: str | None, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        validate_selection(names, selector)


def test_valid_selections_pass() -> None:
    validate_selection(["a", "b"], None)
    validate_selection([], "node-role.kubernetes.io/control-plane")
    validate_selection([], "!node-role.kubernetes.io/control-plane,zone in (a,b)")
