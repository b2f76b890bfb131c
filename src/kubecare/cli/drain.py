"""`kubecare drain` and `kubecare maintain`: rendering drain events and reports."""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from kubecare.cli.common import client_options, run, with_kube
from kubecare.cli.render import Output, emit, err, simple_table
from kubecare.durations import parse_duration
from kubecare.errors import KubecareError, UsageError
from kubecare.events import Event
from kubecare.kube import Kube
from kubecare.nodes.cordon import DryRun
from kubecare.nodes.drain import DrainOptions, NodeReport, drain_nodes, plan_nodes
from kubecare.nodes.drain_plan import DrainPlan
from kubecare.nodes.maintain import MaintainOptions, MaintainReport, maintain
from kubecare.nodes.select import select_nodes, validate_selection


class ProgressPrinter:
    """Drain events as kubectl-like lines on stderr; waits on PDBs summarised every few seconds."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.blocked: dict[str, tuple[str, float]] = {}  # pod -> (pdbs, since)
        self.last_summary = 0.0
        self.last_lock = 0.0
        self.started = time.monotonic()
        self.counts = {"evicted": 0, "deleted": 0}

    def __call__(self, e: Event) -> None:
        if e.kind in ("evicted", "deleted"):
            self.counts[e.kind] += 1
            self.blocked.pop(e.pod, None)
        if e.kind == "blocked":
            first = e.pod not in self.blocked
            pdbs = ", ".join(e.data.get("pdbs") or []) or "a PodDisruptionBudget"
            self.blocked.setdefault(e.pod, (pdbs, time.monotonic()))
            if first:
                self._say(
                    f"waiting: pod {e.pod} blocked by {pdbs}; retrying as soon as it allows a disruption"
                )
            self._summary()
            return
        if e.kind == "lock-wait":
            if time.monotonic() - self.last_lock >= 10:
                self.last_lock = time.monotonic()
                self._say(e.message)
            return
        if self.quiet and e.kind in ("evicting", "evicted", "deleted"):
            return  # -q: no per-pod lines; waits, warnings, errors and the summary remain
        self._say(e.message)

    def _summary(self) -> None:
        now = time.monotonic()
        if now - self.last_summary < 5 or not self.blocked:
            return
        self.last_summary = now
        by_pdb: dict[str, list[float]] = {}
        for pdbs, since in self.blocked.values():
            by_pdb.setdefault(pdbs, []).append(now - since)
        parts = [f"{len(w)} pod(s) on {p} (longest {max(w):.0f}s)" for p, w in by_pdb.items()]
        done = self.counts["evicted"] + self.counts["deleted"]
        self._say(f"[{now - self.started:.0f}s] {done} evicted, waiting: " + "; ".join(parts))

    def _say(self, line: str) -> None:
        err.print(line, highlight=False, markup=False)


def drain_options(
    *,
    ignore_daemonsets: bool,
    force: bool,
    delete_emptydir_data: bool,
    grace_period: int,
    timeout: str,
    pod_selector: str | None,
    disable_eviction: bool,
    skip_wait_for_delete_timeout: int,
    chunk_size: int,
    dry_run: DryRun,
    concurrency: int,
    lock: bool,
    lock_namespace: str,
    max_concurrent_drains: int,
) -> DrainOptions:
    if grace_period < -1:
        raise UsageError(f"--grace-period must be -1 (the pod's own) or >= 0, not {grace_period}")
    for flag, value in (
        ("--skip-wait-for-delete-timeout", skip_wait_for_delete_timeout),
        ("--chunk-size", chunk_size),
    ):
        if value < 0:
            raise UsageError(f"{flag} must not be negative (got {value})")
    if concurrency < 1 or max_concurrent_drains < 1:
        raise UsageError("--concurrency and --max-concurrent-drains must be at least 1")
    return DrainOptions(
        ignore_daemonsets=ignore_daemonsets,
        force=force,
        delete_emptydir_data=delete_emptydir_data,
        grace_period=grace_period,
        timeout=float(parse_duration(timeout, "--timeout") or 0),
        pod_selector=pod_selector,
        disable_eviction=disable_eviction,
        skip_wait_for_delete_timeout=skip_wait_for_delete_timeout,
        chunk_size=chunk_size,
        dry_run=dry_run,
        concurrency=concurrency,
        lock=lock,
        lock_namespace=lock_namespace,
        max_concurrent_drains=max_concurrent_drains,
    )


# kubectl drain's flags, shared by drain and maintain.
IGNORE_DS = typer.Option(False, "--ignore-daemonsets", help="Ignore DaemonSet-managed pods.")
FORCE = typer.Option(
    False, "--force", help="Also delete pods without a controller (their data is lost)."
)
EMPTYDIR = typer.Option(
    False,
    "--delete-emptydir-data",
    help="Also delete pods with emptyDir volumes (their data is lost).",
)
GRACE = typer.Option(
    -1, "--grace-period", help="Seconds each pod gets to terminate; -1: its own, 0: immediately."
)
TIMEOUT = typer.Option(
    "0s", "--timeout", help="Give up after this long (e.g. 5m); 0s: wait forever."
)
POD_SELECTOR = typer.Option(
    None, "--pod-selector", help="Only evict pods matching this label selector."
)
DISABLE_EVICTION = typer.Option(
    False, "--disable-eviction", help="Delete instead of evict: BYPASSES PodDisruptionBudgets."
)
SKIP_WAIT = typer.Option(
    0,
    "--skip-wait-for-delete-timeout",
    help="Skip pods terminating for longer than this many seconds.",
)
CHUNK = typer.Option(500, "--chunk-size", help="List pods in chunks of this size (0: one request).")
CONCURRENCY = typer.Option(50, "--concurrency", help="Evictions in flight at once, per node.")
LOCK = typer.Option(
    True, "--lock/--no-lock", help="Take the cluster-wide maintenance lock (a Lease)."
)
LOCK_NS = typer.Option(
    "kube-system", "--lock-namespace", help="Namespace of the maintenance lock Leases."
)
MAX_DRAINS = typer.Option(
    1, "--max-concurrent-drains", help="Nodes in maintenance at once, across all kubecare runs."
)


def _print_plan(plans: list[DrainPlan]) -> str:
    out = []
    for p in plans:
        verdict = (
            "BLOCKED"
            if p.blocked
            else ("can finish now" if p.can_finish_now else "will wait on PodDisruptionBudgets")
        )
        out.append(
            f"node/{p.node}: {len(p.to_evict)} to evict, {len(p.pods) - len(p.to_evict)} staying — {verdict}"
        )
        out.append(
            simple_table(
                ["pod", "action", "owner", "ready", "pdbs", "data at risk", "reason"],
                [
                    (
                        q.key,
                        q.action.value,
                        q.owner,
                        "yes" if q.ready else "no",
                        ",".join(q.pdbs) or "-",
                        ",".join(q.data_loss) or "-",
                        q.reason or "-",
                    )
                    for q in p.pods
                ],
            )
            if p.pods
            else "(no pods)"
        )
        for pdb in p.pdbs:
            out.append(
                f"PDB {pdb.key}: {pdb.disruptions_allowed} disruption(s) allowed ({pdb.current_healthy}/{pdb.expected_pods} healthy, {pdb.desired_healthy} desired)"
            )
        for r in p.at_risk:
            out.append(
                f"LOSES ALL READY REPLICAS: {r.workload} ({r.ready_on_node} of {r.ready_total} ready replicas are on this node)"
            )
        for h in p.holds:
            out.append(f"hold: {h}")
        for e in p.errors:
            out.append(f"error: {e}")
        for w in p.warnings:
            out.append(f"warning: {w}")
        out.append("")
    return "\n".join(out).rstrip()


def _summary(reports: list[NodeReport]) -> str:
    return simple_table(
        ["node", "status", "evicted", "staying", "seconds", "longest pdb wait"],
        [
            (
                r.node,
                r.status,
                len(r.done),
                sum(1 for p in r.pods.values() if p.outcome == "skipped"),
                f"{r.seconds:.1f}",
                f"{max((p.pdb_wait_seconds for p in r.pods.values()), default=0):.1f}s",
            )
            for r in reports
        ],
    )


def interrupted_note(reports: list[NodeReport]) -> str:
    lines = ["interrupted. What was done:"]
    for r in reports:
        left = r.remaining
        lines.append(
            f"  node/{r.node}: {'cordoned' if r.cordoned else 'not cordoned'}, {len(r.done)} pod(s) evicted, "
            f"{len(left)} still to go{': ' + ', '.join(p.pod for p in left[:5]) if left else ''}"
        )
    lines.append("The nodes stay cordoned. Run the same command again to resume.")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command()
    def drain(
        ctx: typer.Context,
        nodes: list[str] | None = typer.Argument(None, help="Node names.", show_default=False),
        selector: str | None = typer.Option(
            None, "-l", "--selector", help="Label selector instead of names."
        ),
        ignore_daemonsets: bool = IGNORE_DS,
        force: bool = FORCE,
        delete_emptydir_data: bool = EMPTYDIR,
        grace_period: int = GRACE,
        timeout: str = TIMEOUT,
        pod_selector: str | None = POD_SELECTOR,
        disable_eviction: bool = DISABLE_EVICTION,
        skip_wait_for_delete_timeout: int = SKIP_WAIT,
        chunk_size: int = CHUNK,
        dry_run: DryRun = typer.Option(DryRun.NONE, "--dry-run", help="none, client or server."),
        plan: bool = typer.Option(
            False,
            "--plan",
            help="Show what the drain would do (pods, PDBs, risks); change nothing.",
        ),
        concurrency: int = CONCURRENCY,
        parallel_nodes: int = typer.Option(
            1, "--parallel-nodes", help="Drain this many nodes at once."
        ),
        lock: bool = LOCK,
        lock_namespace: str = LOCK_NS,
        max_concurrent_drains: int = MAX_DRAINS,
        quiet: bool = typer.Option(
            False, "-q", "--quiet", help="Only waits, errors and the summary on stderr."
        ),
        output: Output = typer.Option(Output.TABLE, "-o", "--output", help="table, json or yaml."),
    ) -> None:
        """Drain nodes like kubectl drain: cordon, then evict their pods, honouring PodDisruptionBudgets."""
        validate_selection(nodes or [], selector)
        opts = drain_options(
            ignore_daemonsets=ignore_daemonsets,
            force=force,
            delete_emptydir_data=delete_emptydir_data,
            grace_period=grace_period,
            timeout=timeout,
            pod_selector=pod_selector,
            disable_eviction=disable_eviction,
            skip_wait_for_delete_timeout=skip_wait_for_delete_timeout,
            chunk_size=chunk_size,
            dry_run=dry_run,
            concurrency=concurrency,
            lock=lock,
            lock_namespace=lock_namespace,
            max_concurrent_drains=max_concurrent_drains,
        )
        if parallel_nodes < 1:
            raise UsageError("--parallel-nodes must be at least 1")
        reports: list[NodeReport] = []

        async def body(kube: Kube) -> Any:
            targets = [
                n["metadata"]["name"] for n in await select_nodes(kube, nodes or [], selector)
            ]
            if plan:
                return await plan_nodes(kube, targets, opts)
            return await drain_nodes(
                kube,
                targets,
                opts,
                parallel_nodes=parallel_nodes,
                on_event=ProgressPrinter(quiet),
                reports=reports,
            )

        try:
            result = run(with_kube(client_options(ctx), body))
        except KeyboardInterrupt:
            err.print(interrupted_note(reports), highlight=False, markup=False)
            raise typer.Exit(130) from None
        except KubecareError:
            if reports and output is not Output.TABLE:
                emit(reports, output, lambda: "")
            elif reports:
                sys.stdout.write(_summary(reports) + "\n")
            raise
        if plan:
            emit(result, output, lambda: _print_plan(result))
            if any(p.blocked for p in result):
                raise typer.Exit(1)
            return
        emit(result, output, lambda: _summary(result))

    @app.command("maintain")
    def maintain_cmd(
        ctx: typer.Context,
        node: str = typer.Argument(..., help="The node to maintain."),
        command: list[str] = typer.Argument(
            ..., help="The work to do, after --; $NODE is set.", show_default=False
        ),
        ssh: str | None = typer.Option(
            None, "--ssh", help="Run the command on user@host[:port] over SSH."
        ),
        ssh_key: str | None = typer.Option(
            None, "--ssh-key", help="Private key for --ssh (default: the agent, ~/.ssh/id_*)."
        ),
        known_hosts: str | None = typer.Option(
            None, "--known-hosts", help="known_hosts file for --ssh (default ~/.ssh/known_hosts)."
        ),
        expect_reboot: bool = typer.Option(
            False, "--expect-reboot", help="Require a new boot ID before uncordoning."
        ),
        ready_timeout: str = typer.Option(
            "10m", "--ready-timeout", help="How long to wait for the node to be Ready again."
        ),
        ignore_daemonsets: bool = IGNORE_DS,
        force: bool = FORCE,
        delete_emptydir_data: bool = EMPTYDIR,
        grace_period: int = GRACE,
        timeout: str = TIMEOUT,
        pod_selector: str | None = POD_SELECTOR,
        disable_eviction: bool = DISABLE_EVICTION,
        skip_wait_for_delete_timeout: int = SKIP_WAIT,
        chunk_size: int = CHUNK,
        concurrency: int = CONCURRENCY,
        lock: bool = LOCK,
        lock_namespace: str = LOCK_NS,
        max_concurrent_drains: int = MAX_DRAINS,
        output: Output = typer.Option(Output.TABLE, "-o", "--output", help="table, json or yaml."),
    ) -> None:
        """Drain NODE, run COMMAND (locally or over SSH), wait until NODE is Ready, uncordon it."""
        opts = drain_options(
            ignore_daemonsets=ignore_daemonsets,
            force=force,
            delete_emptydir_data=delete_emptydir_data,
            grace_period=grace_period,
            timeout=timeout,
            pod_selector=pod_selector,
            disable_eviction=disable_eviction,
            skip_wait_for_delete_timeout=skip_wait_for_delete_timeout,
            chunk_size=chunk_size,
            dry_run=DryRun.NONE,
            concurrency=concurrency,
            lock=lock,
            lock_namespace=lock_namespace,
            max_concurrent_drains=max_concurrent_drains,
        )
        mopts = MaintainOptions(
            command=tuple(command),
            ssh=ssh,
            known_hosts=known_hosts,
            identity=ssh_key,
            expect_reboot=expect_reboot,
            ready_timeout=float(parse_duration(ready_timeout, "--ready-timeout") or 0),
        )
        report = MaintainReport(node)

        async def body(kube: Kube) -> MaintainReport:
            await select_nodes(kube, [node], None)
            return await maintain(
                kube, node, mopts, opts, on_event=ProgressPrinter(), report=report
            )

        try:
            result = run(with_kube(client_options(ctx), body))
        except KeyboardInterrupt:
            err.print(
                f"interrupted: node/{node} stays cordoned; uncordon it with kubecare uncordon {node} when it is healthy",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(130) from None
        emit(
            result,
            output,
            lambda: (
                f"node/{node} maintained in {result.seconds:.1f}s: {len(result.drain.done) if result.drain else 0} pod(s) evicted, "
                f"command exited {result.exit_code}, node Ready{', rebooted' if result.boot_id_after != result.boot_id_before else ''}, uncordoned"
            ),
        )
