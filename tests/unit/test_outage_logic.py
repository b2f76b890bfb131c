"""Outage prediction rules: tolerations, owners, settings, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubecare.nodes.outage import (
    Fate,
    ZoneState,
    compute_zone_state,
    eviction_delay,
    fate_of,
    outage_report,
    zone_key,
    zone_states,
)
from kubecare.nodes.settings import (
    NOT_READY_TAINT,
    UNREACHABLE_TAINT,
    flags_from_command,
    kubeadm_extra_args,
    resolve_settings,
)
from kubecare.nodes.workloads import Workload, WorkloadIndex

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
UNREACH = {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}
NOTREADY = {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}


def tol(base: dict[str, Any], seconds: int | None) -> dict[str, Any]:
    return {**base, "tolerationSeconds": seconds} if seconds is not None else dict(base)


def outage_taint(key: str) -> dict[str, Any]:
    return {"key": key, "effect": "NoExecute"}


@pytest.mark.parametrize(
    ("tolerations", "keys", "delay"),
    [
        ([tol(UNREACH, 300), tol(NOTREADY, 300)], [UNREACHABLE_TAINT], 300),  # the injected default
        ([tol(UNREACH, None)], [UNREACHABLE_TAINT], None),  # forever
        ([], [UNREACHABLE_TAINT], 0),  # nothing matches: evicted at once
        ([tol(NOTREADY, 300)], [UNREACHABLE_TAINT], 0),  # the other taint's toleration
        ([{"operator": "Exists"}], [UNREACHABLE_TAINT], None),  # empty key + Exists: everything
        ([{"operator": "Exists", "effect": "NoSchedule"}], [UNREACHABLE_TAINT], 0),  # wrong effect
        ([tol(UNREACH, 30), tol(NOTREADY, 10)], [UNREACHABLE_TAINT, NOT_READY_TAINT], 10),
        (
            [{"key": UNREACHABLE_TAINT, "operator": "Equal", "value": "x", "effect": "NoExecute"}],
            [UNREACHABLE_TAINT],
            0,
        ),
    ],
)
def test_eviction_delay_for_outage_taints(
    tolerations: list[dict[str, Any]], keys: list[str], delay: int | None
) -> None:
    assert eviction_delay(tolerations, [outage_taint(k) for k in keys]) == delay


@pytest.mark.parametrize(
    ("kind", "taint", "delay", "fate"),
    [
        ("Deployment", UNREACHABLE_TAINT, 300, Fate.RECREATED),
        ("Job", UNREACHABLE_TAINT, 300, Fate.RECREATED),
        ("StatefulSet", UNREACHABLE_TAINT, 300, Fate.STUCK),
        ("StatefulSet", NOT_READY_TAINT, 300, Fate.RECREATED),
        ("DaemonSet", UNREACHABLE_TAINT, None, Fate.STAYS),
        ("", UNREACHABLE_TAINT, 300, Fate.LOST),
        ("Deployment", UNREACHABLE_TAINT, None, Fate.STAYS),
        ("MyOperatorKind", UNREACHABLE_TAINT, 300, Fate.UNKNOWN),
    ],
)
def test_fates_by_owner(kind: str, taint: str, delay: int | None, fate: Fate) -> None:
    workload = Workload("ns", kind, "x") if kind else None
    assert fate_of(workload, taint, delay)[0] is fate


def test_stuck_statefulset_pods_say_what_a_force_delete_means() -> None:
    assert (
        "force-deletes it — safe only if the node is truly dead"
        in fate_of(Workload("ns", "StatefulSet", "db"), UNREACHABLE_TAINT, 30)[1]
    )


def test_workloads_follow_the_owner_chain_not_the_name() -> None:
    rs = {
        "metadata": {
            "name": "web-5d9c7",
            "namespace": "ns",
            "ownerReferences": [{"kind": "Deployment", "name": "frontend", "controller": True}],
        }
    }
    index = WorkloadIndex.from_objects([("ReplicaSet", rs)])
    pod = {
        "metadata": {
            "namespace": "ns",
            "labels": {"pod-template-hash": "5d9c7"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d9c7", "controller": True}],
        }
    }
    assert index.workload_of(pod) == Workload("ns", "Deployment", "frontend")
    # An unknown ReplicaSet stays a ReplicaSet: no guessing from its name.
    assert WorkloadIndex().workload_of(pod) == Workload("ns", "ReplicaSet", "web-5d9c7")
    assert index.workload_of({"metadata": {}}) is None


def test_flags_from_a_static_pod_command() -> None:
    cmd = [
        "kube-controller-manager",
        "--node-monitor-grace-period=20s",
        "--leader-elect",
        "true",
        "--v=2",
    ]
    assert flags_from_command(cmd) == {
        "node-monitor-grace-period": "20s",
        "leader-elect": "true",
        "v": "2",
    }


def test_kubeadm_extra_args_in_both_formats() -> None:
    v4 = "apiServer:\n  extraArgs:\n  - name: default-unreachable-toleration-seconds\n    value: '60'\n"
    v3 = "controllerManager:\n  extraArgs:\n    node-monitor-grace-period: 30s\n"
    assert kubeadm_extra_args(v4) == {"apiServer": {"default-unreachable-toleration-seconds": "60"}}
    assert kubeadm_extra_args(v3) == {"controllerManager": {"node-monitor-grace-period": "30s"}}
    assert kubeadm_extra_args(": bad yaml [") == {}


def test_go_durations_and_odd_values_in_component_flags() -> None:
    s = resolve_settings(
        controller_manager_flags={"node-monitor-grace-period": "1m0s"},
        apiserver_flags={"default-unreachable-toleration-seconds": "x"},
        pods=[],
    )
    assert s.node_monitor_grace_period.seconds == 60
    assert s.unreachable_toleration.assumed  # a malformed flag value is not trusted
    odd = resolve_settings(
        controller_manager_flags={"node-monitor-grace-period": "soon"},
        apiserver_flags=None,
        pods=[],
    )
    assert odd.node_monitor_grace_period.assumed


def test_settings_say_where_they_come_from() -> None:
    assumed = resolve_settings(controller_manager_flags=None, apiserver_flags=None, pods=[])
    assert (
        assumed.node_monitor_grace_period.seconds == 50
        and assumed.node_monitor_grace_period.assumed
    )
    assert (
        assumed.unreachable_toleration.seconds == 300
        and "assumed default (300s)" in assumed.unreachable_toleration.source
    )
    pods = [{"spec": {"tolerations": [tol(UNREACH, 15), tol(NOTREADY, 15)]}}] * 3
    seen = resolve_settings(
        controller_manager_flags={"node-monitor-grace-period": "10s"},
        apiserver_flags=None,
        pods=pods,
        controller_manager_source="kubeadm-config",
    )
    assert (seen.node_monitor_grace_period.seconds, seen.node_monitor_grace_period.source) == (
        10,
        "kube-controller-manager flag (kubeadm-config)",
    )
    assert (seen.unreachable_toleration.seconds, seen.unreachable_toleration.source) == (
        15,
        "injected into 3 running pod(s) by DefaultTolerationSeconds",
    )


def node(
    name: str,
    ready: str | None,
    taint_ago: float | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    taints = []
    if taint_ago is not None:
        taints = [
            {
                "key": UNREACHABLE_TAINT,
                "effect": "NoExecute",
                "timeAdded": (NOW - timedelta(seconds=taint_ago))
                .isoformat()
                .replace("+00:00", "Z"),
            }
        ]
    conditions = [{"type": "Ready", "status": ready}] if ready else []
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints},
        "status": {"conditions": conditions},
    }


def test_outage_report_counts_down_from_the_taint() -> None:
    settings = resolve_settings(controller_manager_flags=None, apiserver_flags=None, pods=[])
    pods = [
        {
            "metadata": {
                "name": "web-1",
                "namespace": "ns",
                "uid": "u1",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-h", "controller": True}],
            },
            "spec": {"nodeName": "dead", "tolerations": [tol(UNREACH, 300)]},
            "status": {"phase": "Running"},
        },
        {
            "metadata": {"name": "bare", "namespace": "ns", "uid": "u2"},
            "spec": {"nodeName": "dead", "tolerations": [tol(UNREACH, 60)]},
            "status": {"phase": "Running"},
        },
    ]
    rs = {
        "metadata": {
            "name": "web-h",
            "namespace": "ns",
            "ownerReferences": [{"kind": "Deployment", "name": "web", "controller": True}],
        }
    }
    report = outage_report(
        [node("dead", "Unknown", taint_ago=30), node("ok", "True"), node("ok2", "True")],
        pods,
        settings,
        workloads=WorkloadIndex.from_objects([("ReplicaSet", rs)]),
        now=NOW,
    )
    [n] = report.nodes
    assert n.node == "dead" and n.condition == "Unknown (unreachable)"
    by_name = {p.name: p for p in n.pods}
    assert by_name["bare"].seconds_left == 30 and by_name["bare"].fate is Fate.LOST
    assert by_name["web-1"].seconds_left == 270 and by_name["web-1"].fate is Fate.RECREATED
    assert by_name["web-1"].toleration_source == "default (DefaultTolerationSeconds)"
    assert n.workloads_without_ready_replica == ("ns/Deployment/web",)
    assert [p.name for p in n.pods] == ["bare", "web-1"]  # soonest first


def test_a_node_without_status_is_shown_not_a_crash() -> None:
    settings = resolve_settings(controller_manager_flags=None, apiserver_flags=None, pods=[])
    report = outage_report([{"metadata": {"name": "ghost"}}], [], settings, now=NOW)
    assert [n.node for n in report.nodes] == ["ghost"]


# topology.GetZoneKey's table (k8s.io/component-helpers node/topology/helpers_test.go)
ZONE_KEY_CASES = [
    ({}, ""),
    (
        {
            "failure-domain.beta.kubernetes.io/zone": "zone1",
            "failure-domain.beta.kubernetes.io/region": "region1",
        },
        "region1:\x00:zone1",
    ),
    (
        {"topology.kubernetes.io/zone": "zone1", "topology.kubernetes.io/region": "region1"},
        "region1:\x00:zone1",
    ),
    (
        {
            "topology.kubernetes.io/zone": "zone1",
            "topology.kubernetes.io/region": "region1",
            "failure-domain.beta.kubernetes.io/zone": "zone1",
            "failure-domain.beta.kubernetes.io/region": "region1",
        },
        "region1:\x00:zone1",
    ),
    (
        {
            "topology.kubernetes.io/zone": "zone1",
            "topology.kubernetes.io/region": "region1",
            "failure-domain.beta.kubernetes.io/zone": "zone2",
            "failure-domain.beta.kubernetes.io/region": "region2",
        },
        "region2:\x00:zone2",
    ),
]


@pytest.mark.parametrize(("labels", "key"), ZONE_KEY_CASES)
def test_zone_key(labels: dict[str, str], key: str) -> None:
    assert zone_key({"metadata": {"labels": labels}}) == key


# ComputeZoneState on the Ready statuses of a zone (threshold 0.55), the states the pass-2 rows
# of TestMonitorNodeHealth (node_lifecycle_controller_test.go) expect; None = no Ready condition.
@pytest.mark.parametrize(
    ("ready", "state"),
    [
        (["True"], ZoneState.NORMAL),
        (["Unknown"], ZoneState.FULL),
        ([None] * 4, ZoneState.FULL),  # nil Ready conditions count as not ready
        (["Unknown", "Unknown", "Unknown", "True"], ZoneState.PARTIAL),  # 3 > 2 and 3/4 >= 0.55
        (["Unknown", "Unknown", "True", "True", "True"], ZoneState.NORMAL),  # only 2 not ready
        (["Unknown", "Unknown", "Unknown", "True", "True"], ZoneState.PARTIAL),  # 3/5 = 0.6
        (["Unknown", "Unknown", "True"], ZoneState.NORMAL),
        (["Unknown", "Unknown", "Unknown"], ZoneState.FULL),
        (["False", "Unknown", None, "True", "True", "True"], ZoneState.NORMAL),  # 3/6 < 0.55
    ],
)
def test_compute_zone_state(ready: list[str | None], state: ZoneState) -> None:
    assert compute_zone_state(ready, 0.55)[1] is state


Z1 = {"topology.kubernetes.io/region": "region1", "topology.kubernetes.io/zone": "zone1"}
Z2 = {"topology.kubernetes.io/region": "region1", "topology.kubernetes.io/zone": "zone2"}


def test_one_dead_zone_among_healthy_ones_is_tainted_at_the_normal_rate() -> None:
    """TestMonitorNodeHealth "all the Nodes in one zone are down": zone1 Full, zone2 Normal."""
    zones = zone_states(
        [node("node0", "Unknown", labels=Z1), node("node1", "True", labels=Z2)],
        threshold=0.55,
        large_cluster=50,
    )
    assert {z.zone: z.state for z in zones.values()} == {
        "region1/zone1": ZoneState.FULL,
        "region1/zone2": ZoneState.NORMAL,
    }
    assert "tainting goes on at the normal rate" in zones["region1:\x00:zone1"].tainting


def test_every_zone_down_stops_all_evictions() -> None:
    zones = zone_states(
        [node("node0", "Unknown", labels=Z1), node("node1", "Unknown", labels=Z2)],
        threshold=0.55,
        large_cluster=50,
    )
    assert all("stops all evictions" in z.tainting for z in zones.values())


def test_the_exclude_disruption_label_takes_a_node_out_of_its_zone() -> None:
    """TestMonitorNodeHealth "the only available Node has the exclude-disruption label"."""
    zones = zone_states(
        [
            node("node0", "Unknown", labels=Z1),
            node("node-master", "True", labels={**Z1, "node.kubernetes.io/exclude-disruption": ""}),
        ],
        threshold=0.55,
        large_cluster=50,
    )
    assert [z.state for z in zones.values()] == [ZoneState.FULL]


def test_partial_disruption_stops_tainting_in_small_zones_only() -> None:
    small = [node(f"n{i}", "Unknown") for i in range(3)] + [node("n3", "True")]
    [z] = zone_states(small, threshold=0.55, large_cluster=50).values()
    assert z.state is ZoneState.PARTIAL and "tainting in this zone stops" in z.tainting
    large = [node(f"n{i}", "Unknown") for i in range(40)] + [
        node(f"r{i}", "True") for i in range(20)
    ]
    [z] = zone_states(large, threshold=0.55, large_cluster=50).values()
    assert "slows to the secondary rate" in z.tainting


def test_a_paused_zone_is_reported_and_its_untainted_nodes_are_not_counted_down() -> None:
    settings = resolve_settings(controller_manager_flags=None, apiserver_flags=None, pods=[])
    nodes = [node(f"n{i}", "Unknown") for i in range(3)] + [node("n3", "True")]
    pods = [
        {
            "metadata": {"name": "bare", "namespace": "ns", "uid": "u"},
            "spec": {"nodeName": "n0", "tolerations": [tol(UNREACH, 60)]},
            "status": {"phase": "Running"},
        }
    ]
    report = outage_report(nodes, pods, settings, now=NOW)
    n0 = next(n for n in report.nodes if n.node == "n0")
    assert n0.tainting_paused and n0.pods[0].evict_at is None
    assert any("partial disruption" in note for note in report.notes)


def test_with_every_zone_down_even_tainted_nodes_are_not_counted_down() -> None:
    """handleDisruption: all zones fully disrupted -> markNodeAsReachable removes the outage
    taints and tainting stops, so no pod is evicted, tainted node or not."""
    settings = resolve_settings(controller_manager_flags=None, apiserver_flags=None, pods=[])
    pods = [
        {
            "metadata": {"name": "bare", "namespace": "ns", "uid": "u"},
            "spec": {"nodeName": "a", "tolerations": [tol(UNREACH, 60)]},
            "status": {"phase": "Running"},
        }
    ]
    report = outage_report(
        [node("a", "Unknown", taint_ago=30), node("b", "Unknown")], pods, settings, now=NOW
    )
    a = next(n for n in report.nodes if n.node == "a")
    assert a.pods[0].evict_at is None and "paused" in a.pods[0].detail
    assert any("stops all evictions" in n for n in report.notes)
