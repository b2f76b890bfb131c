"""`kubecare drain` against the real controllers: filters, flags, PDBs, locks, resume."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

from kubecare.kube import Kube
from kubecare.nodes.cordon import set_unschedulable
from kubecare.sandbox import Sandbox

from .conftest import cli_argv, run_cli
from .scenarios import in_namespace, mixed_node, roles_on, uids
from .workloads import Pool, apply, cordoned, deployment, pdb, pod, pods, wait_for, wait_running

pytestmark = pytest.mark.e2e

OVERRIDES = ("--ignore-daemonsets", "--delete-emptydir-data", "--force")
# Every node runs kubeadm's kube-proxy DaemonSet pod: as on a real cluster, a drain that is not
# about DaemonSets says --ignore-daemonsets.
DS = "--ignore-daemonsets"


def drain(sandbox: Sandbox, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli("drain", *args, kubeconfig=sandbox.kubeconfig, timeout=timeout)


def states(report: dict[str, dict[str, object]], ns: str) -> list[object]:
    """The outcomes of the drained pods of namespace ``ns`` (kube-proxy's is left out)."""
    return [p["state"] for k, p in report["pods"].items() if k.startswith(f"{ns}/")]


async def web_under_pdb(
    kube: Kube, ns: str, pool: Pool, *, replicas: int, ready_delay: str
) -> None:
    """A Deployment "web" on the pool's first node under a PDB allowing one disruption, whose
    replacements become Ready after ``ready_delay``; the second node is opened for them."""
    slow = {"pod-ready.stage.kwok.x-k8s.io/delay": ready_delay}
    await apply(
        kube,
        ns,
        deployment("web", replicas, pool.pod_spec(), annotations=slow),
        pdb("web", {"app": "web"}, max_unavailable=1),
    )
    await wait_running(kube, ns, replicas)
    await wait_for(lambda: _pdb_observed(kube, ns, "web"))
    await set_unschedulable(kube, pool.nodes[1], False)


async def test_blocking_pods_are_listed_by_reason_and_nothing_is_evicted(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    before = await mixed_node(kube, namespace, pool)
    res = drain(sandbox, pool.nodes[0])
    assert res.returncode == 1
    err = res.stderr
    by_role = {role: name for name, role in before.items()}
    # kubectl names them in list order: kube-system's kube-proxy before the test's agent
    assert (
        "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): "
        f"{by_role['kube-proxy']}, {by_role['agent']}" in err
    )
    assert (
        f"cannot delete Pods with local storage (use --delete-emptydir-data to override): {by_role['cache']}"
        in err
    )
    assert (
        f"cannot delete Pods that declare no controller (use --force to override): {by_role['lonely']}"
        in err
    )
    assert "Traceback" not in err
    assert await roles_on(kube, namespace, pool.nodes[0]) == in_namespace(before, namespace)
    # nothing evicted
    assert await cordoned(kube, pool.nodes[0])  # like kubectl: cordoned first


async def test_overrides_evict_everything_but_daemonset_and_mirror_pods(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    before = await mixed_node(kube, namespace, pool)
    res = drain(sandbox, pool.nodes[0], *OVERRIDES, "-o", "json")
    assert res.returncode == 0, res.stderr
    [report] = json.loads(res.stdout)
    outcomes = {before[k]: v["state"] for k, v in report["pods"].items()}
    assert outcomes == {
        "web": "evicted",
        "db": "evicted",
        "batch": "evicted",
        "cache": "evicted",
        "lonely": "evicted",
        "agent": "skipped",
        "kube-proxy": "skipped",
        "static": "skipped",
    }
    assert all(v["seconds"] >= 0 for v in report["pods"].values())
    assert await roles_on(kube, namespace, pool.nodes[0]) == ["agent", "static"]
    assert "Warning: ignoring DaemonSet-managed Pods" in res.stderr
    assert "Warning: deleting Pods that declare no controller" in res.stderr
    assert "Warning: deleting Pods with local storage" in res.stderr


async def test_pod_selector_limits_the_drain(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await mixed_node(kube, namespace, pool)
    res = drain(sandbox, pool.nodes[0], "--pod-selector", "role=web")
    assert res.returncode == 0, res.stderr
    assert await roles_on(kube, namespace, pool.nodes[0]) == sorted(
        ["db", "agent", "batch", "cache", "lonely", "static"]
    )


@pytest.mark.parametrize("mode", ["client", "server"])
async def test_dry_run_changes_nothing(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool, mode: str
) -> None:
    before = await mixed_node(kube, namespace, pool)

    async def uids_on_node() -> set[str]:
        # Only the drained node: the DaemonSet may still be placing its pod on the other one.
        return {
            p["metadata"]["uid"]
            for p in await pods(kube, namespace)
            if p["spec"].get("nodeName") == pool.nodes[0]
        }

    uids_before = await uids_on_node()
    res = drain(sandbox, pool.nodes[0], *OVERRIDES, f"--dry-run={mode}")
    assert res.returncode == 0, res.stderr
    assert "evicting pod" in res.stderr
    await asyncio.sleep(1)
    assert await uids_on_node() == uids_before
    assert await roles_on(kube, namespace, pool.nodes[0]) == in_namespace(before, namespace)
    assert not await cordoned(kube, pool.nodes[0])


async def test_plan_shows_verdicts_owners_pdbs_and_risks(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    before = await mixed_node(kube, namespace, pool)
    await apply(kube, namespace, pdb("web", {"app": "web"}, max_unavailable=0))
    await wait_for(lambda: _pdb_observed(kube, namespace, "web"))
    res = drain(sandbox, pool.nodes[0], "--plan", "-o", "json")
    assert res.returncode == 1  # blocked without overrides
    [plan] = json.loads(res.stdout)
    pods_by_role = {before[f"{p['namespace']}/{p['name']}"]: p for p in plan["pods"]}
    assert pods_by_role["web"]["owner"] == "Deployment/web"
    assert pods_by_role["web"]["pdbs"] == [f"{namespace}/web"]
    assert pods_by_role["db"]["owner"] == "StatefulSet/db"
    assert pods_by_role["agent"]["action"] == "block"
    assert pods_by_role["static"]["action"] == "skip"
    assert any("Pods that declare no controller" in e for e in plan["errors"])
    res = drain(sandbox, pool.nodes[0], *OVERRIDES, "--plan", "-o", "json")
    assert res.returncode == 0
    [plan] = json.loads(res.stdout)
    by_role = {before[f"{p['namespace']}/{p['name']}"]: p for p in plan["pods"]}
    assert by_role["lonely"]["data_loss"] == ["unmanaged pod"]
    assert by_role["cache"]["data_loss"] == ["emptyDir"]
    at_risk = {r["workload"] for r in plan["at_risk"]}
    assert {
        f"{namespace}/Deployment/web",
        f"{namespace}/StatefulSet/db",
        f"{namespace}/Deployment/cache",
    } <= at_risk
    assert plan["holds"] and f"PDB {namespace}/web allows 0 disruptions" in plan["holds"][0]
    assert not await cordoned(kube, pool.nodes[0])  # the plan changed nothing
    table = drain(sandbox, pool.nodes[0], *OVERRIDES, "--plan")
    assert (
        "LOSES ALL READY REPLICAS" in table.stdout
        and "will wait on PodDisruptionBudgets" in table.stdout
    )


async def _pdb_observed(kube: Kube, ns: str, name: str) -> bool:
    st = (await kube.get_json(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")).get(
        "status"
    ) or {}
    return st.get("observedGeneration") == 1 and st.get("expectedPods", 0) > 0


async def test_disable_eviction_deletes_past_a_pdb_because_the_user_asked(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await apply(
        kube,
        namespace,
        deployment("web", 2, pool.pod_spec()),
        pdb("web", {"app": "web"}, max_unavailable=0),
    )
    await wait_running(kube, namespace, 2)
    await wait_for(lambda: _pdb_observed(kube, namespace, "web"))
    blocked = drain(sandbox, pool.nodes[0], DS, "--timeout", "3s")
    assert blocked.returncode == 1
    assert "did not finish within --timeout=3s" in blocked.stderr
    assert "waits on PDB" in blocked.stderr or "blocked by" in blocked.stderr
    assert await roles_on(kube, namespace, pool.nodes[0]) == ["web", "web"]  # the PDB held
    res = drain(sandbox, pool.nodes[0], DS, "--disable-eviction", "-o", "json")
    assert res.returncode == 0, res.stderr
    assert set(states(json.loads(res.stdout)[0], namespace)) == {"deleted"}
    assert await roles_on(kube, namespace, pool.nodes[0]) == []


async def test_terminating_pods_are_skipped_after_the_skip_wait_timeout(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await apply(
        kube,
        namespace,
        pod("stuck", pool.pod_spec(node=pool.nodes[0]), finalizers=["kubecare.test/hold"]),
    )
    await wait_running(kube, namespace, 1)
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}/pods/stuck")
    try:
        await asyncio.sleep(2.2)
        waits = drain(sandbox, pool.nodes[0], DS, "--force", "--timeout", "3s")
        assert waits.returncode == 1  # without the flag, kubectl's semantics: wait for it
        skipped = drain(
            sandbox,
            pool.nodes[0],
            DS,
            "--force",
            "--skip-wait-for-delete-timeout",
            "1",
            "-o",
            "json",
        )
        assert skipped.returncode == 0, skipped.stderr
        assert states(json.loads(skipped.stdout)[0], namespace) == ["skipped"]
    finally:
        await kube.request_json(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/stuck",
            body={"metadata": {"finalizers": None}},
            content_type="application/merge-patch+json",
        )


async def test_availability_never_drops_below_the_pdb(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await web_under_pdb(kube, namespace, pool, replicas=5, ready_delay="1s")
    lowest = 5
    stop = asyncio.Event()

    async def watch_ready() -> None:
        nonlocal lowest
        while not stop.is_set():
            ready = [
                p
                for p in await pods(kube, namespace, "app=web")
                if not p["metadata"].get("deletionTimestamp") and _ready(p)
            ]
            lowest = min(lowest, len(ready))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_ready())
    t0 = time.monotonic()
    res = await asyncio.to_thread(drain, sandbox, pool.nodes[0], DS, "-o", "json")
    stop.set()
    await watcher
    assert res.returncode == 0, res.stderr
    assert lowest >= 4, f"ready replicas dropped to {lowest} under a PDB allowing 1 disruption"
    assert time.monotonic() - t0 >= 4  # each of the 5 waited for its predecessor's replacement
    report = json.loads(res.stdout)[0]
    assert max(p["pdb_wait_seconds"] for p in report["pods"].values()) > 0.5
    assert "blocked by" in res.stderr  # the wait was shown, with the PDB's name
    assert await roles_on(kube, namespace, pool.nodes[1]) == ["web"] * 5


def _ready(p: dict[str, object]) -> bool:
    from kubecare.kube.objects import is_pod_ready

    return is_pod_ready(p)


async def test_surge_drains_a_one_replica_deployment_under_min_available_one_without_downtime(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    """Issue 19 (16): a PDB with minAvailable 1 over a one-replica Deployment never allows an
    eviction; without --surge the drain waits (and says --surge exists), with it the Deployment
    is rolled out first and its one pod is never down. The same for two replicas, both on the
    node, under minAvailable 2: never fewer than two (the surged pods are retired by the
    rollout, never also evicted when the budget shows headroom)."""
    slow = {"pod-ready.stage.kwok.x-k8s.io/delay": "2s"}
    await apply(
        kube,
        namespace,
        deployment("solo", 1, pool.pod_spec(), annotations=slow),
        pdb("solo", {"app": "solo"}, min_available=1),
        deployment("duo", 2, pool.pod_spec(), annotations=slow),
        pdb("duo", {"app": "duo"}, min_available=2),
    )
    await wait_running(kube, namespace, 3)
    await wait_for(lambda: _pdb_observed(kube, namespace, "solo"))
    await wait_for(lambda: _pdb_observed(kube, namespace, "duo"))
    await set_unschedulable(kube, pool.nodes[1], False)
    node = pool.nodes[0]
    before = await pods(kube, namespace)

    res = await asyncio.to_thread(drain, sandbox, node, DS, "--timeout", "3s")
    assert res.returncode == 1, res.stderr
    assert f"pod {before[0]['metadata']['namespace']}/" in res.stderr
    assert "allows no disruption with all 1 pod(s) healthy: the drain would wait for ever; " \
        "--surge replaces it first" in res.stderr, res.stderr  # fmt: skip
    assert uids(await pods(kube, namespace)) == uids(before)  # nothing was evicted

    plan = await asyncio.to_thread(drain, sandbox, node, DS, "--plan", "--surge")
    assert plan.returncode == 0, plan.stderr
    assert f"surge: Deployment {namespace}/solo is rolled out first" in plan.stdout, plan.stdout

    lowest, stop = {"solo": 1, "duo": 2}, asyncio.Event()

    async def watch_ready() -> None:
        while not stop.is_set():
            for app in lowest:
                ready = [p for p in await pods(kube, namespace, f"app={app}")
                         if not p["metadata"].get("deletionTimestamp") and _ready(p)]  # fmt: skip
                lowest[app] = min(lowest[app], len(ready))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_ready())
    res = await asyncio.to_thread(drain, sandbox, node, DS, "--surge", "-o", "json")
    stop.set()
    await watcher
    assert res.returncode == 0, res.stderr
    assert lowest == {"solo": 1, "duo": 2}, f"ready replicas dropped during the surge: {lowest}"
    assert f"rolling out Deployment {namespace}/solo" in res.stderr, res.stderr
    assert f"rolling out Deployment {namespace}/duo" in res.stderr, res.stderr
    report = json.loads(res.stdout)[0]
    mine = [p for k, p in report["pods"].items() if k.startswith(f"{namespace}/")]
    assert len(mine) == 3 and {p["state"] for p in mine} == {"replaced"}, mine
    assert await roles_on(kube, namespace, node) == []
    for app, n in (("solo", 1), ("duo", 2)):
        after = [p for p in await pods(kube, namespace, f"app={app}") if _ready(p)]
        assert len(after) == n and {p["spec"]["nodeName"] for p in after} == {pool.nodes[1]}


async def test_surge_never_touches_a_statefulset_or_a_bare_pod(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    from .workloads import statefulset

    await apply(
        kube,
        namespace,
        statefulset("db", 1, pool.pod_spec()),
        pdb("db", {"app": "db"}, min_available=1),
    )
    await wait_running(kube, namespace, 1)
    await wait_for(lambda: _pdb_observed(kube, namespace, "db"))
    plan = await asyncio.to_thread(drain, sandbox, pool.nodes[0], DS, "--plan", "--surge")
    assert "surge:" not in plan.stdout, plan.stdout
    assert "--surge cannot help: owned by StatefulSet/db, not a Deployment" in plan.stdout, (
        plan.stdout
    )
    sts = await kube.get_json(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/db")
    res = await asyncio.to_thread(drain, sandbox, pool.nodes[0], DS, "--surge", "--timeout", "2s")
    assert res.returncode == 1, res.stderr
    again = await kube.get_json(f"/apis/apps/v1/namespaces/{namespace}/statefulsets/db")
    assert again["metadata"]["generation"] == sts["metadata"]["generation"]  # not rolled out


async def test_several_nodes_one_after_another(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await apply(kube, namespace, pod("a1", pool.pod_spec(node=pool.nodes[0])))
    await set_unschedulable(kube, pool.nodes[1], False)
    await apply(kube, namespace, pod("b1", pool.pod_spec(node=pool.nodes[1])))
    await wait_running(kube, namespace, 2)
    res = drain(sandbox, "-l", f"kubecare.test/pool={pool.name}", DS, "--force", "-o", "json")
    assert res.returncode == 0, res.stderr
    reports = json.loads(res.stdout)
    assert [r["node"] for r in reports] == list(pool.nodes)
    assert reports[0]["finished_at"] <= reports[1]["started_at"]  # sequential by default
    assert await pods(kube, namespace) == []


async def test_two_concurrent_runs_never_drain_two_nodes_at_once(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    slow = {"pod-delete.stage.kwok.x-k8s.io/delay": "2s"}
    for i, node in enumerate(pool.nodes):
        await apply(
            kube,
            namespace,
            pod(
                f"p{i}",
                pool.pod_spec(node=node, extra={"terminationGracePeriodSeconds": 5}),
                annotations=slow,
            ),
        )
        if i == 0:
            await set_unschedulable(kube, pool.nodes[1], False)
    await wait_running(kube, namespace, 2)
    argv = cli_argv("drain", DS, "--force", "-o", "json", kubeconfig=sandbox.kubeconfig)
    procs = [
        subprocess.Popen([*argv, n], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in pool.nodes
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    a, b = (json.loads(o[0])[0] for o in outs)
    first, second = sorted([a, b], key=lambda r: r["started_at"])
    assert (
        first["finished_at"] <= second["started_at"] + 0.5
        or second["finished_at"] <= first["started_at"]
    )
    waited = [o[1] for o in outs if "waiting for the maintenance lock, held by" in o[1]]
    assert waited, "one run must have waited for the other and said who holds the lock"


async def test_a_stale_lock_expires(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "kubecare-maintenance-0", "namespace": namespace},
        "spec": {
            "holderIdentity": "crashed-host/worker-9",
            "leaseDurationSeconds": 3,
            "acquireTime": now,
            "renewTime": now,
        },
    }
    await kube.request_json(
        "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=lease
    )
    t0 = time.monotonic()
    res = drain(sandbox, pool.nodes[0], DS, "--lock-namespace", namespace)
    assert res.returncode == 0, res.stderr
    assert "held by crashed-host/worker-9" in res.stderr
    assert 2 <= time.monotonic() - t0 < 30


async def test_kill_9_mid_drain_leaves_the_node_cordoned_and_a_rerun_finishes(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await web_under_pdb(kube, namespace, pool, replicas=6, ready_delay="1s")
    argv = cli_argv("drain", pool.nodes[0], DS, kubeconfig=sandbox.kubeconfig)
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

    async def some_moved() -> bool:
        return "web" in await roles_on(kube, namespace, pool.nodes[1])

    await wait_for(some_moved, timeout=60, interval=0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert await cordoned(kube, pool.nodes[0])
    assert await roles_on(kube, namespace, pool.nodes[0])  # unfinished
    # same host, same node: takes its own lock back
    res = drain(sandbox, pool.nodes[0], DS, "-o", "json")
    assert res.returncode == 0, res.stderr
    assert await roles_on(kube, namespace, pool.nodes[0]) == []
    assert await cordoned(kube, pool.nodes[0])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["no-such-node"], 1, 'node "no-such-node" not found'),
        (["-l", "pool=none"], 1, "no nodes match selector"),
        (["worker-1", "-l", "a=b"], 2, "not both"),
        (["-l", "a=b;c"], 2, "invalid label selector"),
        (["worker-1", "--grace-period", "-5"], 2, "--grace-period must be -1"),
        (["worker-1", "--timeout=-1s"], 2, "must not be negative"),
        (["worker-1", "--chunk-size", "-1"], 2, "--chunk-size must not be negative"),
        (["worker-1", "--concurrency", "0"], 2, "at least 1"),
        (["worker-1", "--bogus"], 2, "unknown flag: --bogus"),
    ],
)
async def test_bad_input_exits_clearly_and_cordons_nothing(
    sandbox: Sandbox, kube: Kube, args: list[str], code: int, message: str
) -> None:
    res = drain(sandbox, *args)
    assert res.returncode == code, (res.stdout, res.stderr)
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert not await cordoned(kube, "worker-1")


async def test_ctrl_c_says_what_was_done_and_leaves_the_node_cordoned(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    # 5 s per replacement: the drain takes >= 15 s after the first eviction, so the interrupt
    # lands mid-drain even on a loaded machine
    await web_under_pdb(kube, namespace, pool, replicas=4, ready_delay="5s")
    argv = cli_argv("drain", pool.nodes[0], DS, kubeconfig=sandbox.kubeconfig)
    # SIGINT as at a terminal: a test run started in the background (`make test &`) inherits
    # SIGINT ignored, and Python then leaves it ignored in the child too.
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )

    async def some_moved() -> bool:
        return "web" in await roles_on(kube, namespace, pool.nodes[1])

    await wait_for(some_moved, timeout=60, interval=0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted. What was done:" in err
    assert f"node/{pool.nodes[0]}: cordoned, " in err and "still to go" in err
    assert "Traceback" not in err
    assert await cordoned(kube, pool.nodes[0])
    # The lock was given back: another node can be drained at once.
    assert (
        drain(sandbox, pool.nodes[1], DS, "--timeout", "20s", "--disable-eviction").returncode == 0
    )


async def test_parallel_nodes_drain_together_within_the_lock_limit(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await set_unschedulable(kube, pool.nodes[1], False)
    for i, node in enumerate(pool.nodes):
        await apply(
            kube,
            namespace,
            pod(
                f"p{i}",
                # a grace period, or the apiserver deletes at once and kwok's delay never applies
                pool.pod_spec(node=node, extra={"terminationGracePeriodSeconds": 5}),
                annotations={"pod-delete.stage.kwok.x-k8s.io/delay": "2s"},
            ),
        )
    await wait_running(kube, namespace, 2)
    res = drain(
        sandbox,
        *pool.nodes,
        DS,
        "--force",
        "--parallel-nodes",
        "2",
        "--max-concurrent-drains",
        "2",
        "-o",
        "json",
    )
    assert res.returncode == 0, res.stderr
    a, b = json.loads(res.stdout)
    assert (
        a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]
    )  # they overlapped
    assert await pods(kube, namespace) == []


async def test_chunk_size_pages_the_node_list_as_kubectl_does(sandbox: Sandbox, pool: Pool) -> None:
    """kubectl drain's builder asks for nodes RequestChunksOf(--chunk-size) too (issue 19,
    item 17): the pool's two nodes by -l take pages of one (the apiserver may end with an empty
    page), or one page of 500 — counted by the client against the real apiserver; drain passes
    its --chunk-size through."""
    from kubecare.kube import ClientOptions
    from kubecare.nodes.select import select_nodes

    from .workloads import POOL_KEY

    selector = f"{POOL_KEY}={pool.name}"
    requests = {}
    for size in (500, 1):
        async with Kube(ClientOptions(kubeconfig=str(sandbox.kubeconfig))) as kube:
            before = kube.requests
            nodes = await select_nodes(kube, [], selector, chunk_size=size)
            requests[size] = kube.requests - before
        assert sorted(n["metadata"]["name"] for n in nodes) == sorted(pool.nodes)
    assert requests[500] == 1 and requests[1] >= 2, requests
