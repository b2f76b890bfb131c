"""Node outages against the real node lifecycle and taint eviction controllers.

The session sandbox runs with a 10 s node-monitor grace period and 15 s default tolerations. One
test node of six goes silent (its kwok stops), so the controller is in normal mode (it stops
evicting when every node is down and slows when most are).
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta

import pytest

from kubecare.kube import Kube
from kubecare.kube.objects import parse_time
from kubecare.nodes.cordon import set_unschedulable
from kubecare.nodes.outage import Fate, outage_report
from kubecare.nodes.settings import UNREACHABLE_TAINT
from kubecare.nodes.snapshot import take_snapshot
from kubecare.sandbox import Sandbox

from .conftest import EVICTION_SECONDS, GRACE_SECONDS, run_cli
from .workloads import (
    Pool,
    apply,
    cordoned,
    daemonset,
    deployment,
    pdb,
    pod,
    pods,
    statefulset,
    wait_for,
    wait_running,
)

pytestmark = pytest.mark.e2e


def with_toleration(spec: dict[str, object], seconds: int | None) -> dict[str, object]:
    t: dict[str, object] = {"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}
    if seconds is not None:
        t["tolerationSeconds"] = seconds
    return {**spec, "tolerations": [*spec["tolerations"], t]}  # type: ignore[list-item]


async def outage_scenario(kube: Kube, ns: str, pool: Pool) -> None:
    # The default 30 s grace period, as real pods have: evicted pods on a silent node then stay
    # Terminating (nobody confirms their end), instead of vanishing at once as grace-0 pods do.
    spec = pool.pod_spec(extra={"terminationGracePeriodSeconds": 30})
    await apply(
        kube,
        ns,
        deployment("web", 2, spec),
        statefulset("db", 1, spec),
        daemonset("agent", spec),
        pod(
            "lonely", pool.pod_spec(node=pool.nodes[0], extra={"terminationGracePeriodSeconds": 30})
        ),
        deployment("fast", 1, with_toleration(spec, 0)),
        deployment("patient", 1, with_toleration(spec, 3600)),
        deployment("forever", 1, with_toleration(spec, None)),
    )
    await wait_running(
        kube, ns, 9
    )  # web x2, db, agent x2 (one per pool node), lonely, fast, patient, forever
    await set_unschedulable(kube, pool.nodes[1], False)


def role(p: dict[str, object]) -> str:
    return str(p["metadata"]["labels"]["role"])  # type: ignore[index]


async def test_predicted_evictions_match_the_controller_and_fates_come_true(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    dead = pool.nodes[0]
    await outage_scenario(kube, namespace, pool)
    before = {role(p): p for p in await pods(kube, namespace) if p["spec"]["nodeName"] == dead}
    await sandbox.node_down(dead)
    try:

        async def tainted() -> bool:
            n = await kube.get_json(f"/api/v1/nodes/{dead}")
            return any(t["key"] == UNREACHABLE_TAINT for t in n["spec"].get("taints") or [])

        await wait_for(tainted, timeout=GRACE_SECONDS + 30)
        snap = await take_snapshot(kube)
        assert snap.settings.unreachable_toleration.seconds == EVICTION_SECONDS
        assert snap.settings.node_monitor_grace_period.seconds == GRACE_SECONDS
        # read from the controller-manager's mirror pod, as on any kubeadm cluster
        assert (
            snap.settings.node_monitor_grace_period.source
            == "kube-controller-manager flag (static pod)"
        )
        report = outage_report(snap.nodes, snap.pods, snap.settings, workloads=snap.workloads)
        [outage] = [n for n in report.nodes if n.node == dead]
        assert outage.condition.startswith("Unknown")
        predicted = {p.name: p for p in outage.pods if p.namespace == namespace}
        by_role = {role(before[r]): predicted[before[r]["metadata"]["name"]] for r in before}
        assert (
            by_role["web"].fate is Fate.RECREATED
            and by_role["web"].toleration_seconds == EVICTION_SECONDS
        )
        assert by_role["db"].fate is Fate.STUCK
        assert by_role["lonely"].fate is Fate.LOST
        assert by_role["agent"].fate is Fate.STAYS
        assert by_role["forever"].fate is Fate.STAYS
        assert by_role["fast"].toleration_seconds == 0
        assert by_role["patient"].toleration_seconds == 3600
        assert f"{namespace}/StatefulSet/db" in outage.workloads_without_ready_replica

        # The CLI shows the same, with a countdown.
        res = run_cli("outage", "-o", "json", kubeconfig=sandbox.kubeconfig)
        assert res.returncode == 0, res.stderr
        assert dead in [n["node"] for n in json.loads(res.stdout)["nodes"]]
        table = run_cli("outage", kubeconfig=sandbox.kubeconfig)
        assert f"node/{dead}: Unknown (unreachable)" in table.stdout and "in " in table.stdout

        # Wait for the controller, then compare its eviction times with the predictions.
        async def evicted() -> dict[str, datetime] | None:
            now = {  # the dead node's pods (their replacements may not be scheduled yet)
                role(p): p for p in await pods(kube, namespace) if p["spec"].get("nodeName") == dead
            }
            done = {}
            for r, p in now.items():
                mark = parse_time(p["metadata"].get("deletionTimestamp"))
                if mark is not None:  # deletionTimestamp = eviction time + the pod's grace period
                    done[r] = mark - timedelta(
                        seconds=int(p["metadata"].get("deletionGracePeriodSeconds") or 0)
                    )
            return done if {"web", "db", "lonely", "fast"} <= set(done) else None

        actual = await wait_for(evicted, timeout=EVICTION_SECONDS + 30, interval=0.5)
        for r in ("web", "db", "lonely", "fast"):
            want = by_role[r].evict_at
            assert want is not None
            assert abs((actual[r] - want).total_seconds()) <= 4, (r, actual[r], want)
        assert {"agent", "forever", "patient"}.isdisjoint(actual)

        # Fates: replacements for web and fast on the other node; nothing for lonely; db stuck.
        async def replaced() -> bool:
            elsewhere = [
                role(p)
                for p in await pods(kube, namespace)
                if p["spec"].get("nodeName") == pool.nodes[1]
                and p["status"].get("phase") == "Running"
            ]
            return elsewhere.count("web") == 2 and "fast" in elsewhere

        await wait_for(replaced, timeout=30)
        await asyncio.sleep(5)
        everywhere = await pods(kube, namespace)
        assert [role(p) for p in everywhere].count(
            "lonely"
        ) == 1  # the old one, Terminating: gone for good
        db = [p for p in everywhere if role(p) == "db"]
        assert (
            len(db) == 1
            and db[0]["spec"]["nodeName"] == dead
            and db[0]["metadata"].get("deletionTimestamp")
        )
        res = run_cli("outage", "-o", "json", kubeconfig=sandbox.kubeconfig)
        dbs = [
            p
            for n in json.loads(res.stdout)["nodes"]
            for p in n["pods"]
            if p["name"] == "db-0" and p["namespace"] == namespace
        ]
        assert dbs[0]["fate"] == "stuck" and dbs[0]["terminating"] is True
    finally:
        await sandbox.node_up(dead)

    async def cleared() -> bool:
        snap = await take_snapshot(kube)
        return dead not in [
            n.node for n in outage_report(snap.nodes, snap.pods, snap.settings).nodes
        ]

    assert await wait_for(cleared, timeout=30)
    res = run_cli("nodes", "--wide", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 0 and f"node/{dead}" not in res.stdout


async def test_risk_shows_the_blast_radius_of_a_node(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await apply(
        kube,
        namespace,
        deployment("web", 2, pool.pod_spec()),
        statefulset("db", 1, pool.pod_spec()),
        pod(
            "lonely",
            pool.pod_spec(
                node=pool.nodes[0],
                extra={
                    "volumes": [
                        {"name": "scratch", "emptyDir": {}},
                        {"name": "logs", "hostPath": {"path": "/var/log/x"}},
                    ]
                },
            ),
        ),
        pdb("web", {"app": "web"}, min_available=2),
    )
    await wait_running(kube, namespace, 4)

    async def pdb_seen() -> bool:
        st = (
            await kube.get_json(f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/web")
        ).get("status") or {}
        return st.get("currentHealthy") == 2

    await wait_for(pdb_seen)
    res = run_cli("risk", pool.nodes[0], "-o", "json", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 0, res.stderr
    [r] = json.loads(res.stdout)["nodes"]
    assert r["lost_for_good"] == [f"{namespace}/lonely"]
    assert {f"{namespace}/Deployment/web", f"{namespace}/StatefulSet/db"} <= set(
        r["lose_all_ready_replicas"]
    )
    assert r["stuck"] == [f"{namespace}/db-0"]
    assert any(
        b.startswith(f"{namespace}/web: 2 healthy pod(s) here, 0 disruption(s) allowed")
        for b in r["below_pdb"]
    )
    assert (
        f"{namespace}/lonely: emptyDir scratch" in r["local_data"]
        and f"{namespace}/lonely: hostPath /var/log/x" in r["local_data"]
    )
    assert r["timeline"][0].startswith(f"+{GRACE_SECONDS}s: node tainted")
    assert any(line.startswith(f"+{GRACE_SECONDS + EVICTION_SECONDS}s:") for line in r["timeline"])
    assert r["drain_verdict"].startswith("blocked without overrides")
    ranked = run_cli("risk", "--all", "-o", "json", kubeconfig=sandbox.kubeconfig)
    assert ranked.returncode == 0
    order = [n["node"] for n in json.loads(ranked.stdout)["nodes"]]
    assert order[0] == pool.nodes[0]  # the biggest blast radius comes first
    text = run_cli("risk", "--all", kubeconfig=sandbox.kubeconfig)
    assert "RANK" in text.stdout and f"node/{pool.nodes[0]} — if it went down now" in text.stdout
    assert not await cordoned(kube, pool.nodes[0])  # what-if only: nothing changed


async def test_odd_nodes_and_tolerations_are_shown_not_tracebacks(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    ghost = f"ghost-{pool.name}"
    await kube.request_json(
        "POST",
        "/api/v1/nodes",
        body={"metadata": {"name": ghost, "labels": {"kubecare.test/pool": pool.name}}},
    )
    try:
        odd = {
            **pool.pod_spec(node=pool.nodes[0]),
            "tolerations": [
                *pool.pod_spec()["tolerations"],
                {"operator": "Exists"},
                {"key": "x", "effect": "NoSchedule"},
            ],
        }
        await apply(kube, namespace, pod("odd", odd))
        await wait_running(kube, namespace, 1)
        res = run_cli("outage", kubeconfig=sandbox.kubeconfig)
        assert res.returncode == 0, res.stderr
        assert f"node/{ghost}" in res.stdout and "Traceback" not in res.stderr
        risk = run_cli("risk", pool.nodes[0], kubeconfig=sandbox.kubeconfig)
        # odd, and kubeadm's kube-proxy: its DaemonSet tolerates every taint
        assert risk.returncode == 0 and "never: 2 pod(s) tolerate" in risk.stdout
        wide = run_cli("nodes", "--wide", kubeconfig=sandbox.kubeconfig)
        assert wide.returncode == 0 and ghost in wide.stdout
    finally:
        await kube.request_json("DELETE", f"/api/v1/nodes/{ghost}")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["risk", "nowhere"], 1, 'node "nowhere" not found'),
        (["risk"], 2, "name one node, or pass --all"),
        (["risk", "worker-1", "--all"], 2, "name one node, or pass --all"),
    ],
)
def test_risk_bad_input(sandbox: Sandbox, args: list[str], code: int, message: str) -> None:
    res = run_cli(*args, kubeconfig=sandbox.kubeconfig)
    assert res.returncode == code
    assert message in res.stderr


def test_no_outage_is_said_plainly(sandbox: Sandbox) -> None:
    t0 = time.monotonic()
    res = run_cli("outage", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 0
    assert (
        "settings: node-monitor-grace-period=10s (kube-controller-manager flag (static pod))"
        in res.stdout
    )
    assert time.monotonic() - t0 < 10
