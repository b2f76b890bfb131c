"""Draining nodes: cordon, plan, evict (PDB-aware, bounded concurrency), wait by watch.

kubectl's semantics where kubectl is right (k8s.io/kubectl/pkg/drain): cordon first, the same
filters, eviction through policy/v1, ``--timeout`` bounds the whole eviction phase, several nodes
are drained one after another and the first failure stops the run (``--ignore-errors`` goes on).
Stricter than kubectl where a pod's fate is at stake:

- a pod counts as gone only when the deletion watch no longer has its UID. A 404 or 409 from the
  eviction subresource is a claim to be confirmed, not a result: the apiserver also answers 409
  when its own resourceVersion precondition keeps failing, while the pod is still running;
- when one pod's removal fails, every other eviction of that drain is cancelled before the lock
  is released, and the report says which pods were still in flight;
- when the server has no policy/v1 ``pods/eviction``, the drain refuses instead of deleting pods
  past their PodDisruptionBudgets (kubectl falls back to delete silently); ``--disable-eviction``
  is how a user asks for that;
- pods covered by more than one PodDisruptionBudget, which the eviction API refuses with a 500,
  block the drain up front (in the plan) with both budgets named.

Faster than kubectl where kubectl's users suffer: a 429 from a budget is retried as soon as a
watch on that budget shows a disruption allowed (at most as many waiters as it allows), and a
waiting pod gives its concurrency slot back, so one slow workload never delays the others;
deletion is confirmed by one watch per node instead of one GET per pod per second.

Interrupted drains leave the node cordoned; running the same drain again resumes (already
evicted pods are gone from the node, so the new plan only has what is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kubecare.errors import (
    TRANSIENT,
    Conflict,
    Forbidden,
    KubecareError,
    NotFound,
    OperationFailed,
    ServerError,
    TooManyRequests,
    Unreachable,
    UsageError,
    first_error,
)
from kubecare.events import Event, EventSink, ignore
from kubecare.kube import JSON, Kube
from kubecare.kube.deletions import DeletionTracker
from kubecare.kube.discovery import eviction_supported
from kubecare.kube.lock import MaintenanceLock, maintenance_lock
from kubecare.kube.pdbs import Claim, PdbWatcher
from kubecare.nodes.cordon import DryRun, set_unschedulable
from kubecare.nodes.drain_options import DrainOptions
from kubecare.nodes.drain_plan import DrainPlan, PodPlan, collect, plan_drain
from kubecare.nodes.workloads import WorkloadIndex, fetch_workloads

MAX_PDB_BACKOFF = 8.0
# A waiter whose budgets the watch shows retries on its own only this often (kubectl's fixed
# interval, so a watch that went stale unnoticed never makes kubecare slower than kubectl).
PDB_WATCH_FALLBACK = 5.0
MAX_CONFLICT_BACKOFF = 5.0
TRANSIENT_RETRIES = 5  # unreachable apiserver / 5xx: 2+4+8+8+8 s of retries, then fail
CONFIRM_SECONDS = 5.0  # how long a 404/409 waits for the watch to confirm the UID is gone
OVERLAPPING_PDBS = "more than one PodDisruptionBudget"  # the eviction API's 500 (eviction.go)


class PodState(StrEnum):
    """Where one pod of a drain is. The last four are final."""

    PENDING = "pending"  # not started
    EVICTING = "evicting"  # a request is being sent (or retried)
    WAITING_PDB = "waiting for PDB"  # refused by a budget, waiting for it to allow one more
    TERMINATING = "terminating"  # the apiserver accepted; waiting until the UID is gone
    SKIPPED = "skipped"  # the plan keeps it (DaemonSet, mirror, ...)
    WOULD_EVICT = "would evict"  # client dry run
    EVICTED = "evicted"
    DELETED = "deleted"  # --disable-eviction
    GONE = "gone"  # it went away by itself before (or while) we asked
    WAITING_ROLLOUT = "waiting for rollout"  # --surge: its Deployment's rollout retires it
    REPLACED = "replaced"  # --surge: retired by the rollout once its replacement was available

    @property
    def in_flight(self) -> bool:
        return self in (
            PodState.EVICTING,
            PodState.WAITING_PDB,
            PodState.TERMINATING,
            PodState.WAITING_ROLLOUT,
        )

    @property
    def removed(self) -> bool:
        return self in (PodState.EVICTED, PodState.DELETED, PodState.GONE, PodState.REPLACED)


class NodeStatus(StrEnum):
    PENDING = "pending"
    DRAINED = "drained"
    PLANNED = "planned"  # dry run
    BLOCKED = "blocked"  # filters refused; nothing evicted
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"  # an earlier node failed


@dataclass
class PodOutcome:
    """What happened to one pod during the drain."""

    pod: str
    state: PodState = PodState.PENDING
    seconds: float = 0.0
    pdb_wait_seconds: float = 0.0
    attempts: int = 0
    finished_at: float = 0.0  # wall clock, for lining pods up in tests and reports
    message: str = ""


@dataclass
class NodeReport:
    """The drain of one node, filled in as it goes (so an interrupt can say what was done)."""

    node: str
    status: NodeStatus = NodeStatus.PENDING
    cordoned: bool = False
    plan: DrainPlan | None = None
    pods: dict[str, PodOutcome] = field(default_factory=dict)
    seconds: float = 0.0
    started_at: float = 0.0  # wall clock (epoch) when the drain itself began (lock held) ...
    finished_at: float = 0.0  # ... and ended: lines up concurrent runs
    lock_wait_seconds: float = 0.0
    error: str = ""
    in_flight: list[str] = field(default_factory=list)  # pods mid-removal when it stopped

    @property
    def done(self) -> list[PodOutcome]:
        return [p for p in self.pods.values() if p.state.removed or p.state is PodState.WOULD_EVICT]

    @property
    def remaining(self) -> list[PodOutcome]:
        return [p for p in self.pods.values() if p.state is PodState.PENDING or p.state.in_flight]


class DrainBlocked(OperationFailed):
    """Raised when filters block the drain; nothing was evicted. The message is kubectl's."""

    def __init__(self, node: str, errors: Sequence[str]) -> None:
        super().__init__(f'unable to drain node "{node}" due to error: ' + ", ".join(errors))
        self.node = node
        self.errors = tuple(errors)


class DrainFailed(OperationFailed):
    """Raised at the end of a multi-node drain when any node failed; every report is attached."""

    def __init__(self, message: str, reports: Sequence[NodeReport]) -> None:
        super().__init__(message)
        self.reports = list(reports)


class NodeDrain:
    """Drains one node; ``report`` is always current, even when interrupted."""

    def __init__(
        self,
        kube: Kube,
        node: str,
        opts: DrainOptions,
        on_event: EventSink,
        use_eviction: bool,
        report: NodeReport | None = None,
    ) -> None:
        self.kube, self.node, self.opts, self.emit = kube, node, opts, on_event
        self.use_eviction = use_eviction and not opts.disable_eviction
        self.report = report or NodeReport(node)
        self.pdbs = PdbWatcher(kube)
        self.slots = asyncio.Semaphore(max(1, opts.concurrency))
        self.tracker: DeletionTracker | None = None
        self.lock: MaintenanceLock | None = None

    def _event(self, kind: str, message: str, pod: str = "", **data: object) -> None:
        self.emit(Event(kind, message, node=self.node, pod=pod, data=dict(data)))

    async def run(self, lock: MaintenanceLock | None = None) -> NodeReport:
        """Drain, holding the maintenance lock (taken here unless the caller holds ``lock``)."""
        started = time.monotonic()
        opts = self.opts
        self.lock = lock
        try:
            async with contextlib.AsyncExitStack() as stack:
                if lock is None and opts.lock and opts.dry_run is DryRun.NONE:
                    self.lock = await stack.enter_async_context(
                        maintenance_lock(
                            self.kube,
                            self.node,
                            namespace=opts.lock_namespace,
                            slots=opts.max_concurrent_drains,
                            ttl=opts.lock_ttl,
                            timeout=opts.lock_timeout,
                            on_event=self.emit,
                        )
                    )
                    self.report.lock_wait_seconds = time.monotonic() - started
                self.report.started_at = time.time()
                await self._drain()
                self.report.finished_at = time.time()  # before the lock is given back
        except asyncio.CancelledError:
            self._stopped(NodeStatus.INTERRUPTED, "interrupted")
            raise
        except DrainBlocked as e:
            self._stopped(NodeStatus.BLOCKED, e.message)
            raise
        except KubecareError as e:
            self._stopped(NodeStatus.FAILED, e.message)
            raise
        finally:
            self.report.seconds = time.monotonic() - started
            self.report.finished_at = self.report.finished_at or time.time()
            await self.pdbs.stop()
        return self.report

    def _stopped(self, status: NodeStatus, error: str) -> None:
        self.report.status, self.report.error = status, error
        self.report.in_flight = [p.pod for p in self.report.pods.values() if p.state.in_flight]

    async def _drain(self) -> None:
        opts, node = self.opts, self.node
        if opts.dry_run is not DryRun.CLIENT:
            await set_unschedulable(self.kube, node, True, dry_run=opts.dry_run is DryRun.SERVER)
        self.report.cordoned = opts.dry_run is DryRun.NONE
        self._event("cordoned", f"node/{node} cordoned")
        facts = await collect(
            self.kube,
            node,
            pod_selector=opts.pod_selector,
            chunk_size=opts.chunk_size,
            detailed=opts.surge,  # a surge needs each pod's Deployment and its strategy
        )
        plan = plan_drain(
            node,
            facts.pods,
            opts.filters(),
            daemonsets=facts.daemonsets,
            pdbs=facts.pdbs,
            workloads=facts.workloads,
            surge=opts.surge,
        )
        if plan.stuck_pdbs and facts.workloads is None:
            # A budget that will never let its pods go: read their owners after all, to say
            # whether --surge would move them (one GET per controller, only in this case).
            workloads = await fetch_workloads(self.kube, facts.pods)
            plan = plan_drain(
                node,
                facts.pods,
                opts.filters(),
                daemonsets=facts.daemonsets,
                pdbs=facts.pdbs,
                workloads=workloads,
                surge=opts.surge,
            )
        self.report.plan = plan
        for p in plan.pods:
            state = PodState.PENDING if p.action.value == "evict" else PodState.SKIPPED
            self.report.pods[p.key] = PodOutcome(p.key, state, message=p.reason)
        for w in plan.warnings:
            self._event("warning", f"Warning: {w}")
        if plan.blocked:
            raise DrainBlocked(node, plan.errors)
        if opts.surge and plan.to_surge:
            await self._surge(plan, facts.workloads or WorkloadIndex())
        if opts.dry_run is DryRun.CLIENT:
            for p in plan.to_evict:
                self.report.pods[p.key].state = PodState.WOULD_EVICT
                self._event("evicting", f"evicting pod {p.key} (dry run)", pod=p.key)
            self.report.status = NodeStatus.PLANNED
            return
        if opts.dry_run is DryRun.NONE:
            self.tracker = DeletionTracker(
                self.kube,
                facts.pods,
                facts.pods_version,
                field_selector=f"spec.nodeName={node}",
                what=f'pods of node "{node}"',
                skip_after=opts.skip_wait_for_delete_timeout,
            )
        try:
            async with asyncio.timeout(opts.timeout if opts.timeout > 0 else None):
                await self._remove_all(plan.to_evict)
        except TimeoutError:
            left = [p.pod for p in self.report.remaining]
            raise OperationFailed(
                f'drain of node "{node}" did not finish within --timeout={opts.timeout:g}s; '
                f"{len(left)} pod(s) left: {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}; "
                "the node stays cordoned; run the same drain again to resume"
            ) from None
        finally:
            if self.tracker:
                await self.tracker.stop()
        self.report.status = (
            NodeStatus.DRAINED if opts.dry_run is DryRun.NONE else NodeStatus.PLANNED
        )
        self._event(
            "drained",
            f"node/{node} drained" + (" (server dry run)" if opts.dry_run is DryRun.SERVER else ""),
        )

    async def _surge(self, plan: DrainPlan, workloads: WorkloadIndex) -> None:
        """Roll out each Deployment whose pod here no PDB will ever let go (``--surge``): with the
        node cordoned its new pods start elsewhere, each available before an old one goes, and
        the Deployment controller retires the old ones (:meth:`_await_rollout`). A rerun after a
        crash finds either the budget with headroom (a plain eviction) or it stuck again (one
        more rollout: more churn, never less availability)."""
        from kubecare.nodes.surge import restart_patch

        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for key in plan.to_surge:
            ns, name = key.split("/", 1)
            pods = [p.key for p in plan.pods if p.deployment == key]
            for p in pods:
                self.report.pods[p].message = f"replaced first by a rollout of Deployment {key}"
            if self.opts.dry_run is DryRun.CLIENT:
                self._event(
                    "surge", f"would roll out Deployment {key} for {', '.join(pods)} (dry run)"
                )
                continue
            judged = workloads.objects.get(f"{ns}/Deployment/{name}") or {}
            version = str((judged.get("metadata") or {}).get("resourceVersion") or "")
            try:
                await self.kube.request_json(
                    "PATCH",
                    f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                    body=restart_patch(stamp, version),
                    params={"dryRun": "All"} if self.opts.dry_run is DryRun.SERVER else None,
                    content_type="application/strategic-merge-patch+json",
                    what=f"Deployment {key}",
                )
            except Conflict:
                raise OperationFailed(
                    f"Deployment {key} changed since kubecare judged its rollout safe; nothing "
                    f'was rolled out; run the same drain again (node "{self.node}" stays cordoned)'
                ) from None
            self._event(
                "surge",
                f"rolling out Deployment {key}: a new pod starts elsewhere before "
                f"{', '.join(pods)} goes",
                deployment=key,
                pods=pods,
            )

    async def _remove_all(self, pods: Sequence[PodPlan]) -> None:
        """Remove every pod; the first failure (or a lost lock) cancels all the others."""
        try:
            async with asyncio.TaskGroup() as outer:
                guard = outer.create_task(self._guard_lock()) if self.lock else None
                async with asyncio.TaskGroup() as tg:
                    for p in pods:
                        tg.create_task(self._remove(p))
                if guard:
                    guard.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def _guard_lock(self) -> None:
        assert self.lock is not None
        await self.lock.lost.wait()
        raise self.lock.lost_error()

    def _check_lock(self) -> None:
        if self.lock is not None and self.lock.lost.is_set():
            raise self.lock.lost_error()

    async def _remove(self, pod: PodPlan) -> None:
        """Evict (or delete) one pod until its UID is gone; raise on a failure that must stop
        the drain."""
        outcome = self.report.pods[pod.key]
        t0 = time.monotonic()
        if self.opts.surge and pod.surge_ok:
            await self._await_rollout(pod, outcome, t0)
            return
        suffix = " (server dry run)" if self.opts.dry_run is DryRun.SERVER else ""
        verb = "evicting" if self.use_eviction else "deleting"
        retry = _Retry()
        claim: Claim | None = None
        self._event("evicting", f"{verb} pod {pod.key}{suffix}", pod=pod.key)
        while True:
            self._check_lock()
            try:
                async with self.slots:  # a slot is held only while a request is in flight
                    outcome.state = PodState.EVICTING  # (not before: queued pods sent nothing)
                    outcome.attempts += 1
                    await self._send(pod)
            except (NotFound, Conflict) as e:
                # The name is gone (404) or a precondition failed (409): either our pod is gone,
                # or the server could not act on it this time. Only the watch can tell.
                if await self._confirm_gone(pod):
                    self._finish(outcome, PodState.GONE, t0, f"{e.status}: {e.message}")
                    return
                await self._pause(
                    pod, retry.conflict(), f"{e.status} and pod {pod.key} still exists"
                )
                continue
            except TooManyRequests as e:
                self.pdbs.release(claim)
                claim = await self._wait_budget(pod, outcome, e, retry)
                continue
            except Forbidden as e:
                if "being terminated" in e.message or "NamespaceTerminating" in e.message:
                    await asyncio.sleep(1)  # as kubectl: a terminating namespace refuses evictions
                    continue
                raise
            except ServerError as e:
                if OVERLAPPING_PDBS in e.message:
                    raise OperationFailed(
                        f"pod {pod.key} is covered by more than one PodDisruptionBudget ({', '.join(pod.pdbs) or 'see kubecare drain --plan'}), "
                        "which the eviction API refuses; make the budgets not overlap, or pass "
                        f'--disable-eviction to bypass them; node "{self.node}" stays cordoned'
                    ) from e
                await self._transient(pod, e, retry)
                continue
            except Unreachable as e:
                await self._transient(pod, e, retry)
                continue
            break
        if outcome.state is PodState.WAITING_PDB or retry.pdb_since is not None:
            outcome.pdb_wait_seconds = retry.pdb_waited()
        done = PodState.EVICTED if self.use_eviction else PodState.DELETED
        if self.tracker is None:  # server dry run: the apiserver accepted it, nothing to wait for
            self._finish(outcome, done, t0)
            self._event("evicted", f"pod/{pod.name} evicted{suffix}", pod=pod.key)
            return
        outcome.state = PodState.TERMINATING
        await self._wait_gone(pod)
        self._finish(outcome, done, t0)
        self._event(
            done.value,
            f"pod/{pod.name} {done.value}",
            pod=pod.key,
            seconds=round(outcome.seconds, 2),
        )

    async def _await_rollout(self, pod: PodPlan, outcome: PodOutcome, t0: float) -> None:
        """A surged pod is never evicted: its Deployment's controller retires it once a new pod
        is available (maxUnavailable 0 decides, the budget is never asked). Evicting it as well
        would take a second pod away the moment the budget showed one disruption allowed — for
        two replicas on this node, both at once."""
        if self.tracker is None:  # server dry run: the rollout was only validated
            self._finish(
                outcome,
                PodState.WOULD_EVICT,
                t0,
                f"would be replaced by the rollout of Deployment {pod.deployment}",
            )
            return
        outcome.state = PodState.WAITING_ROLLOUT
        self._event(
            "waiting",
            f"pod {pod.key} waits for the rollout of Deployment {pod.deployment} to replace it",
            pod=pod.key,
        )
        await self._wait_gone(pod)
        self._finish(
            outcome, PodState.REPLACED, t0, f"retired by the rollout of Deployment {pod.deployment}"
        )
        self._event(
            "replaced", f"pod/{pod.name} replaced", pod=pod.key, seconds=round(outcome.seconds, 2)
        )

    def _finish(self, outcome: PodOutcome, state: PodState, t0: float, message: str = "") -> None:
        outcome.state, outcome.seconds, outcome.finished_at = (
            state,
            time.monotonic() - t0,
            time.time(),
        )
        if message:
            outcome.message = message

    async def _confirm_gone(self, pod: PodPlan) -> bool:
        if self.tracker is None:  # server dry run: nothing is deleted, trust the answer
            return True
        return await self.tracker.wait_gone(pod.uid, timeout=CONFIRM_SECONDS)

    async def _wait_gone(self, pod: PodPlan) -> None:
        assert self.tracker is not None
        await self.tracker.wait_gone(pod.uid)

    async def _pause(self, pod: PodPlan, seconds: float, why: str) -> None:
        self._event("retry", f"retrying pod {pod.key} in {seconds:.1f}s: {why}", pod=pod.key)
        await asyncio.sleep(seconds)

    async def _transient(self, pod: PodPlan, e: KubecareError, retry: _Retry) -> None:
        delay = retry.transient()
        if delay is None:
            raise OperationFailed(
                f'drain of node "{self.node}" stopped: {e.message} (after {TRANSIENT_RETRIES} retries); '
                "the node stays cordoned; run the same drain again to resume"
            ) from e
        await self._pause(pod, delay, e.message)

    async def _wait_budget(
        self, pod: PodPlan, outcome: PodOutcome, e: TooManyRequests, retry: _Retry
    ) -> Claim | None:
        """Refused with 429: wait for the budget (slot given back) or the server's Retry-After."""
        outcome.state = PodState.WAITING_PDB
        waited = retry.pdb_waited()
        outcome.pdb_wait_seconds = waited
        self._event(
            "blocked",
            f"pod {pod.key} waits on PDB {', '.join(pod.pdbs) or '(unknown)'}: {e.message.split(':', 1)[-1].strip()}",
            pod=pod.key,
            pdbs=list(pod.pdbs),
            waited=round(waited, 1),
        )
        if e.retry_after:  # API priority and fairness (or a server that knows): do as it says
            await asyncio.sleep(e.retry_after)
            return None
        # the apiserver away this moment: back off as with no watch, then retry the eviction
        # (whose own failures count against the transient budget)
        with contextlib.suppress(*TRANSIENT):
            await self.pdbs.ensure_started()
        if pod.pdbs and self.pdbs.knows(pod.pdbs):
            timeout = PDB_WATCH_FALLBACK  # the watch says when: retrying sooner only gets 429s
        else:
            timeout = retry.pdb_backoff()  # a 429 from no budget we watch: back off and retry
        # Jitter, so that waiters refused together do not all come back in the same instant.
        return await self.pdbs.admit(pod.pdbs, timeout * random.uniform(1.0, 1.25))

    async def _send(self, pod: PodPlan) -> None:
        options: JSON = {"preconditions": {"uid": pod.uid}}
        if self.opts.grace_period >= 0:
            options["gracePeriodSeconds"] = self.opts.grace_period
        params = {"dryRun": "All"} if self.opts.dry_run is DryRun.SERVER else None
        what = f'pod "{pod.key}"'
        if self.use_eviction:
            body = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": pod.name, "namespace": pod.namespace},
                "deleteOptions": options,
            }
            await self.kube.request_json(
                "POST",
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/eviction",
                body=body,
                params=params,
                what=what,
            )
        else:
            await self.kube.request_json(
                "DELETE",
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                body=options,
                params=params,
                what=what,
            )


class _Retry:
    """Back-off bookkeeping of one pod's removal."""

    def __init__(self) -> None:
        self.transients = 0
        self.conflicts = 0
        self.pdb_since: float | None = None
        self._pdb_backoff = 0.5

    def transient(self) -> float | None:
        """Seconds to wait before retrying a 5xx/unreachable, or None when out of retries."""
        self.transients += 1
        if self.transients > TRANSIENT_RETRIES:
            return None
        return float(min(2**self.transients, 8))

    def conflict(self) -> float:
        self.conflicts += 1
        return float(min(0.5 * 2 ** (self.conflicts - 1), MAX_CONFLICT_BACKOFF))

    def pdb_waited(self) -> float:
        if self.pdb_since is None:
            self.pdb_since = time.monotonic()
        return time.monotonic() - self.pdb_since

    def pdb_backoff(self) -> float:
        current = self._pdb_backoff
        self._pdb_backoff = min(current * 2, MAX_PDB_BACKOFF)
        return current


async def check_eviction(kube: Kube, opts: DrainOptions) -> bool:
    """Whether evictions will be used; refuses when PDBs cannot be honoured and the user did not
    ask to bypass them."""
    if opts.disable_eviction:
        return False
    if await eviction_supported(kube):
        return True
    raise OperationFailed(
        f"the apiserver at {kube.server} does not offer policy/v1 pods/eviction, so a drain cannot "
        "honour PodDisruptionBudgets; kubecare does not fall back to deleting pods on its own "
        "(kubectl does): pass --disable-eviction to delete them, bypassing the budgets"
    )


async def drain_nodes(
    kube: Kube,
    nodes: Sequence[str],
    opts: DrainOptions,
    *,
    parallel_nodes: int = 1,
    on_event: EventSink = ignore,
    reports: list[NodeReport] | None = None,
    lock: MaintenanceLock | None = None,
) -> list[NodeReport]:
    """Drain ``nodes`` one after another (or ``parallel_nodes`` at a time).

    As kubectl does, the first node that fails stops the run: nodes not started yet are reported
    "not started" (``opts.ignore_errors`` drains them anyway); nodes already draining in parallel
    finish. Every node's report is in ``reports`` (filled as nodes start, for interrupt
    reporting); any failure raises :class:`DrainFailed` at the end, carrying them all.
    """
    reports = reports if reports is not None else []
    use_eviction = await check_eviction(kube, opts)
    sem = asyncio.Semaphore(max(1, parallel_nodes))
    stop = asyncio.Event()
    by_node = {n: NodeReport(n) for n in nodes}
    reports.extend(by_node.values())
    usage: list[UsageError] = []

    async def one(node: str) -> None:
        async with sem:
            if stop.is_set() and not opts.ignore_errors:
                by_node[node].status = NodeStatus.NOT_STARTED
                return
            d = NodeDrain(kube, node, opts, on_event, use_eviction, by_node[node])
            try:
                await d.run(lock)
            except UsageError as e:
                # The command itself is wrong (e.g. the lock's limit): not one node's fault. It
                # ends the run like a failure; nodes already draining in parallel finish.
                stop.set()
                usage.append(e)
            except KubecareError as e:
                stop.set()
                on_event(Event("failed", f"error: {e}", node=node))

    try:
        # A TaskGroup: anything unexpected cancels the other nodes' drains.
        async with asyncio.TaskGroup() as tg:
            for n in nodes:
                tg.create_task(one(n))
    except BaseExceptionGroup as group:
        raise first_error(group) from None
    if usage:
        raise usage[0]
    failed = [r for r in by_node.values() if r.status in (NodeStatus.FAILED, NodeStatus.BLOCKED)]
    if failed:
        skipped = [r.node for r in by_node.values() if r.status is NodeStatus.NOT_STARTED]
        message = "; ".join(r.error for r in failed)
        if skipped:
            message += f"; not started: {', '.join(skipped)} (use --ignore-errors to go on after a failure)"
        raise DrainFailed(message, list(by_node.values()))
    return reports
