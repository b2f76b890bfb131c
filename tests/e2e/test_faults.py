"""Drain, lock and outage under faults: a fault-injecting proxy in front of the real apiserver.

Each test points kubecare at the proxy (tests/faultproxy.py), injects one kind of failure the real
apiserver cannot be made to produce on demand, and then checks what the cluster looks like
afterwards, not only what kubecare said.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from kubecare.errors import OperationFailed, UsageError
from kubecare.events import Event
from kubecare.kube import ClientOptions, Kube
from kubecare.kube.lock import LockLost, MaintenanceLock
from kubecare.nodes.cordon import set_unschedulable
from kubecare.nodes.drain import DrainFailed, NodeStatus, PodState, drain_nodes
from kubecare.nodes.drain_options import DrainOptions
from kubecare.sandbox import Sandbox

from ..faultproxy import FaultProxy, Rule, strip_eviction
from .conftest import run_cli
from .workloads import (
    Pool,
    apply,
    cordoned,
    deployment,
    pdb,
    pod,
    pods,
    wait_for,
    wait_running,
)

pytestmark = pytest.mark.e2e

EVICTION = r"/pods/[^/]+/eviction"
POD_WATCH = r"/api/v1/pods\?.*watch=1"


@pytest.fixture
async def proxy(sandbox: Sandbox) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(sandbox) as p:
        yield p


def via(proxy: FaultProxy, **options: float) -> Kube:
    """A client that talks to the apiserver through the proxy."""
    return Kube(ClientOptions(kubeconfig=str(proxy.kubeconfig), **options))  # type: ignore[arg-type]


class Events(list[Event]):
    def __call__(self, e: Event) -> None:
        self.append(e)

    def kinds(self, pod: str) -> list[str]:
        return [e.kind for e in self if e.pod == pod]


async def pods_on(kube: Kube, ns: str, node: str) -> list[dict[str, object]]:
    return [p for p in await pods(kube, ns) if p["spec"].get("nodeName") == node]


async def bare_pods(kube: Kube, ns: str, pool: Pool, count: int, **annotations: str) -> list[str]:
    """``count`` pods without a controller on the pool's first node (drained with force). With
    kwok stage annotations (e.g. a deletion delay) they get a grace period, which the delay needs:
    a pod with grace period 0 is removed by the apiserver at once."""
    names = [f"p{i}" for i in range(count)]
    extra = {"terminationGracePeriodSeconds": 60} if annotations else None
    for n in names:
        spec = pool.pod_spec(node=pool.nodes[0], extra=extra)
        await apply(kube, ns, pod(n, spec, annotations=annotations))
    await wait_running(kube, ns, count)
    return [f"{ns}/{n}" for n in names]


# Every node runs kubeadm's kube-proxy DaemonSet pod, which a drain leaves alone as on a real
# cluster; the reports' pods are filtered to the test's namespace where outcomes are compared.
FORCE = DrainOptions(force=True, ignore_daemonsets=True, lock=False)


async def test_a_409_while_the_pod_still_exists_is_not_reported_as_evicted(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    [key] = await bare_pods(kube, namespace, pool, 1)
    # The eviction subresource answers 409 when its own preconditions keep failing; the pod is
    # still there. Three such answers, then the real apiserver.
    rule = proxy.add(Rule("POST", EVICTION, status=409, reason="Conflict", times=3))
    events = Events()
    async with via(proxy) as k:
        [report] = await drain_nodes(k, [pool.nodes[0]], FORCE, on_event=events)
    assert rule.hits == 3
    outcome = report.pods[key]
    assert outcome.state is PodState.EVICTED and outcome.attempts == 4
    # While the 409s came, nothing said "evicted" or "gone": only retries.
    kinds = events.kinds(key)
    assert kinds.count("retry") == 3 and kinds[-1] == "evicted"
    assert await pods_on(kube, namespace, pool.nodes[0]) == []


async def test_a_409_that_never_ends_leaves_the_pod_pending_not_evicted(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    [key] = await bare_pods(kube, namespace, pool, 1)
    proxy.add(Rule("POST", EVICTION, status=409, reason="Conflict"))
    async with via(proxy) as k:
        reports: list = []
        with pytest.raises(
            DrainFailed, match=r"did not finish within --timeout=8s; 1 pod\(s\) left"
        ):
            await drain_nodes(k, [pool.nodes[0]], replace(FORCE, timeout=8), reports=reports)
    [report] = reports
    assert report.status is NodeStatus.FAILED
    assert report.pods[key].state is not PodState.EVICTED and report.in_flight == [key]
    assert len(await pods_on(kube, namespace, pool.nodes[0])) == 1  # it really is still there
    assert await cordoned(kube, pool.nodes[0])


async def test_429_storms_with_and_without_retry_after(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    keys = await bare_pods(kube, namespace, pool, 2)
    plain = proxy.add(Rule("POST", r"/pods/p0/eviction", status=429, times=4))
    paced = proxy.add(Rule("POST", r"/pods/p1/eviction", status=429, times=2, retry_after=2))
    async with via(proxy) as k:
        [report] = await drain_nodes(k, [pool.nodes[0]], FORCE)
    assert all(report.pods[key].state is PodState.EVICTED for key in keys)
    assert plain.hits == 4 and paced.hits == 2
    # Retry-After was obeyed: the retries after the paced 429s came at least 2 s apart.
    attempts = [r.at for r in proxy.log if r.method == "POST" and "/pods/p1/eviction" in r.target]
    assert len(attempts) == 3 and all(b - a >= 1.9 for a, b in itertools.pairwise(attempts))
    assert report.pods[keys[1]].pdb_wait_seconds >= 3.8
    assert await pods_on(kube, namespace, pool.nodes[0]) == []


async def test_500s_during_eviction_and_during_the_deletion_watch_are_retried(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    keys = await bare_pods(kube, namespace, pool, 2)
    evict = proxy.add(Rule("POST", EVICTION, status=500, times=2))
    watch = proxy.add(Rule("GET", POD_WATCH, status=500, times=2))
    async with via(proxy) as k:
        [report] = await drain_nodes(k, [pool.nodes[0]], FORCE)
    assert evict.hits == 2 and watch.hits == 2
    assert {report.pods[key].state for key in keys} == {PodState.EVICTED}
    assert await pods_on(kube, namespace, pool.nodes[0]) == []


async def test_a_watch_cut_half_way_and_a_half_open_watch_do_not_hang_the_drain(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    slow = {"pod-delete.stage.kwok.x-k8s.io/delay": "2s"}
    keys = await bare_pods(kube, namespace, pool, 3, **slow)
    # The first deletion watch is cut after its first bytes; the second is accepted and then
    # goes silent forever (a half-open connection). Only a read timeout gets past it.
    cut = proxy.add(Rule("GET", POD_WATCH, cut_after=1, times=1))
    hang = proxy.add(Rule("GET", POD_WATCH, hang=True, times=1))
    t0 = time.monotonic()
    async with via(proxy, watch_timeout=3) as k:
        [report] = await drain_nodes(k, [pool.nodes[0]], replace(FORCE, timeout=0))
    assert cut.hits == 1 and hang.hits == 1
    assert {report.pods[key].state for key in keys} == {PodState.EVICTED}
    assert time.monotonic() - t0 < 40
    assert await pods_on(kube, namespace, pool.nodes[0]) == []


async def test_an_unreachable_apiserver_while_cordoning_the_second_of_three_nodes(
    sandbox: Sandbox,
    kube: Kube,
    namespace: str,
    make_pool,  # type: ignore[no-untyped-def]
    proxy: FaultProxy,
) -> None:
    first, second = await make_pool(), await make_pool()
    nodes = [first.nodes[0], second.nodes[0], second.nodes[1]]
    await set_unschedulable(kube, second.nodes[1], False)
    for i, (p, node) in enumerate([(first, nodes[0]), (second, nodes[1]), (second, nodes[2])]):
        await apply(kube, namespace, pod(f"p{i}", p.pod_spec(node=node)))
    await wait_running(kube, namespace, 3)
    proxy.add(Rule("PATCH", rf"/api/v1/nodes/{nodes[1]}(\?|$)", cut=True))
    reports: list = []
    async with via(proxy) as k:
        with pytest.raises(DrainFailed) as failed:
            await drain_nodes(k, nodes, FORCE, reports=reports)
    by_node = {r.node: r for r in reports}
    assert [by_node[n].status for n in nodes] == [
        NodeStatus.DRAINED,
        NodeStatus.FAILED,
        NodeStatus.NOT_STARTED,
    ]
    assert "unreachable" in by_node[nodes[1]].error
    assert f"not started: {nodes[2]}" in failed.value.message
    # The cluster: the first node drained, the others untouched.
    assert await cordoned(kube, nodes[0]) and await pods_on(kube, namespace, nodes[0]) == []
    assert not await cordoned(kube, nodes[1]) and not await cordoned(kube, nodes[2])
    assert len(await pods_on(kube, namespace, nodes[1])) == 1
    assert len(await pods_on(kube, namespace, nodes[2])) == 1


async def test_one_failed_eviction_cancels_the_others_and_says_which_were_in_flight(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    slow = {"pod-delete.stage.kwok.x-k8s.io/delay": "20s"}
    keys = await bare_pods(kube, namespace, pool, 4, **slow)
    # p3's eviction is refused for good (403 that is not a terminating namespace).
    proxy.add(Rule("POST", r"/pods/p3/eviction", status=403, reason="Forbidden", delay=1.5))
    reports: list = []
    t0 = time.monotonic()
    async with via(proxy) as k:
        with pytest.raises(DrainFailed, match="forbidden"):
            await drain_nodes(k, [pool.nodes[0]], replace(FORCE, concurrency=2), reports=reports)
    assert time.monotonic() - t0 < 15  # it did not wait for the 20 s terminations
    [report] = reports
    assert report.status is NodeStatus.FAILED
    assert set(report.in_flight) <= set(keys) and report.in_flight
    assert all(not report.pods[k].state.removed for k in keys)


async def test_overlapping_pdbs_block_the_drain_up_front_and_name_both(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await apply(
        kube,
        namespace,
        deployment("web", 2, pool.pod_spec()),
        pdb("web-a", {"app": "web"}, max_unavailable=1),
        pdb("web-b", {"app": "web"}, min_available=1),
    )
    await wait_running(kube, namespace, 2)
    plan = run_cli(
        "drain", pool.nodes[0], "--ignore-daemonsets", "--plan", kubeconfig=sandbox.kubeconfig
    )
    assert plan.returncode == 1
    assert (
        f"more than one PodDisruptionBudget ({namespace}/web-a, {namespace}/web-b)" in plan.stdout
    )
    res = run_cli("drain", pool.nodes[0], "--ignore-daemonsets", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 1
    assert "use --disable-eviction to bypass them" in res.stderr
    assert len(await pods_on(kube, namespace, pool.nodes[0])) == 2  # nothing evicted


async def test_the_eviction_apis_500_for_overlapping_budgets_stops_at_once(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    """A budget that appears after the plan: the eviction API's own 500 is not retried."""
    await bare_pods(kube, namespace, pool, 1)
    message = "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    rule = proxy.add(Rule("POST", EVICTION, status=500, message=message))
    async with via(proxy) as k:
        with pytest.raises(DrainFailed, match="covered by more than one PodDisruptionBudget"):
            await drain_nodes(k, [pool.nodes[0]], FORCE)
    assert rule.hits == 1
    assert len(await pods_on(kube, namespace, pool.nodes[0])) == 1


async def test_without_pods_eviction_the_drain_refuses_instead_of_deleting(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    await bare_pods(kube, namespace, pool, 1)
    proxy.add(Rule("GET", r"^/api(\?|$)", transform=strip_eviction))
    proxy.add(Rule("GET", r"^/api/v1(\?|$)", transform=strip_eviction))
    # The CLI runs in a thread: the proxy serves from this test's event loop.
    res = await asyncio.to_thread(
        run_cli,
        "drain",
        pool.nodes[0],
        "--ignore-daemonsets",
        "--force",
        kubeconfig=proxy.kubeconfig,
    )
    assert res.returncode == 1
    assert "does not offer policy/v1 pods/eviction" in res.stderr
    assert "pass --disable-eviction" in res.stderr
    assert len(await pods_on(kube, namespace, pool.nodes[0])) == 1
    ok = await asyncio.to_thread(
        run_cli,
        "drain",
        pool.nodes[0],
        "--ignore-daemonsets",
        "--force",
        "--disable-eviction",
        kubeconfig=proxy.kubeconfig,
    )
    assert ok.returncode == 0, ok.stderr
    assert await pods_on(kube, namespace, pool.nodes[0]) == []


async def test_pdb_waits_give_their_slot_back_so_other_workloads_finish_first(
    kube: Kube, namespace: str, pool: Pool
) -> None:
    await apply(
        kube,
        namespace,
        deployment(
            "big", 60, pool.pod_spec(), annotations={"pod-ready.stage.kwok.x-k8s.io/delay": "200ms"}
        ),
        pdb("big", {"app": "big"}, max_unavailable=1),
        *(deployment(f"small{i}", 3, pool.pod_spec()) for i in range(4)),
    )
    await wait_running(kube, namespace, 72, timeout=180)
    await wait_for(lambda: _allowed(kube, namespace, "big"))
    await set_unschedulable(kube, pool.nodes[1], False)
    opts = DrainOptions(ignore_daemonsets=True, lock=False, concurrency=5)
    [report] = await drain_nodes(kube, [pool.nodes[0]], opts)
    big = [o for k, o in report.pods.items() if "/big-" in k]
    small = [o for k, o in report.pods.items() if "/small" in k]
    assert len(big) == 60 and len(small) == 12
    assert all(o.state is PodState.EVICTED for o in big + small)
    # The small workloads never waited behind the budget: they were all done before the big
    # one was even half way.
    big_times = sorted(o.finished_at for o in big)
    assert max(o.finished_at for o in small) < big_times[len(big_times) // 2]


async def _allowed(kube: Kube, ns: str, name: str) -> bool:
    doc = await kube.get_json(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")
    return int((doc.get("status") or {}).get("disruptionsAllowed") or 0) >= 1


async def test_one_allowed_disruption_lets_one_waiter_through(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    await apply(
        kube,
        namespace,
        deployment(
            "web", 8, pool.pod_spec(), annotations={"pod-ready.stage.kwok.x-k8s.io/delay": "1s"}
        ),
        pdb("web", {"app": "web"}, max_unavailable=1),
    )
    await wait_running(kube, namespace, 8)
    await wait_for(lambda: _allowed(kube, namespace, "web"))
    await set_unschedulable(kube, pool.nodes[1], False)
    async with via(proxy) as k:
        [report] = await drain_nodes(
            k, [pool.nodes[0]], DrainOptions(ignore_daemonsets=True, lock=False)
        )
    assert {o.state for k, o in report.pods.items() if k.startswith(f"{namespace}/")} == {
        PodState.EVICTED
    }
    evictions = [r for r in proxy.log if r.method == "POST" and "eviction" in r.target]
    first = min(r.at for r in evictions)
    accepted = [r.at for r in evictions if r.status == 201 and r.at > first + 0.5]
    refused = [r.at for r in evictions if r.status == 429 and r.at > first + 0.5]
    # Without rationing, every waiter retries the moment the budget allows one more: one is
    # accepted and the others are refused right with it. With it, one waiter goes per change.
    piled_on = [t for t in refused if any(abs(t - a) < 0.3 for a in accepted)]
    assert len(accepted) == 7
    assert len(piled_on) <= 3, f"{len(piled_on)} refusals right around the {len(accepted)} accepted"


# -- the maintenance lock ------------------------------------------------------------------------
async def lease(kube: Kube, ns: str, identity: str, *, ttl: int, limit: int | None = None) -> None:
    now = datetime(2001, 1, 1, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a clock far behind
    meta: dict[str, object] = {"name": "kubecare-maintenance-0", "namespace": ns}
    if limit is not None:
        meta["annotations"] = {"kubecare.io/max-concurrent-drains": str(limit)}
    await kube.request_json(
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
        body={
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": identity,
                "leaseDurationSeconds": ttl,
                "acquireTime": now,
                "renewTime": now,
            },
        },
    )


async def test_a_lease_from_a_host_whose_clock_is_far_behind_is_still_respected(
    kube: Kube, namespace: str
) -> None:
    # renewTime is in 2001: comparing it with our clock would call the lock stale at once.
    await lease(kube, namespace, "other-host/worker-9/abcd1234-42-ffffff", ttl=60)
    lock = MaintenanceLock(kube, "worker-1", namespace=namespace)
    with pytest.raises(OperationFailed, match="still held by other-host/worker-9"):
        await lock.acquire(timeout=3)
    await lock.release()


async def test_two_runs_on_one_host_never_share_a_slot(kube: Kube, namespace: str) -> None:
    first = MaintenanceLock(kube, "worker-1", namespace=namespace)
    await first.acquire()
    try:
        second = MaintenanceLock(kube, "worker-1", namespace=namespace)  # same host, same node
        with pytest.raises(OperationFailed, match="still held by"):
            await second.acquire(timeout=2)
    finally:
        await first.release()


async def test_a_run_asking_another_limit_is_told_the_limit_in_force(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await lease(kube, namespace, f"other-host/{pool.nodes[1]}/abcd1234-42-ffffff", ttl=60, limit=2)
    lock = MaintenanceLock(kube, pool.nodes[0], namespace=namespace, slots=1)
    with pytest.raises(UsageError, match="--max-concurrent-drains=2"):
        await lock.acquire(timeout=5)
    res = run_cli(
        "drain",
        pool.nodes[0],
        "--ignore-daemonsets",
        "--lock-namespace",
        namespace,
        kubeconfig=sandbox.kubeconfig,
    )
    assert res.returncode == 2 and "run with --max-concurrent-drains=2" in res.stderr
    assert not await cordoned(kube, pool.nodes[0])


async def test_a_lock_that_cannot_be_renewed_stops_the_drain_before_its_ttl(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    slow = {"pod-delete.stage.kwok.x-k8s.io/delay": "30s"}
    keys = await bare_pods(kube, namespace, pool, 3, **slow)
    proxy.add(Rule("PUT", r"/leases/kubecare-maintenance-0", status=500))
    opts = DrainOptions(
        force=True, ignore_daemonsets=True, lock_namespace=namespace, lock_ttl=6, concurrency=1
    )
    reports: list = []
    t0 = time.monotonic()
    async with via(proxy) as k:
        with pytest.raises(DrainFailed, match="lost the maintenance lock"):
            await drain_nodes(k, [pool.nodes[0]], opts, reports=reports)
    took = time.monotonic() - t0
    # Given up at the renew deadline (2/3 of the 6 s TTL, like client-go's leader election):
    # before another run could judge the slot expired, and long before the 30 s deletions.
    assert 3.5 <= took < 6, took
    [report] = reports
    assert "could not be renewed" in report.error and report.in_flight
    assert await cordoned(kube, pool.nodes[0])
    # Pods not yet asked to leave are still on the node.
    assert any(not report.pods[k].state.removed for k in keys)


async def test_a_lock_taken_over_stops_the_holder(kube: Kube, namespace: str) -> None:
    lock = MaintenanceLock(kube, "worker-1", namespace=namespace, ttl=3)
    await lock.acquire()
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/kubecare-maintenance-0"
    doc = await kube.get_json(path)
    doc["spec"]["holderIdentity"] = "someone-else/worker-1/abcd-1-ff"
    await kube.request_json("PUT", path, body=doc)
    await asyncio.wait_for(lock.lost.wait(), timeout=10)
    assert (
        isinstance(lock.lost_error(), LockLost) and "taken over by someone-else" in lock.lost_reason
    )
    await lock.release()
    assert (await kube.get_json(path))["spec"]["holderIdentity"].startswith("someone-else")


async def test_a_control_plane_step_rides_out_an_apiserver_outage_without_losing_the_lock(
    kube: Kube, namespace: str, proxy: FaultProxy
) -> None:
    """kubeadm upgrading the control plane restarts the apiserver: for longer than the renew
    deadline the lock cannot be renewed. Outside a control-plane step that loses the lock (as
    it must: another run may take the slot); inside one the Lease first gets a TTL that covers
    the outage, an overdue renewal is "unknown", and the lock is confirmed ours afterwards."""
    path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/kubecare-maintenance-0"

    def outage(seconds: float) -> Rule:
        end = time.monotonic() + seconds
        return proxy.add(Rule(None, r"/leases", cut=True, when=lambda m, t: time.monotonic() < end))

    async with via(proxy) as k:
        # Not riding out: the same outage loses the lock at the renew deadline (2/3 of 6 s).
        lock = MaintenanceLock(k, "control-plane-1", namespace=namespace, ttl=6)
        await lock.acquire()
        outage(8)
        await asyncio.wait_for(lock.lost.wait(), timeout=10)
        assert "could not be renewed within 4s" in lock.lost_reason
        await lock.release()
        proxy.clear()
        await kube.request_json("DELETE", path)

        lock = MaintenanceLock(k, "control-plane-1", namespace=namespace, ttl=6)
        await lock.acquire()
        seen_unknown = False
        async with lock.ride_out(ttl=9):
            lease = await kube.get_json(path)
            assert lease["spec"]["leaseDurationSeconds"] == 9  # what others judge by
            rule = outage(10)  # past the riding-out deadline too (2/3 of 9 s)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 11:
                seen_unknown |= lock.unknown
                assert not lock.lost.is_set(), lock.lost_reason
                await asyncio.sleep(0.2)
        assert rule.hits > 0 and seen_unknown
        assert not lock.lost.is_set() and not lock.unknown
        lease = await kube.get_json(path)
        assert lease["spec"]["holderIdentity"] == lock.identity
        # back to the usual TTL at the next renewal
        await wait_for(lambda: _lease_ttl(kube, path, 6), timeout=10)

        # A changed holder during the step stays fatal.
        async with lock.ride_out(ttl=9):
            doc = await kube.get_json(path)
            doc["spec"]["holderIdentity"] = "someone-else/control-plane-1/abcd-1-ff"
            await kube.request_json("PUT", path, body=doc)
            await asyncio.wait_for(lock.lost.wait(), timeout=10)
        assert "taken over by someone-else" in lock.lost_reason
        await lock.release()


async def _lease_ttl(kube: Kube, path: str, ttl: int) -> bool:
    return bool((await kube.get_json(path))["spec"]["leaseDurationSeconds"] == ttl)


# -- outage settings that cannot be read ---------------------------------------------------------
async def test_forbidden_settings_are_a_warning_not_a_silent_default(
    sandbox: Sandbox, proxy: FaultProxy
) -> None:
    # RBAC that lets a user list pods but not kube-system's, nor read kubeadm-config: the proxy
    # answers those two reads 403, as the apiserver would for such a role.
    proxy.add(
        Rule(
            "GET",
            r"/namespaces/kube-system/pods\?",
            status=403,
            reason="Forbidden",
            message='pods is forbidden: User "auditor" cannot list resource "pods" in the namespace "kube-system"',
        )
    )
    proxy.add(
        Rule(
            "GET",
            r"/configmaps/kubeadm-config",
            status=403,
            reason="Forbidden",
            message='configmaps "kubeadm-config" is forbidden',
        )
    )
    res = await asyncio.to_thread(run_cli, "outage", "-o", "json", kubeconfig=proxy.kubeconfig)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    notes = report["notes"]
    assert any("cannot read the control-plane pods in kube-system" in n for n in notes), notes
    assert any("cannot read kube-system/kubeadm-config" in n for n in notes), notes
    grace = report["settings"]["node_monitor_grace_period"]
    assert grace["source"].startswith("assumed default")


async def test_an_unreachable_apiserver_is_an_error_for_outage_not_a_default(
    sandbox: Sandbox, proxy: FaultProxy
) -> None:
    proxy.add(Rule("GET", r"/namespaces/kube-system/pods", cut=True))
    res = await asyncio.to_thread(run_cli, "outage", kubeconfig=proxy.kubeconfig, timeout=120)
    assert res.returncode == 1
    assert "control-plane pods in kube-system" in res.stderr and "Traceback" not in res.stderr


async def test_an_informer_is_not_trusted_while_its_watch_is_broken(
    kube: Kube, namespace: str, proxy: FaultProxy
) -> None:
    """The health gate's view (kube/informer.py): one list, then changes from a watch; while
    the watch cannot be re-opened the view is not fresh (a gate never passes on it), and when
    it can, what changed meanwhile is there."""
    from kubecare.kube.informer import Informer

    async def until(check: Callable[[], bool], timeout: float) -> None:
        async def met() -> bool:
            return check()

        await wait_for(met, timeout=timeout)

    path = f"/api/v1/namespaces/{namespace}/configmaps"
    watches = rf"/namespaces/{namespace}/configmaps\?.*watch=1"
    # The first watch is cut one byte into its first event; every later one fails with 503.
    cut = proxy.add(Rule("GET", watches, cut_after=1, times=1))
    down = proxy.add(Rule("GET", watches, status=503))
    async with via(proxy) as k:
        inf = Informer(k, path)
        inf.start()
        try:
            await until(lambda: inf.fresh(0.0), 20)
            assert inf.lists == 1
            await kube.request_json("POST", path, body={"metadata": {"name": "while-down"}})
            await until(lambda: not inf.fresh(0.0), 20)
            await asyncio.sleep(2.0)
            assert cut.hits == 1 and down.hits >= 1
            assert not inf.fresh(0.0) and f"{namespace}/while-down" not in inf.objects
            proxy.clear()
            await until(lambda: inf.fresh(0.0), 60)
            await until(lambda: f"{namespace}/while-down" in inf.objects, 20)
            await kube.request_json("DELETE", f"{path}/while-down")
            await until(lambda: f"{namespace}/while-down" not in inf.objects, 20)
        finally:
            await inf.stop()


async def test_a_budget_watch_that_cannot_start_falls_back_to_backing_off(
    kube: Kube, namespace: str, pool: Pool, proxy: FaultProxy
) -> None:
    """Refused by a PDB, the drain starts a watch of the budgets; when the apiserver does not
    answer that list (it went away at that moment), the drain backs off and retries the
    eviction as it would without a watch, instead of failing: here until the budget is
    deleted, when the eviction goes through."""
    from .test_drain import _pdb_observed

    await apply(kube, namespace, deployment("web", 1, pool.pod_spec()),
                pdb("web", {"app": "web"}, max_unavailable=0))  # fmt: skip
    await wait_running(kube, namespace, 1)
    await wait_for(lambda: _pdb_observed(kube, namespace, "web"))
    seen: list[str] = []
    # the drain's first read of the budgets answers; every later one (the watch's) is cut
    rule = proxy.add(
        Rule("GET", r"/apis/policy/v1/poddisruptionbudgets\?", cut=True,
             when=lambda _m, t: bool(seen.append(t)) or len(seen) > 1)
    )  # fmt: skip
    opts = DrainOptions(ignore_daemonsets=True, lock=False)
    async with via(proxy) as k:
        task = asyncio.create_task(drain_nodes(k, [pool.nodes[0]], opts))
        try:
            await wait_for(lambda: _async_true(rule.hits >= 1 or task.done()), timeout=30)
            await asyncio.sleep(1.5)  # a backed-off retry or two: still refused, still going
            assert not task.done(), task.result() if not task.exception() else task.exception()
            await kube.request_json(
                "DELETE", f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/web"
            )
            [report] = await asyncio.wait_for(task, 60)
        finally:
            task.cancel()
    assert rule.hits >= 1
    assert {o.state for k, o in report.pods.items() if k.startswith(f"{namespace}/")} == {
        PodState.EVICTED
    }


async def _async_true(value: bool) -> bool:
    return value
