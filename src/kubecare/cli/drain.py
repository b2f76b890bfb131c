"""`kubecare drain` and `kubecare maintain`: rendering drain events and reports."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_drain_flags, add_node_selection, add_output

if TYPE_CHECKING:
    from kubecare.events import Event
    from kubecare.kube import Kube
    from kubecare.nodes.drain import NodeReport
    from kubecare.nodes.drain_plan import DrainPlan
    from kubecare.nodes.maintain import MaintainReport


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = subs.add_parser(
        "drain",
        help="cordon nodes and evict their pods like kubectl drain, honouring PodDisruptionBudgets",
    )
    add_node_selection(d)
    add_drain_flags(d)
    d.add_argument(
        "--plan",
        action="store_true",
        help="show what the drain would do (pods, PDBs, risks); change nothing",
    )
    d.add_argument("--parallel-nodes", type=int, default=1, help="drain this many nodes at once")
    d.add_argument(
        "--ignore-errors",
        action="store_true",
        help="with several nodes, go on after a node fails (kubectl's flag)",
    )
    d.add_argument(
        "-q", "--quiet", action="store_true", help="only waits, errors and the summary on stderr"
    )
    add_output(d)
    d.set_defaults(handler=drain_cmd, completes_nodes=True)

    m = subs.add_parser(
        "maintain",
        help="drain NODE, run a command (locally or over SSH), wait until Ready, uncordon",
        usage="%(prog)s NODE [options] -- COMMAND...",
    )
    m.add_argument("node", metavar="NODE", help="the node to maintain")
    m.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="run the command there over SSH")
    m.add_argument("--ssh-key", help="private key for --ssh (default: the agent, ~/.ssh/id_*)")
    m.add_argument("--known-hosts", help="known_hosts for --ssh (default ~/.ssh/known_hosts)")
    m.add_argument(
        "--expect-reboot", action="store_true", help="require a new boot ID before uncordoning"
    )
    m.add_argument(
        "--ready-timeout", default="10m", help="how long to wait for the node to be Ready again"
    )
    # An OS upgrade or reboot leaves DaemonSet pods where they are (they come back with the node),
    # as the Kubernetes docs' maintenance steps drain: `kubectl drain --ignore-daemonsets`.
    add_drain_flags(m, dry_run=False, ignore_daemonsets=True)
    add_output(m)
    m.set_defaults(handler=maintain_cmd, completes_nodes=True)


class ProgressPrinter:
    """Drain events as kubectl-like lines on stderr; waits on PDBs summarised every few seconds."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.blocked: dict[str, tuple[str, float]] = {}  # pod -> (pdbs, since)
        self.last_summary = 0.0
        self.last_lock = 0.0
        self.started = time.monotonic()
        self.done = 0

    def __call__(self, e: Event) -> None:
        from kubecare.cli.render import say

        if e.kind in ("evicted", "deleted", "replaced"):
            self.done += 1
            self.blocked.pop(e.pod, None)
        if e.kind == "blocked":
            first = e.pod not in self.blocked
            pdbs = ", ".join(e.data.get("pdbs") or []) or "a PodDisruptionBudget"
            self.blocked.setdefault(e.pod, (pdbs, time.monotonic()))
            if first:
                say(
                    f"waiting: pod {e.pod} blocked by {pdbs}; retrying as soon as it allows a disruption"
                )
            self._summary()
            return
        if e.kind == "lock-wait":
            if time.monotonic() - self.last_lock >= 10:
                self.last_lock = time.monotonic()
                say(e.message)
            return
        if self.quiet and e.kind in (
            "evicting",
            "evicted",
            "deleted",
            "replaced",
            "command-output",
        ):
            return  # -q: no per-pod lines; waits, warnings, errors and the summary remain
        say(e.message)

    def _summary(self) -> None:
        from kubecare.cli.render import say

        now = time.monotonic()
        if now - self.last_summary < 5 or not self.blocked:
            return
        self.last_summary = now
        by_pdb: dict[str, list[float]] = {}
        for pdbs, since in self.blocked.values():
            by_pdb.setdefault(pdbs, []).append(now - since)
        parts = [f"{len(w)} pod(s) on {p} (longest {max(w):.0f}s)" for p, w in by_pdb.items()]
        say(f"[{now - self.started:.0f}s] {self.done} evicted, waiting: " + "; ".join(parts))


def plan_text(plans: list[DrainPlan], surge: bool = False) -> str:
    from kubecare.cli.render import simple_table

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
        out.extend(f"hold: {h}" for h in p.holds)
        out.extend(
            f"surge: Deployment {d} is rolled out first (--surge): a new pod Ready elsewhere "
            "before its pod here goes"
            for d in p.to_surge
            if surge
        )
        out.extend(f"error: {e}" for e in p.errors)
        out.extend(f"warning: {w}" for w in p.warnings)
        out.append("")
    return "\n".join(out).rstrip()


def summary_text(reports: list[NodeReport]) -> str:
    from kubecare.cli.render import simple_table
    from kubecare.nodes.drain import PodState

    table = simple_table(
        ["node", "status", "evicted", "staying", "seconds", "longest pdb wait"],
        [
            (
                r.node,
                r.status.value,
                len(r.done),
                sum(1 for p in r.pods.values() if p.state is PodState.SKIPPED),
                f"{r.seconds:.1f}",
                f"{max((p.pdb_wait_seconds for p in r.pods.values()), default=0):.1f}s",
            )
            for r in reports
        ],
    )
    notes = [
        f"node/{r.node}: stopped with {len(r.in_flight)} pod(s) in flight: {', '.join(r.in_flight[:10])}"
        for r in reports
        if r.in_flight
    ]
    return "\n".join([table, *notes])


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


def drain_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.args import drain_options
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit, say
    from kubecare.errors import KubecareError, UsageError
    from kubecare.nodes.select import select_nodes, validate_selection

    validate_selection(args.nodes, args.selector)
    opts = drain_options(args)
    if args.parallel_nodes < 1:
        raise UsageError("--parallel-nodes must be at least 1")
    reports: list[NodeReport] = []

    async def body(kube: Kube) -> Any:
        targets = [
            n["metadata"]["name"]
            for n in await select_nodes(kube, args.nodes, args.selector, chunk_size=opts.chunk_size)
        ]
        if args.plan:
            from kubecare.nodes.drain_plan import plan_nodes

            return await plan_nodes(kube, targets, opts)
        from kubecare.nodes.drain import drain_nodes

        return await drain_nodes(
            kube,
            targets,
            opts,
            parallel_nodes=args.parallel_nodes,
            on_event=ProgressPrinter(args.quiet),
            reports=reports,
        )

    try:
        result = with_cluster(args, body)
    except KeyboardInterrupt:
        say(interrupted_note(reports))
        return 130
    except KubecareError:
        if reports:
            emit(reports, args.output, lambda: summary_text(reports))
        raise
    if args.plan:
        emit(result, args.output, lambda: plan_text(result, opts.surge))
        return 1 if any(p.blocked for p in result) else 0
    emit(result, args.output, lambda: summary_text(result))
    return 0


def maintain_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.args import drain_options
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit, say
    from kubecare.durations import parse_duration
    from kubecare.nodes.maintain import MaintainOptions, MaintainReport, maintain
    from kubecare.nodes.select import select_nodes

    opts = drain_options(args)
    mopts = MaintainOptions(
        command=tuple(args.command_line),
        ssh=args.ssh,
        known_hosts=args.known_hosts,
        identity=args.ssh_key,
        expect_reboot=args.expect_reboot,
        ready_timeout=float(parse_duration(args.ready_timeout, "--ready-timeout") or 0),
    )
    report = MaintainReport(args.node)

    async def body(kube: Kube) -> MaintainReport:
        await select_nodes(kube, [args.node], None)
        return await maintain(
            kube, args.node, mopts, opts, on_event=ProgressPrinter(), report=report
        )

    try:
        result = with_cluster(args, body)
    except KeyboardInterrupt:
        say(
            f"interrupted: node/{args.node} stays cordoned; uncordon it with kubecare uncordon {args.node} when it is healthy"
        )
        return 130
    node = args.node
    emit(
        result,
        args.output,
        lambda: (
            f"node/{node} maintained in {result.seconds:.1f}s: {len(result.drain.done) if result.drain else 0} pod(s) evicted, "
            f"command exited {result.exit_code}, node Ready{', rebooted' if result.boot_id_after != result.boot_id_before else ''}, "
            + ("left cordoned, as it was before" if result.left_cordoned else "uncordoned")
        ),
    )
    return 0
