"""``kubecare upgrade apply``: the plan carried out, node by node, with a journal.

The run: refuse a no-go plan (unless told which checks to ignore); check the executor (templates,
SSH logins) before anything changes; write the journal; take an etcd snapshot and a resource
backup (named in the journal, so a rollback knows where they are); then for each batch, for
each node, under the cluster maintenance lock:

    drain (kubecare drain's semantics) -> executor -> Ready at the target kubelet version
    -> uncordon

and after each batch the health gate: every node Ready and no workload that was available at
the start unavailable now (waited for up to ``gate_timeout``). The first failure stops the run:
the failed node stays cordoned, nodes not started stay untouched, the journal says where it
stopped, and the same command resumes from there without redoing finished nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubecare.errors import (
    TRANSIENT,
    KubecareError,
    NotFound,
    OperationFailed,
    UsageError,
)
from kubecare.events import Event, EventSink, ignore
from kubecare.kube import JSON, Kube
from kubecare.kube.informer import Informers
from kubecare.kube.objects import is_pod_ready
from kubecare.nodes.drain_options import DrainOptions
from kubecare.nodes.inventory import ready_status
from kubecare.upgrade import journal as jr
from kubecare.upgrade.executors import Executor
from kubecare.upgrade.journal import Journal, NodeRecord
from kubecare.upgrade.plan import MANDATORY, WORKER, NodeStep, Strategy, UpgradePlan
from kubecare.upgrade.window import Window
from kubecare.versions.semver import Version


@dataclass(frozen=True)
class ApplyOptions:
    target: Version
    # kubeadm's upgrade guide drains with --ignore-daemonsets: DaemonSet pods (kube-proxy, the
    # CNI) stay, or no real node could ever be drained.
    drain: DrainOptions = field(default_factory=lambda: DrainOptions(ignore_daemonsets=True))
    snapshot: bool = True
    snapshot_dir: Path = Path("~/.local/share/kubecare/etcd-snapshots")
    etcd_endpoints: tuple[Any, ...] = ()  # kubecare.etcd.members.Endpoint
    backup: bool = True
    backup_store: str | None = None
    backup_recipients: tuple[str, ...] = ()
    backup_allow_plaintext: bool = False
    backup_allow_partial: bool = False  # go on with a backup that misses types (RBAC)
    ready_timeout: float = 600.0
    gate_timeout: float = 300.0
    window: Window | None = None
    wait_for_window: bool = False
    ignore_preflight: tuple[str, ...] = ()  # check names, or ("all",)
    lock_slots: int = 1
    take_over: bool = False  # resume a journal whose owner looks alive elsewhere


@dataclass
class ApplyResult:
    journal: Journal
    resumed: bool
    skipped: list[str]  # nodes already at the target when the run started
    seconds: float


class WindowClosed(OperationFailed):
    exit_code = 3


def _now_local() -> datetime.datetime:
    return datetime.datetime.now().astimezone()


def refuse_no_go(plan: UpgradePlan, ignore: Sequence[str]) -> None:
    failing = [c for c in plan.checks if c.blocking and not c.ok]
    # kubeadm's mandatory version errors can never be overridden, not even by "all"
    left = [
        c for c in failing if c.name == MANDATORY or ("all" not in ignore and c.name not in ignore)
    ]
    if left:
        names = ", ".join(dict.fromkeys(c.name for c in left if c.name != MANDATORY))
        hint = f"; --ignore-preflight-errors={names} to go on anyway" if names else ""
        raise OperationFailed(
            "the upgrade plan is a no-go: "
            + "; ".join(c.detail for c in left)
            + f" (see kubecare upgrade plan --to {plan.target}{hint})"
        )


def new_journal(plan: UpgradePlan, executor: str) -> Journal:
    return Journal(
        target=plan.target,
        started=jr.now(),
        executor=executor,
        strategy=str(plan.strategy),
        max_unavailable=plan.max_unavailable,
        nodes=[NodeRecord(s.node, s.role, s.batch, cordoned=s.cordoned) for s in plan.pending],
        owner=jr.owner(),
    )


def _owner(obj: JSON, kind: str) -> str | None:
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return f"{obj['metadata']['namespace']}/{ref.get('name')}"
    return None


def unavailable(
    deployments: Sequence[JSON],
    statefulsets: Sequence[JSON],
    daemonsets: Sequence[JSON],
    replicasets: Sequence[JSON],
    pods: Sequence[JSON],
) -> set[str]:
    """Workloads with fewer Ready, not terminating pods than they want, counted from the pods
    themselves: the controllers' status counters lag behind an eviction by a moment, and a
    gate reading them right after an uncordon would pass on a stale "available"."""
    rs_owner = {
        f"{r['metadata']['namespace']}/{r['metadata']['name']}": d
        for r in replicasets
        if (d := _owner(r, "Deployment"))
    }
    ready: dict[str, int] = {}
    for pod in pods:
        if pod["metadata"].get("deletionTimestamp") or not is_pod_ready(pod):
            continue
        keys = []
        if (rs := _owner(pod, "ReplicaSet")) and rs in rs_owner:
            keys.append("Deployment/" + rs_owner[rs])
        for kind in ("StatefulSet", "DaemonSet"):
            if owner := _owner(pod, kind):
                keys.append(f"{kind}/{owner}")
        for k in keys:
            ready[k] = ready.get(k, 0) + 1
    out = set()
    for kind, objs in (("Deployment", deployments), ("StatefulSet", statefulsets)):
        for o in objs:
            replicas = (o.get("spec") or {}).get("replicas")
            want = 1 if replicas is None else int(replicas)
            key = f"{o['metadata']['namespace']}/{o['metadata']['name']}"
            if ready.get(f"{kind}/{key}", 0) < want:
                out.add(f"{o['metadata']['namespace']}/{kind}/{o['metadata']['name']}")
    for o in daemonsets:
        want = int((o.get("status") or {}).get("desiredNumberScheduled") or 0)
        key = f"{o['metadata']['namespace']}/{o['metadata']['name']}"
        if ready.get(f"DaemonSet/{key}", 0) < want:
            out.add(f"{o['metadata']['namespace']}/DaemonSet/{o['metadata']['name']}")
    return out


#: What the health gate reads, in the order :func:`unavailable` takes the workload types.
GATE_TYPES = {
    "nodes": "/api/v1/nodes",
    "deployments": "/apis/apps/v1/deployments",
    "statefulsets": "/apis/apps/v1/statefulsets",
    "daemonsets": "/apis/apps/v1/daemonsets",
    "replicasets": "/apis/apps/v1/replicasets",
    "pods": "/api/v1/pods",
}


async def unavailable_workloads(kube: Kube) -> set[str]:
    deps, sts, dss, rss, pods = await asyncio.gather(
        kube.list_objects("/apis/apps/v1/deployments"),
        kube.list_objects("/apis/apps/v1/statefulsets"),
        kube.list_objects("/apis/apps/v1/daemonsets"),
        kube.list_objects("/apis/apps/v1/replicasets"),
        kube.list_objects("/api/v1/pods"),
    )
    return unavailable(deps, sts, dss, rss, pods)


class Upgrade:
    def __init__(
        self,
        kube: Kube,
        executor: Executor,
        store: jr.Store,
        opts: ApplyOptions,
        *,
        on_event: EventSink = ignore,
    ) -> None:
        self.kube = kube
        self.executor = executor
        self.store = store
        self.opts = opts
        self.on_event = on_event
        self._write = asyncio.Lock()
        self._changes = 0  # journal changes made
        self._written = 0  # changes the last completed write carried
        self.journal: Journal | None = None
        self.baseline: set[str] = set()
        self.lost = ""  # why this run may no longer write the journal (another run took it)
        self._cache: Informers | None = None  # the gate's view, started at the first gate

    def _event(self, kind: str, message: str, node: str = "", **data: Any) -> None:
        self.on_event(Event(kind, message, node=node, data=data))

    async def _save(self, *, force: bool = False) -> None:
        """Write the journal. Nodes of a batch change it concurrently: a write that starts
        after a change includes it, so a caller whose change an earlier-queued write already
        carried returns without writing again (one PUT for many changes, not one each)."""
        assert self.journal is not None
        self._changes += 1
        mine = self._changes
        async with self._write:
            if self._written >= mine and not force:
                return
            upto = self._changes  # stores serialize the journal before their first await
            deadline = time.monotonic() + SAVE_RETRY
            while True:
                try:
                    await self.store.save(self.journal)
                    break
                except TRANSIENT:  # an apiserver restarting (a control-plane upgrade): again
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(1.0)
            self._written = upto

    # -- the run ---------------------------------------------------------------------------
    async def run(self, plan: UpgradePlan, existing: Journal | None) -> ApplyResult:
        t0 = time.monotonic()
        target = self.opts.target
        resumed = existing is not None and existing.state != "done"
        refuse_no_go(plan, self.opts.ignore_preflight)  # on resume: planned without its nodes
        if resumed:
            assert existing is not None
            jr.check_owner(existing, take_over=self.opts.take_over)
            journal = existing
            journal.state, journal.owner, journal.message = "running", jr.owner(), ""
            todo = [n for n in journal.nodes if n.state != jr.DONE]
            self._event("resume", f"resuming the upgrade to {journal.target} from {self.store.where}: "
                        f"{len(journal.done)} node(s) done, {len(todo)} to go")  # fmt: skip
        else:
            journal = new_journal(plan, self.executor.name)
        self.journal = journal
        steps = {s.node: s for s in plan.steps}
        pending = [steps[n.name] if n.name in steps else NodeStep(n.name, n.role, n.batch, ())
                   for n in journal.nodes if n.state != jr.DONE]  # fmt: skip
        # Before anything changes: the executor's own checks (templates, SSH logins, builds).
        if pending:
            surge_workers = journal.strategy == Strategy.SURGE and any(
                p.role == WORKER for p in pending
            )
            if surge_workers and not self.executor.supports_surge:
                raise UsageError(
                    "--strategy surge needs a way to add and remove nodes: the sandbox executor, "
                    "or --executor command with --provision-command and --deprovision-command"
                )
            await self.executor.check(pending, target)
            self._backup_preflight()
        await self.store.hold()
        stop = asyncio.Event()
        heartbeat: asyncio.Task[None] | None = None
        try:
            await self._save()
            heartbeat = asyncio.create_task(self._heartbeat(stop))
            if pending:
                # Outside the window nothing starts, not even the snapshot (it would be stale
                # by the time the window opens).
                await self._window()
                if self.opts.snapshot and not journal.snapshot:
                    journal.snapshot = await self._snapshot()
                    await self._save()
                if self.opts.backup and not journal.backup:
                    journal.backup = await self._backup()
                    await self._save()
            if journal.baseline is None:  # taken once, when the run first gets here
                journal.baseline = sorted(await unavailable_workloads(self.kube))
                await self._save()
            self.baseline = set(journal.baseline)
            if journal.gate_pending >= 0:  # the last run stopped at a failed health gate
                await self._gate_batch(journal.gate_pending, [])
            for batch in sorted({n.batch for n in journal.nodes if n.state != jr.DONE}):
                records = [n for n in journal.nodes if n.batch == batch and n.state != jr.DONE]
                await self._window()
                await self._batch([(r, steps.get(r.name) or NodeStep(r.name, r.role, r.batch, ()))
                                   for r in records])  # fmt: skip
            await self._stop_heartbeat(stop, heartbeat)
            journal.state, journal.message = "done", f"every node at {journal.target}"
            await self._save()
        except WindowClosed as e:
            await self._finish(stop, heartbeat, "paused", e.message)
            raise
        except KubecareError as e:
            await self._finish(stop, heartbeat, "failed", e.message)
            raise
        except Exception as e:  # a bug: the journal still says where it stopped, no traceback
            message = f"unexpected error: {e!r}"
            await self._finish(stop, heartbeat, "failed", message)
            raise OperationFailed(
                f"the upgrade stopped on an unexpected error ({e!r}); kubecare upgrade status shows "
                "where, and the same command resumes"
            ) from e
        finally:
            await self._stop_heartbeat(stop, heartbeat)
            if self._cache is not None:
                await self._cache.stop()
            self.store.release()
        self._event("done", f"upgrade to {journal.target} complete: {len(journal.nodes)} node(s)")
        if journal.backup:
            self._unpin(journal.backup)
        skipped = [s.node for s in plan.steps if s.up_to_date]
        return ApplyResult(journal, resumed, skipped, time.monotonic() - t0)

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Write the journal every HEARTBEAT seconds, so another run can tell this one lives.
        A write refused because another run took the journal over stops this run at its next
        step; any other failed write (the apiserver restarting) is tried again next beat."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), jr.HEARTBEAT)
            if stop.is_set():
                return
            try:
                await self._save(force=True)
            except jr.JournalTaken as e:
                self.lost = e.message
                return
            except KubecareError as e:
                self._event("journal", f"journal not written ({e.message}); trying again")

    async def _stop_heartbeat(self, stop: asyncio.Event, task: asyncio.Task[None] | None) -> None:
        """Stop the heartbeat and wait for it: a write it had in flight finishes first, so the
        next write carries the resourceVersion it got."""
        stop.set()
        if task is not None:
            with contextlib.suppress(Exception):
                await task

    async def _finish(
        self, stop: asyncio.Event, task: asyncio.Task[None] | None, state: str, message: str
    ) -> None:
        """Record how the run ended; a journal that cannot be written then must not hide the
        error that ended the run."""
        await self._stop_heartbeat(stop, task)
        assert self.journal is not None
        self.journal.state, self.journal.message = state, message
        with contextlib.suppress(KubecareError):
            await self._save()

    def _check_lost(self) -> None:
        if self.lost:
            raise OperationFailed(f"this run lost its journal: {self.lost}")

    async def _gate_batch(self, batch: int, nodes: list[str]) -> None:
        """The health gate after ``batch``, recorded as pending until it passes: a run that
        stops here checks it again when resumed, before any other node."""
        assert self.journal is not None
        self.journal.gate_pending = batch
        await self._save()
        await self._gate(nodes or [f"batch {batch + 1}"])
        self.journal.gate_pending = -1

    async def _window(self) -> None:
        w = self.opts.window
        if w is None:
            return
        now = _now_local()
        if w.contains(now):
            return
        opening = w.next_opening(now)
        if self.opts.wait_for_window:
            self._event(
                "window",
                f"outside the maintenance window {w.text}; waiting until {opening:%a %H:%M}",
            )
            while not w.contains(_now_local()):  # noqa: ASYNC110 (a clock, not an event)
                await asyncio.sleep(20)
            return
        assert self.journal is not None
        left = len([n for n in self.journal.nodes if n.state != jr.DONE])
        raise WindowClosed(
            f"outside the maintenance window {w.text} (it opens {opening:%a %Y-%m-%d %H:%M}); "
            f"{left} node(s) left: run the same command again then (or add --wait-for-window)"
        )

    async def _batch(self, batch: list[tuple[NodeRecord, NodeStep]]) -> None:
        errors: list[KubecareError] = []

        async def one(rec: NodeRecord, step: NodeStep) -> None:
            try:
                await self._node(rec, step)
            except KubecareError as e:
                errors.append(e)
            except Exception as e:  # a bug must not cancel the other nodes mid-drain
                rec.state, rec.error = jr.FAILED, f"unexpected error: {e!r}"
                errors.append(
                    OperationFailed(
                        f"node {rec.name} failed with an unexpected error ({e!r}); it may be "
                        "cordoned: check it, then run the same command again"
                    )
                )

        # Nodes of one batch go together; one failing lets the others in flight finish (a node
        # stopped mid-drain or mid-upgrade would be worse), then the run stops.
        await asyncio.gather(*(one(r, s) for r, s in batch))
        if errors:
            raise errors[0]
        t0 = time.monotonic()
        await self._gate_batch(batch[0][0].batch, [r.name for r, _ in batch])
        took = time.monotonic() - t0
        for r, _ in batch:
            r.seconds["gate"] = round(took, 3)
        await self._save()

    async def _node(self, rec: NodeRecord, step: NodeStep) -> None:
        from kubecare.kube.lock import maintenance_lock

        d = self.opts.drain
        rec.attempts += 1
        rec.started, rec.error, rec.state = jr.now(), "", jr.PENDING
        surge = (
            self.journal is not None
            and self.journal.strategy == Strategy.SURGE
            and rec.role == WORKER
        )
        t_node = time.monotonic()
        try:
            if d.lock:
                async with maintenance_lock(
                    self.kube, rec.name, namespace=d.lock_namespace,
                    slots=max(self.opts.lock_slots, d.max_concurrent_drains), ttl=d.lock_ttl,
                    timeout=d.lock_timeout, on_event=self.on_event,
                ) as lock:  # fmt: skip
                    await self._steps(rec, step, surge, lock)
            else:
                await self._steps(rec, step, surge, None)
        except KubecareError as e:
            phase = {
                jr.PENDING: "lock",
                jr.DRAINING: "drain",
                jr.UPGRADING: "deprovision" if surge else "upgrade",
                jr.WAITING: "wait",
                jr.UNCORDONING: "uncordon",
            }.get(rec.state, rec.state)
            rec.state, rec.error = jr.FAILED, f"{phase}: {e.message}"
            with contextlib.suppress(KubecareError):  # the node's error is the one to report
                await self._save()
            where = (
                "it stays cordoned" if phase not in ("lock", "provision") else "it was not touched"
            )
            raise OperationFailed(
                f"node {rec.name} failed while {_doing(phase)}: {e.message}; {where}. Fix the cause, "
                f"then run the same kubecare upgrade apply again: finished nodes are not redone "
                f"(kubecare upgrade status shows where it stopped)"
            ) from None
        rec.seconds["total"] = round(time.monotonic() - t_node, 3)

    async def _steps(self, rec: NodeRecord, step: NodeStep, surge: bool, lock: Any) -> None:
        from kubecare.nodes.cordon import set_unschedulable
        from kubecare.nodes.drain import drain_nodes

        target = self.opts.target
        self._check_lost()
        if surge:
            t0 = time.monotonic()
            if not rec.replaced_by:
                rec.state = "provision"
                await self._save()
                rec.replaced_by = await self.executor.provision(step, target, self._line(rec.name))
                await self._save()
            # also on resume: the old node is drained only once its replacement is Ready
            await self._wait_node(rec.replaced_by, target)
            rec.seconds["provision"] = round(time.monotonic() - t0, 3)
        rec.state = jr.DRAINING
        await self._save()
        t0 = time.monotonic()
        self._event("node", f"node {rec.name}: draining", rec.name)
        await drain_nodes(self.kube, [rec.name], self.opts.drain, on_event=self.on_event, lock=lock)
        rec.seconds["drain"] = round(time.monotonic() - t0, 3)
        _check(lock)
        self._check_lost()
        if surge:
            rec.state = jr.UPGRADING
            await self._save()
            t0 = time.monotonic()
            await self.executor.deprovision(rec.name, self._line(rec.name))
            rec.seconds["executor"] = round(time.monotonic() - t0, 3)
            rec.state, rec.finished = jr.DONE, jr.now()
            await self._save()
            return
        rec.state = jr.UPGRADING
        await self._save()
        t0 = time.monotonic()
        self._event(
            "node", f"node {rec.name}: upgrading with the {self.executor.name} executor", rec.name
        )
        # A control-plane step restarts the apiserver (on one control plane, or behind a
        # load balancer, the one this run talks to): the lock rides that out.
        riding = lock is not None and rec.role != WORKER
        async with lock.ride_out() if riding else contextlib.nullcontext():
            await self.executor.upgrade(step, target, self._line(rec.name))
        rec.seconds["executor"] = round(time.monotonic() - t0, 3)
        _check(lock)
        rec.state = jr.WAITING
        await self._save()
        t0 = time.monotonic()
        await self._wait_node(rec.name, target)
        rec.seconds["ready"] = round(time.monotonic() - t0, 3)
        _check(lock)
        rec.state = jr.UNCORDONING
        await self._save()
        t0 = time.monotonic()
        if rec.cordoned:
            self._event("node", f"node {rec.name}: left cordoned, as before the upgrade", rec.name)
        else:
            await set_unschedulable(self.kube, rec.name, False)
        rec.seconds["uncordon"] = round(time.monotonic() - t0, 3)
        rec.state, rec.finished = jr.DONE, jr.now()
        await self._save()
        self._event("node-done", f"node {rec.name}: at {target}, uncordoned", rec.name)

    def _line(self, node: str) -> Any:
        def line(text: str) -> None:
            self.on_event(Event("executor-output", text, node=node))

        return line

    async def _wait_node(self, node: str, target: Version) -> None:
        """Until the node is Ready and its kubelet reports the target version."""
        want = str(target)
        deadline = time.monotonic() + self.opts.ready_timeout
        version, ready = "", False
        while True:
            try:
                obj = await self.kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
            except (NotFound, *TRANSIENT):  # not registered yet, or a blip: ask again
                obj = None
            if obj is not None:
                info = (obj.get("status") or {}).get("nodeInfo") or {}
                version = str(info.get("kubeletVersion", ""))
                ready = ready_status(obj) == "True"
                if ready and _at_least(version, target):
                    return
            if time.monotonic() > deadline:
                why = (
                    "not Ready"
                    if not ready
                    else f"its kubelet reports {version or '?'}, not {want}"
                )
                raise OperationFailed(f"node {node} is {why} after {self.opts.ready_timeout:g}s")
            await asyncio.sleep(0.5)

    async def _gate(self, nodes: list[str]) -> None:
        """Every node Ready; nothing that was available at the start unavailable now.

        Watched, then confirmed: informers (one list per type for the whole run, then watches)
        are looked at once a second, and only when their connected view passes is the state
        read once more with consistent lists — a watch lags, and one can be silently dead for a
        while, so the pass is never decided on it alone. One confirming list per type per gate
        (more only if the view was wrong), not one a second."""
        deadline = time.monotonic() + self.opts.gate_timeout
        cache = self._informers()
        not_ready: list[str] = []
        down: list[str] = []
        while True:
            late = time.monotonic() > deadline
            read = False
            failed: KubecareError | None = None
            if cache.fresh():
                watched = cache["nodes"].items()
                lists = [cache[name].items() for name in list(GATE_TYPES)[1:]]
                not_ready, down = self._judge(watched, unavailable(*lists))
            if late or (cache.fresh() and not not_ready and not down):
                # Confirmed by lists; and at the deadline the lists decide (and name what is
                # down) even if the watches never settled — a short --gate-timeout or a
                # flapping watch must not turn a healthy or a precisely broken cluster into
                # "could not be read".
                try:
                    listed, workloads = await asyncio.gather(
                        self.kube.list_objects("/api/v1/nodes"),
                        unavailable_workloads(self.kube),
                    )
                    not_ready, down = self._judge(listed, workloads)
                    read = True
                    if not not_ready and not down:
                        return
                except TRANSIENT as e:  # a blip of the apiserver is not a failed gate
                    failed = e
            if late:
                what = []
                if not read:
                    err = failed or cache.error()
                    what.append(
                        "the cluster's state could not be read"
                        + (f" ({err.message})" if err else " (its watches keep breaking)")
                    )
                if not_ready:
                    what.append(f"nodes not Ready: {', '.join(not_ready)}")
                if down:
                    what.append(f"workloads unavailable since the upgrade began: {', '.join(down)}")
                raise OperationFailed(
                    f"health gate after {', '.join(nodes)} failed after {self.opts.gate_timeout:g}s: "
                    + "; ".join(what)
                    + "; those nodes are upgraded and uncordoned, the rest untouched"
                )
            await asyncio.sleep(1.0)

    def _judge(self, nodes: Sequence[JSON], down: set[str]) -> tuple[list[str], list[str]]:
        not_ready = sorted(n["metadata"]["name"] for n in nodes if ready_status(n) != "True")
        return not_ready, sorted(down - self.baseline)

    def _informers(self) -> Informers:
        if self._cache is None:
            self._cache = Informers(self.kube, GATE_TYPES)
            self._cache.start()
        return self._cache

    # -- before the first node ---------------------------------------------------------------
    def _backup_preflight(self) -> None:
        o = self.opts
        needs_backup = o.backup and not (self.journal and self.journal.backup)
        if needs_backup and not o.backup_recipients and not o.backup_allow_plaintext:
            raise UsageError(
                "the resource backup taken before the upgrade needs a recipient for its "
                "Secrets: --encrypt-to (or ~/.config/kubecare/backup-recipients.txt), "
                "--backup-allow-plaintext-secrets, or --no-backup"
            )
        if o.snapshot and not (self.journal and self.journal.snapshot) and not o.etcd_endpoints:
            raise UsageError(
                "no etcd endpoint for the snapshot taken before the upgrade: give "
                "--etcd-endpoints/--etcd-cacert/--etcd-cert/--etcd-key (or run on a control-plane "
                "node), or --no-snapshot"
            )

    async def _snapshot(self) -> str:
        from kubecare.etcd.grpc import pick_healthy
        from kubecare.etcd.save import save

        directory = self.opts.snapshot_dir.expanduser()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        dest = directory / f"etcd-before-{self.opts.target}-{stamp}.db"
        eps = list(self.opts.etcd_endpoints)
        ep = (await pick_healthy(eps))[0] if len(eps) > 1 else eps[0]
        t0 = time.monotonic()
        saved = await save(ep, dest, verify=True)
        self._event(
            "snapshot",
            f"etcd snapshot {dest} ({saved.bytes / 1e6:.1f} MB, {time.monotonic() - t0:.1f}s)",
        )
        return str(dest)

    async def _backup(self) -> str:
        from kubecare.backup.create import CreateOptions, create_backup
        from kubecare.backup.stores import check_name, open_store

        store = open_store(self.opts.backup_store)
        name = check_name(f"before-{self.opts.target}-{time.strftime('%Y%m%d-%H%M%S')}".lower())
        options = CreateOptions(
            recipients=self.opts.backup_recipients,
            allow_plaintext_secrets=self.opts.backup_allow_plaintext,
        )
        t0 = time.monotonic()
        with store.staging(name) as dest:
            result = await create_backup(self.kube, dest, name, options)
        where = f"{store.url.rstrip('/')}/{name}.tar.zst"
        if result.partial and not self.opts.backup_allow_partial:
            from kubecare.backup.scope import describe_missing

            raise OperationFailed(
                f"the resource backup taken before the upgrade is partial "
                f"({describe_missing(result.missing)} not backed up; kept at {where}); no node "
                "was touched: grant the credentials list on those types, or pass "
                "--backup-allow-partial (or --no-backup)"
            )
        # Retention must not rotate out the backup a rollback of this run would need.
        store.pin(name, f"rollback backup of the unfinished upgrade to {self.opts.target}")
        self._event(
            "backup",
            f"resource backup {where} ({result.objects} objects, {time.monotonic() - t0:.1f}s)"
            + (f"; partial: {', '.join(result.missing)} missing" if result.partial else ""),
        )
        return where

    def _unpin(self, where: str) -> None:
        """The run is over: its backup is an ordinary one again."""
        try:
            unpin(where)
        except KubecareError as e:
            self._event("backup", f"backup {where} left pinned ({e.message})")


def unpin(where: str) -> None:
    """Unpin the backup at ``where`` (``<store>/<name>.tar.zst``, as a journal records it)."""
    from kubecare.backup.archive import SUFFIX
    from kubecare.backup.stores import open_store

    store_url, _, file = where.rpartition("/")
    open_store(store_url or None).unpin(file.removesuffix(SUFFIX))


SAVE_RETRY = 60.0  # seconds a journal write is retried while the apiserver is unreachable


def _at_least(version: str, target: Version) -> bool:
    """The kubelet reports the target, or a newer patch of its minor (a package manager may
    install the newest patch)."""
    try:
        v = Version.parse(version)
    except ValueError:
        return False
    return v >= target and (v.major, v.minor) == (target.major, target.minor)


def _check(lock: Any) -> None:
    if lock is not None and lock.lost.is_set():
        raise lock.lost_error()


def _doing(phase: str) -> str:
    return {
        "lock": "waiting for the maintenance lock",
        "provision": "adding its replacement node",
        "drain": "draining",
        "deprovision": "removing it",
        "upgrade": "running the executor's upgrade steps",
        "wait": "waiting for it to be Ready at the target version",
        "uncordon": "uncordoning",
    }.get(phase, phase)
