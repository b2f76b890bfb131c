"""The taint eviction controller's rules, ported from Kubernetes' own table tests (v1.37.2).

Sources (Go module cache after `make setup`):
- k8s.io/api core/v1/toleration_test.go  TestTolerationToleratesTaint
- k8s.io/component-helpers scheduling/corev1/helpers_test.go  TestFindMatchingUntoleratedTaint
- k8s.io/kubernetes pkg/controller/tainteviction/taint_eviction_test.go  TestGetMinTolerationTime,
  TestCreatePod, TestUpdateNode, TestUpdateNodeWithMultipleTaints, TestUpdateNodeWithMultiplePods

The Lt/Gt toleration operators sit behind the alpha TaintTolerationComparisonOperators gate, off by
default (pkg/features/kube_features.go), so kubecare predicts with the gate off: those cases of the
Go tables that run with the gate on are ported with the gate-off answer, which is "no match".
"""

from __future__ import annotations

from typing import Any

import pytest

from kubecare.nodes.outage import (
    eviction_delay,
    matching_tolerations,
    min_toleration_seconds,
    tolerates_taint,
)

D = dict[str, Any]

# (toleration, taint, comparison gate on in the Go test, expected in Go)
TOLERATES_TAINT_CASES: list[tuple[D, D, bool, bool]] = [
    (
        {"key": "foo", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "foo", "effect": "NoSchedule"},
        False,
        True,
    ),
    (
        {"key": "foo", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "foo", "value": "bar", "effect": "NoSchedule"},
        False,
        True,
    ),
    (
        {"key": "", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "foo", "value": "bar", "effect": "NoSchedule"},
        False,
        True,
    ),
    (
        {"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"},
        {"key": "foo", "value": "bar", "effect": "NoSchedule"},
        False,
        True,
    ),
    (
        {"key": "foo", "operator": "Equal", "value": "value1", "effect": "NoSchedule"},
        {"key": "foo", "value": "value2", "effect": "NoSchedule"},
        False,
        False,
    ),
    (
        {"key": "foo", "operator": "Equal", "value": "bar", "effect": "NoSchedule"},
        {"key": "foo", "value": "bar", "effect": "NoExecute"},
        False,
        False,
    ),
    (
        {"key": "node.kubernetes.io/sla", "operator": "Gt", "value": "950", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/sla", "value": "800", "effect": "NoSchedule"},
        True,
        False,
    ),
    (
        {"key": "node.kubernetes.io/sla", "operator": "Gt", "value": "750", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/sla", "value": "950", "effect": "NoSchedule"},
        True,
        True,
    ),
    (
        {"key": "node.kubernetes.io/sla", "operator": "Lt", "value": "800", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/sla", "value": "950", "effect": "NoSchedule"},
        True,
        False,
    ),
    (
        {"key": "node.kubernetes.io/sla", "operator": "Lt", "value": "950", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/sla", "value": "800", "effect": "NoSchedule"},
        True,
        True,
    ),
    (
        {"key": "node.kubernetes.io/sla", "operator": "Gt", "value": "950", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/sla", "value": "950", "effect": "NoSchedule"},
        True,
        False,
    ),
    (
        {"key": "node.kubernetes.io/sla", "operator": "Gt", "value": "950", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/sla", "value": "high", "effect": "NoSchedule"},
        True,
        False,
    ),
    (
        {"key": "test-key", "operator": "Gt", "value": "-100", "effect": "NoSchedule"},
        {"key": "test-key", "value": "-200", "effect": "NoSchedule"},
        True,
        False,
    ),
    (
        {
            "key": "test-key",
            "operator": "Gt",
            "value": "9223372036854775806",
            "effect": "NoSchedule",
        },
        {"key": "test-key", "value": "100", "effect": "NoSchedule"},
        True,
        False,
    ),
]


@pytest.mark.parametrize(("toleration", "taint", "gate_on", "expected"), TOLERATES_TAINT_CASES)
def test_toleration_tolerates_taint(toleration: D, taint: D, gate_on: bool, expected: bool) -> None:
    assert tolerates_taint(toleration, taint) is (expected and not gate_on)


# (tolerations, taints, only NoExecute taints considered, tolerated) — gate-off cases of
# TestFindMatchingUntoleratedTaint; the controller only ever passes NoExecute taints.
FIND_UNTOLERATED_CASES: list[tuple[list[D], list[D], bool, bool]] = [
    ([], [], False, True),
    ([{"key": "foo", "operator": "Exists", "effect": "NoSchedule"}], [], False, True),
    (
        [{"key": "foo", "operator": "Exists", "effect": "NoSchedule"}],
        [{"key": "foo", "effect": "NoSchedule"}],
        False,
        True,
    ),
    (
        [{"key": "foo", "operator": "Exists", "effect": "NoSchedule"}],
        [{"key": "bar", "effect": "NoSchedule"}],
        False,
        False,
    ),
    (
        [{"key": "foo", "operator": "Exists", "effect": "NoExecute"}],
        [{"key": "foo", "effect": "NoExecute"}, {"key": "bar", "effect": "NoSchedule"}],
        True,
        True,
    ),
]


@pytest.mark.parametrize(
    ("tolerations", "taints", "no_execute_only", "tolerated"), FIND_UNTOLERATED_CASES
)
def test_every_taint_needs_a_matching_toleration(
    tolerations: list[D], taints: list[D], no_execute_only: bool, tolerated: bool
) -> None:
    if no_execute_only:
        taints = [t for t in taints if t["effect"] == "NoExecute"]
    assert matching_tolerations(taints, tolerations)[0] is tolerated


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [([], 0), ([None], -1), ([1, 2], 1), ([1, None], 1), ([None, 1], 1)],
)
def test_min_toleration_time(seconds: list[int | None], expected: int) -> None:
    tolerations = [{} if s is None else {"tolerationSeconds": s} for s in seconds]
    assert min_toleration_seconds(tolerations) == expected


def taint(i: int) -> D:
    """taint_eviction_test.go's helper: testTaint<i>=test<i>:NoExecute."""
    return {"key": f"testTaint{i}", "value": f"test{i}", "effect": "NoExecute"}


def tol(i: int, seconds: int) -> D:
    """taint_eviction_test.go's helper: Equal toleration of taint(i); seconds < 0 means none."""
    t: D = {"key": f"testTaint{i}", "value": f"test{i}", "effect": "NoExecute", "operator": ""}
    if seconds >= 0:
        t["tolerationSeconds"] = seconds
    return t


# (tolerations, node taints, seconds until eviction: 0 at once, None never) from TestCreatePod,
# TestCreateNode, TestUpdateNode and TestUpdateNodeWithMultiplePods.
CONTROLLER_CASES: list[tuple[str, list[D], list[D], int | None]] = [
    ("CreatePod 3: no tolerations, tainted node", [], [taint(1)], 0),
    ("CreatePod 4: tolerated for 100s", [tol(1, 100)], [taint(1)], 100),
    ("CreatePod 5: tolerated forever", [tol(1, -1)], [taint(1)], None),
    ("CreatePod 6: toleration of another taint", [tol(2, -1)], [taint(1)], 0),
    ("UpdateNode 3: second taint not tolerated", [tol(1, 100)], [taint(1), taint(2)], 0),
    (
        "UpdateNode 5: the shortest used toleration",
        [tol(1, 1), tol(2, 100)],
        [taint(1), taint(2)],
        1,
    ),
    ("MultiplePods 1: pod2", [tol(1, 1)], [taint(1)], 1),
    (
        "MultiplePods 2: pod3 forever for taint 1, but taint 2",
        [tol(1, -1)],
        [taint(1), taint(2)],
        0,
    ),
]


@pytest.mark.parametrize(("name", "tolerations", "taints", "delay"), CONTROLLER_CASES)
def test_eviction_delay_like_the_controller(
    name: str, tolerations: list[D], taints: list[D], delay: int | None
) -> None:
    assert eviction_delay(tolerations, taints) == delay, name


def test_multiple_taints_forever_then_sixty_seconds_then_forever_again() -> None:
    """TestUpdateNodeWithMultipleTaints: one toleration without seconds, one with 60."""
    tolerations = [
        {"key": "testTaint1", "operator": "Exists", "effect": "NoExecute"},
        {"key": "testTaint2", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ]
    assert eviction_delay(tolerations, [taint(1)]) is None
    assert eviction_delay(tolerations, [taint(1), taint(2)]) == 60
    assert eviction_delay(tolerations, [taint(1)]) is None


def test_the_first_matching_toleration_counts_not_the_shortest() -> None:
    """GetMatchingTolerations takes, per taint, the first toleration in the pod's order; a later,
    shorter one that also matches is not used (an earlier kubecare took the minimum of all)."""
    unreachable = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    tolerations = [
        {
            "key": "node.kubernetes.io/unreachable",
            "operator": "Exists",
            "effect": "NoExecute",
            "tolerationSeconds": 600,
        },
        {"operator": "Exists", "tolerationSeconds": 60},
    ]
    assert eviction_delay(tolerations, [unreachable]) == 600
    assert eviction_delay(list(reversed(tolerations)), [unreachable]) == 60


def test_negative_or_zero_seconds_mean_at_once() -> None:
    assert eviction_delay([tol(1, 0)], [taint(1)]) == 0
    assert min_toleration_seconds([{"tolerationSeconds": -5}, {"tolerationSeconds": 30}]) == 0
