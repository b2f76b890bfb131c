"""Draining nodes: cordon, plan, evict (PDB-aware, bounded concurrency), wait by watch.

kubectl's semantics where kubectl is right (k8s.io/kubectl/pkg/drain): cordon first, the same
filters, eviction through policy/v1 falling back to delete, 404 counts as done, a recreated pod
with the same name counts as gone, ``--timeout`` bounds the whole eviction phase. Where kubectl's
users suffer, better: a 429 from a PodDisruptionBudget is retried as soon as a watch on that PDB
shows a disruption allowed (capped backoff otherwise) instead of every 5 s in silence; waiting for
deletion is one watch per node instead of one GET per pod per second; concurrency is bounded; a
cluster-wide Lease lock keeps concurrent runs from draining too many nodes at once.

Interrupted drains leave the node cordoned; running the same drain again resumes (already
evicted pods are gone from the node, so the new plan only has what is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubecare.errors import (
    Conflict,
    Forbidden,
    NotFound,
    OperationFailed,
    ServerError,
    TooManyRequests,
    Unreachable,
)
from kubecare.events import Event, EventSink, ignore
from kubecare.kube import JSON, Kube
from kubecare.kube.lock import maintenance_lock
from kubecare.kube.objects import parse_time, ref
from kubecare.kube.watch import watch
from kubecare.nodes.cordon import DryRun, set_unschedulable
from kubecare.nodes.drain_plan import DrainPlan, PodPlan, collect, plan_drain
from kubecare.nodes.filters import FilterOptions

MAX_PDB_BACKOFF = 8.0
TRANSIENT_RETRIES = 5  # unreachable apiserver / 5xx: 2+4+8+8+8 s of retries, then fail


@dataclass(frozen=True)
class DrainOptions:
    """kubectl drain's flags, plus kubecare's own (concurrency, lock)."""

    ignore_daemonsets: bool = False
    force: bool = False
    delete_emptydir_data: bool = False
    grace_period: int = -1  # -1: the pod's own terminationGracePeriodSeconds; 0: immediately
    timeout: float = 0  # seconds for the eviction phase; 0 = forever
    pod_selector: str | None = None
    disable_eviction: bool = False  # delete instead of evict: bypasses PodDisruptionBudgets
    skip_wait_for_delete_timeout: int = 0
    chunk_size: int = 500
    dry_run: DryRun = DryRun.NONE
    concurrency: int = 50
    lock: bool = True
    lock_namespace: str = "kube-system"
    max_concurrent_drains: int = 1
    lock_ttl: int = 60

    def filters(self) -> FilterOptions:
        return FilterOptions(
            ignore_daemonsets=self.ignore_daemonsets,
            force=self.force,
            delete_emptydir_data=self.delete_emptydir_data,
            skip_wait_for_delete_timeout=self.skip_wait_for_delete_timeout,
        )


@dataclass
class PodOutcome:
    """What happened to one pod during the drain."""

    pod: str
    outcome: str = "pending"  # evicted, deleted, gone, skipped, would evict, pending
    seconds: float = 0.0
    pdb_wait_seconds: float = 0.0
    attempts: int = 0
    message: str = ""


@dataclass
class NodeReport:
    """The drain of one node, filled in as it goes (so an interrupt can say what was done)."""

    node: str
    status: str = "pending"  # drained, blocked, failed, interrupted, planned
    cordoned: bool = False
    plan: DrainPlan | None = None
    pods: dict[str, PodOutcome] = field(default_factory=dict)
    seconds: float = 0.0
    started_at: float = 0.0  # wall clock (epoch) when the drain itself began (lock held) ...
    finished_at: float = 0.0  # ... and ended: lines up concurrent runs
    lock_wait_seconds: float = 0.0
    error: str = ""

    @property
    def done(self) -> list[PodOutcome]:
        return [p for p in self.pods.values() if p.outcome not in ("pending", "skipped")]

    @property
    def remaining(self) -> list[PodOutcome]:
        return [p for p in self.pods.values() if p.outcome == "pending"]


class DrainBlocked(OperationFailed):
    """Raised when filters block the drain; nothing was evicted. The message is kubectl's."""

    def __init__(self, node: str, errors: Sequence[str]) -> None:
        super().__init__(f'unable to drain node "{node}" due to error: ' + ", ".join(errors))
        self.node = node
        self.errors = tuple(errors)


class PdbWatcher:
    """Current ``disruptionsAllowed`` of every PDB, and a way to wait until one allows another."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.allowed: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        async with self._start_lock:
            if self._task is not None:
                return
            items, version = await self.kube.list_all(
                "/apis/policy/v1/poddisruptionbudgets", what="PodDisruptionBudgets"
            )
            self._update(items)
            self._task = asyncio.create_task(self._run(version))

    def _update(self, items: Sequence[JSON]) -> None:
        for pdb in items:
            self.allowed[ref(pdb)] = int((pdb.get("status") or {}).get("disruptionsAllowed") or 0)

    async def _run(self, version: str) -> None:
        async def relist() -> tuple[list[JSON], str]:
            return await self.kube.list_all("/apis/policy/v1/poddisruptionbudgets")

        async for ev in watch(
            self.kube,
            "/apis/policy/v1/poddisruptionbudgets",
            resource_version=version,
            relist=relist,
        ):
            items = ev.object.get("items", []) if ev.type == "RELISTED" else [ev.object]
            if ev.type == "DELETED":
                self.allowed.pop(ref(ev.object), None)
            else:
                self._update(items)
            async with self._changed:
                self._changed.notify_all()

    async def wait_allowed(self, keys: Sequence[str], timeout: float) -> None:
        """Return when one of ``keys`` allows a disruption after a change, or after ``timeout``."""

        def ready() -> bool:
            return not keys or any(self.allowed.get(k, 1) > 0 for k in keys)

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait()  # the 429 just said "not now": wait for news first
                await self._changed.wait_for(ready)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class DeletionTracker:
    """Knows which pods on a node still exist, by UID, from one watch (not one GET per pod)."""

    def __init__(
        self, kube: Kube, node: str, pods: Sequence[JSON], version: str, skip_after: int
    ) -> None:
        self.kube, self.node, self.skip_after = kube, node, skip_after
        self.present: dict[str, JSON] = {p["metadata"]["uid"]: p for p in pods}
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run(version))

    async def _run(self, version: str) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.node}"}

        async def relist() -> tuple[list[JSON], str]:
            return await self.kube.list_all("/api/v1/pods", params=params)

        try:
            async for ev in watch(
                self.kube, "/api/v1/pods", resource_version=version, params=params, relist=relist
            ):
                if ev.type == "RELISTED":
                    self.present = {p["metadata"]["uid"]: p for p in ev.object.get("items", [])}
                elif ev.type == "DELETED":
                    self.present.pop(ev.object["metadata"]["uid"], None)
                else:
                    self.present[ev.object["metadata"]["uid"]] = ev.object
                async with self._changed:
                    self._changed.notify_all()
        finally:  # the watch gave up (apiserver gone too long): wake the waiters so they can fail
            async with self._changed:
                self._changed.notify_all()

    def _gone(self, uid: str) -> bool:
        pod = self.present.get(uid)
        if pod is None:
            return True
        if self.skip_after > 0:
            # kubectl: a pod terminating longer than --skip-wait-for-delete-timeout counts as done
            deleted = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
            if deleted is not None and time.time() - deleted.timestamp() > self.skip_after:
                return True
        return False

    async def wait_gone(self, uid: str) -> None:
        async with self._changed:
            while not self._gone(uid):
                if self._task.done() and not self._task.cancelled():
                    error = self._task.exception()
                    raise OperationFailed(
                        f'lost the watch on pods of node "{self.node}": {error}; '
                        "the node stays cordoned; run the same drain again to resume"
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0 if self.skip_after > 0 else None):
                        await self._changed.wait()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task


async def eviction_supported(kube: Kube) -> bool:
    """Whether the server offers pods/eviction (policy/v1); else the drain deletes pods."""
    doc = await kube.get_json("/api/v1", what="API discovery (/api/v1)")
    return any(
        r.get("name") == "pods/eviction"
        and r.get("group", "policy") == "policy"
        and r.get("version", "v1") == "v1"
        for r in doc.get("resources") or []
    )


class NodeDrain:
    """Drains one node; ``report`` is always current, even when interrupted."""

    def __init__(
        self, kube: Kube, node: str, opts: DrainOptions, on_event: EventSink, use_eviction: bool
    ) -> None:
        self.kube, self.node, self.opts, self.emit = kube, node, opts, on_event
        self.use_eviction = use_eviction and not opts.disable_eviction
        self.report = NodeReport(node)
        self.pdbs = PdbWatcher(kube)
        self.deadline: float | None = None

    def _event(self, kind: str, message: str, pod: str = "", **data: object) -> None:
        self.emit(Event(kind, message, node=self.node, pod=pod, data=dict(data)))

    async def run(self) -> NodeReport:
        started = time.monotonic()
        opts = self.opts
        try:
            async with contextlib.AsyncExitStack() as stack:
                if opts.lock and opts.dry_run is DryRun.NONE:
                    await stack.enter_async_context(
                        maintenance_lock(
                            self.kube,
                            self.node,
                            namespace=opts.lock_namespace,
                            slots=opts.max_concurrent_drains,
                            ttl=opts.lock_ttl,
                            on_event=self.emit,
                        )
                    )
                    self.report.lock_wait_seconds = time.monotonic() - started
                self.report.started_at = time.time()
                await self._drain()
                self.report.finished_at = time.time()  # before the lock is given back
        except asyncio.CancelledError:
            self.report.status = "interrupted"
            raise
        except DrainBlocked as e:
            self.report.status, self.report.error = "blocked", e.message
            raise
        except Exception as e:
            self.report.status, self.report.error = "failed", str(e)
            raise
        finally:
            self.report.seconds = time.monotonic() - started
            self.report.finished_at = self.report.finished_at or time.time()
            await self.pdbs.stop()
        return self.report

    async def _drain(self) -> None:
        opts, node = self.opts, self.node
        if opts.dry_run is not DryRun.CLIENT:
            await set_unschedulable(self.kube, node, True, dry_run=opts.dry_run is DryRun.SERVER)
        self.report.cordoned = opts.dry_run is DryRun.NONE
        self._event("cordoned", f"node/{node} cordoned")
        facts = await collect(
            self.kube, node, pod_selector=opts.pod_selector, chunk_size=opts.chunk_size
        )
        plan = plan_drain(
            node, facts.pods, opts.filters(), daemonsets=facts.daemonsets, pdbs=facts.pdbs
        )
        self.report.plan = plan
        for p in plan.pods:
            self.report.pods[p.key] = PodOutcome(
                p.key, "pending" if p.action.value == "evict" else "skipped", message=p.reason
            )
        for w in plan.warnings:
            self._event("warning", f"Warning: {w}")
        if plan.blocked:
            raise DrainBlocked(node, plan.errors)
        if opts.dry_run is DryRun.CLIENT:
            for p in plan.to_evict:
                self.report.pods[p.key].outcome = "would evict"
                self._event("evicting", f"evicting pod {p.key} (dry run)", pod=p.key)
            self.report.status = "planned"
            return
        if opts.timeout > 0:
            self.deadline = time.monotonic() + opts.timeout
        tracker = None
        if opts.dry_run is DryRun.NONE:
            tracker = DeletionTracker(
                self.kube, node, facts.pods, facts.pods_version, opts.skip_wait_for_delete_timeout
            )
        sem = asyncio.Semaphore(max(1, opts.concurrency))
        try:
            async with asyncio.timeout_at(self._loop_deadline()):
                await asyncio.gather(*(self._remove(p, sem, tracker) for p in plan.to_evict))
        except TimeoutError:
            left = [p.pod for p in self.report.remaining]
            raise OperationFailed(
                f'drain of node "{node}" did not finish within --timeout={opts.timeout:g}s; '
                f"{len(left)} pod(s) left: {', '.join(left[:10])}{' ...' if len(left) > 10 else ''}; "
                "the node stays cordoned; run the same drain again to resume"
            ) from None
        finally:
            if tracker:
                await tracker.stop()
        self.report.status = "drained" if opts.dry_run is DryRun.NONE else "planned"
        self._event(
            "drained",
            f"node/{node} drained" + (" (server dry run)" if opts.dry_run is DryRun.SERVER else ""),
        )

    def _loop_deadline(self) -> float | None:
        if self.deadline is None:
            return None
        return asyncio.get_running_loop().time() + (self.deadline - time.monotonic())

    async def _remove(
        self, pod: PodPlan, sem: asyncio.Semaphore, tracker: DeletionTracker | None
    ) -> None:
        outcome = self.report.pods[pod.key]
        t0 = time.monotonic()
        suffix = " (server dry run)" if self.opts.dry_run is DryRun.SERVER else ""
        async with sem:
            done = await self._request_removal(pod, outcome, suffix)
        if done is not None:
            outcome.outcome, outcome.seconds = done, time.monotonic() - t0
            return
        if tracker is None:  # server dry run: the apiserver accepted it, nothing to wait for
            outcome.outcome, outcome.seconds = (
                "evicted" if self.use_eviction else "deleted",
                time.monotonic() - t0,
            )
            self._event("evicted", f"pod/{pod.name} evicted{suffix}", pod=pod.key)
            return
        await tracker.wait_gone(pod.uid)
        outcome.outcome = "evicted" if self.use_eviction else "deleted"
        outcome.seconds = time.monotonic() - t0
        self._event(
            outcome.outcome,
            f"pod/{pod.name} {outcome.outcome}",
            pod=pod.key,
            seconds=round(outcome.seconds, 2),
        )

    async def _request_removal(self, pod: PodPlan, outcome: PodOutcome, suffix: str) -> str | None:
        """Evict (or delete) until the apiserver accepts; returns an outcome if nothing is left to wait for."""
        backoff = 0.5
        transient = 0
        blocked_since: float | None = None
        self._event(
            "evicting",
            f"{'evicting' if self.use_eviction else 'deleting'} pod {pod.key}{suffix}",
            pod=pod.key,
        )
        while True:
            outcome.attempts += 1
            try:
                await self._send(pod)
            except NotFound:
                return "gone"
            except Conflict:
                return "gone"  # the UID precondition failed: the pod we meant is already gone
            except TooManyRequests as e:
                if blocked_since is None:
                    blocked_since = time.monotonic()
                waited = time.monotonic() - blocked_since
                outcome.pdb_wait_seconds = waited
                self._event(
                    "blocked",
                    f"pod {pod.key} waits on PDB {', '.join(pod.pdbs) or '(unknown)'}: {e.message.split(':', 1)[-1].strip()}",
                    pod=pod.key,
                    pdbs=list(pod.pdbs),
                    waited=round(waited, 1),
                )
                if e.retry_after:
                    await asyncio.sleep(e.retry_after)
                else:
                    await self.pdbs.ensure_started()
                    await self.pdbs.wait_allowed(pod.pdbs, backoff)
                    backoff = min(backoff * 2, MAX_PDB_BACKOFF)
                continue
            except Forbidden as e:
                if "being terminated" in e.message or "NamespaceTerminating" in e.message:
                    await asyncio.sleep(1)  # as kubectl: a terminating namespace refuses evictions
                    continue
                raise
            except (Unreachable, ServerError) as e:
                transient += 1
                if transient > TRANSIENT_RETRIES:
                    raise OperationFailed(
                        f'drain of node "{self.node}" stopped: {e.message} (after {transient - 1} retries); '
                        "the node stays cordoned; run the same drain again to resume"
                    ) from e
                self._event(
                    "retry",
                    f"retrying pod {pod.key} in {min(2**transient, 8)}s: {e.message}",
                    pod=pod.key,
                )
                await asyncio.sleep(min(2**transient, 8))
                continue
            if blocked_since is not None:
                outcome.pdb_wait_seconds = time.monotonic() - blocked_since
            return None

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


async def plan_nodes(kube: Kube, nodes: Sequence[str], opts: DrainOptions) -> list[DrainPlan]:
    """The detailed preflight plan for each node (``drain --plan``); changes nothing."""
    plans = []
    for node in nodes:
        facts = await collect(
            kube, node, pod_selector=opts.pod_selector, chunk_size=opts.chunk_size, detailed=True
        )
        plans.append(
            plan_drain(
                node,
                facts.pods,
                opts.filters(),
                daemonsets=facts.daemonsets,
                pdbs=facts.pdbs,
                owners=facts.owners,
                ready_replicas=facts.ready_replicas,
            )
        )
    return plans


async def drain_nodes(
    kube: Kube,
    nodes: Sequence[str],
    opts: DrainOptions,
    *,
    parallel_nodes: int = 1,
    on_event: EventSink = ignore,
    reports: list[NodeReport] | None = None,
) -> list[NodeReport]:
    """Drain ``nodes`` (one after another, or ``parallel_nodes`` at a time).

    Like kubectl, a node that cannot be drained does not stop the others; the first failure is
    raised at the end. ``reports`` (if given) is filled as nodes start, for interrupt reporting.
    """
    reports = reports if reports is not None else []
    use_eviction = not opts.disable_eviction and await eviction_supported(kube)
    sem = asyncio.Semaphore(max(1, parallel_nodes))
    failures: list[Exception] = []

    async def one(node: str) -> None:
        async with sem:
            d = NodeDrain(kube, node, opts, on_event, use_eviction)
            reports.append(d.report)
            try:
                await d.run()
            except OperationFailed as e:
                failures.append(e)
                on_event(Event("failed", f"error: {e}", node=node))

    await asyncio.gather(*(one(n) for n in nodes))
    if failures:
        if len(failures) == 1:
            raise failures[0]
        raise OperationFailed("; ".join(str(f) for f in failures))
    return reports
