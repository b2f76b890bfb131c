"""Outage prediction rules: tolerations, owners, settings, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubecare.nodes.outage import (
    Fate,
    disruption_notes,
    eviction_delay,
    fate_of,
    outage_report,
    tolerates,
    workload_of,
)
from kubecare.nodes.settings import (
    NOT_READY_TAINT,
    UNREACHABLE_TAINT,
    flags_from_command,
    kubeadm_extra_args,
    resolve_settings,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
UNREACH = {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}
NOTREADY = {"key": NOT_READY_TAINT, "operator": "Exists", "effect": "NoExecute"}


def tol(base: dict[str, Any], seconds: int | None) -> dict[str, Any]:
    return {**base, "tolerationSeconds": seconds} if seconds is not None else dict(base)


@pytest.mark.parametrize(
    ("tolerations", "keys", "delay"),
    [
        ([tol(UNREACH, 300), tol(NOTREADY, 300)], [UNREACHABLE_TAINT], 300),  # the injected default
        ([tol(UNREACH, 0)], [UNREACHABLE_TAINT], 0),
        ([tol(UNREACH, None)], [UNREACHABLE_TAINT], None),  # forever
        ([], [UNREACHABLE_TAINT], 0),  # nothing matches: evicted at once
        (
            [tol(NOTREADY, 300)],
            [UNREACHABLE_TAINT],
            0,
        ),  # the other taint's toleration does not count
        (
            [{"operator": "Exists"}],
            [UNREACHABLE_TAINT],
            None,
        ),  # empty key + Exists tolerates everything
        ([{"operator": "Exists", "effect": "NoSchedule"}], [UNREACHABLE_TAINT], 0),  # wrong effect
        (
            [tol(UNREACH, 600), tol({"operator": "Exists"}, 60)],
            [UNREACHABLE_TAINT],
            60,
        ),  # the smallest wins
        ([tol(UNREACH, 30), tol(NOTREADY, 10)], [UNREACHABLE_TAINT, NOT_READY_TAINT], 10),
        ([tol(UNREACH, -5)], [UNREACHABLE_TAINT], 0),
        (
            [{"key": UNREACHABLE_TAINT, "operator": "Equal", "value": "x", "effect": "NoExecute"}],
            [UNREACHABLE_TAINT],
            0,
        ),
    ],
)
def test_eviction_delay_follows_the_taint_eviction_controller(
    tolerations: list[dict[str, Any]], keys: list[str], delay: int | None
) -> None:
    assert eviction_delay(tolerations, keys) == delay


def test_tolerates_ignores_other_keys() -> None:
    assert not tolerates({"key": "other", "operator": "Exists"}, UNREACHABLE_TAINT)


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
    assert fate_of(kind, "x", taint, delay)[0] is fate


def test_stuck_statefulset_pods_say_what_a_force_delete_means() -> None:
    assert (
        "force-deletes it — safe only if the node is truly dead"
        in fate_of("StatefulSet", "db", UNREACHABLE_TAINT, 30)[1]
    )


def test_deployments_are_named_from_the_pod_template_hash() -> None:
    pod = {
        "metadata": {
            "labels": {"pod-template-hash": "5d9c7"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d9c7", "controller": True}],
        }
    }
    assert workload_of(pod) == ("Deployment", "web")
    assert workload_of({"metadata": {}}) == ("", "")


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


def node(name: str, ready: str, taint_ago: float | None = None) -> dict[str, Any]:
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
    return {
        "metadata": {"name": name},
        "spec": {"taints": taints},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def test_outage_report_counts_down_from_the_taint() -> None:
    settings = resolve_settings(controller_manager_flags=None, apiserver_flags=None, pods=[])
    pods = [
        {
            "metadata": {
                "name": "web-1",
                "namespace": "ns",
                "labels": {"pod-template-hash": "h"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-h", "controller": True}],
            },
            "spec": {"nodeName": "dead", "tolerations": [tol(UNREACH, 300)]},
            "status": {"phase": "Running"},
        },
        {
            "metadata": {"name": "bare", "namespace": "ns"},
            "spec": {"nodeName": "dead", "tolerations": [tol(UNREACH, 60)]},
            "status": {"phase": "Running"},
        },
    ]
    report = outage_report(
        [node("dead", "Unknown", taint_ago=30), node("ok", "True")], pods, settings, NOW
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
    report = outage_report([{"metadata": {"name": "ghost"}}], [], settings, NOW)
    assert [n.node for n in report.nodes] == ["ghost"]


def test_disruption_modes() -> None:
    assert "evicts nothing" in disruption_notes([node("a", "Unknown"), node("b", "False")])[0]
    assert (
        "stops evicting"
        in disruption_notes([node("a", "Unknown"), node("b", "False"), node("c", "True")])[0]
    )
    assert disruption_notes([node("a", "Unknown"), node("b", "True"), node("c", "True")]) == ()
