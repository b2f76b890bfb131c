"""`kubecare outage` and `kubecare risk`: node outages now, and what-ifs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.kube import Kube
    from kubecare.nodes.outage import NodeOutage, OutageReport
    from kubecare.nodes.risk import NodeRisk
    from kubecare.nodes.settings import OutageSettings
    from kubecare.nodes.snapshot import ClusterSnapshot


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds <= 0:
        return f"due {-seconds:.0f}s ago"
    return f"in {seconds:.0f}s"


def settings_lines(s: OutageSettings) -> list[str]:
    return [
        f"settings: {x.name}={x.seconds}s ({x.source})"
        for x in (s.node_monitor_grace_period, s.not_ready_toleration, s.unreachable_toleration)
    ]


def outage_text(nodes: tuple[NodeOutage, ...], notes: tuple[str, ...] = ()) -> str:
    from kubecare.cli.render import simple_table

    if not nodes:
        return "no node outage: every node is Ready and untainted"
    out = []
    for n in nodes:
        since = f" since {n.since.isoformat()}" if n.since is not None else ""
        taints = (
            ", ".join(
                f"{t.key}:{t.effect}"
                + (f" (added {t.time_added.isoformat()})" if t.time_added else "")
                for t in n.taints
            )
            or "none yet"
        )
        out.append(f"node/{n.node}: {n.condition}{since}; NoExecute taints: {taints}")
        out.append(
            simple_table(
                ["pod", "workload", "toleration", "evicted", "fate", "detail"],
                [
                    (
                        p.key,
                        p.workload,
                        "forever"
                        if p.toleration_seconds is None
                        else f"{p.toleration_seconds}s ({p.toleration_source})",
                        "Terminating" if p.terminating else _when(p.seconds_left),
                        p.fate.value,
                        p.detail,
                    )
                    for p in n.pods
                ],
            )
            if n.pods
            else "(no pods)"
        )
        for w in n.workloads_without_ready_replica:
            out.append(f"NO READY REPLICA: {w}")
        out.append("")
    out.extend(f"note: {x}" for x in notes)
    return "\n".join(out).rstrip()


def report_text(r: OutageReport) -> str:
    return "\n".join([*settings_lines(r.settings), outage_text(r.nodes, r.notes)])


def risk_text(risks: list[NodeRisk], settings: OutageSettings, ranked: bool) -> str:
    from kubecare.cli.render import simple_table

    out = settings_lines(settings)
    if ranked:
        out.append(
            simple_table(
                [
                    "rank",
                    "node",
                    "score",
                    "pods",
                    "lost",
                    "lose all replicas",
                    "below pdb",
                    "stuck",
                    "local data",
                ],
                [
                    (
                        i + 1,
                        r.node,
                        r.score,
                        r.pods,
                        len(r.lost_for_good),
                        len(r.lose_all_ready_replicas),
                        len(r.below_pdb),
                        len(r.stuck),
                        len(r.local_data),
                    )
                    for i, r in enumerate(risks)
                ],
            )
        )
    for r in risks if not ranked else risks[:1]:
        out.append(f"\nnode/{r.node} — if it went down now ({r.pods} pods):")
        out.extend(f"  {line}" for line in r.timeline)
        for title, items in (
            ("lost for good", r.lost_for_good),
            ("workloads losing every ready replica", r.lose_all_ready_replicas),
            ("PodDisruptionBudgets broken", r.below_pdb),
            ("stuck until the node returns (StatefulSet)", r.stuck),
            ("local data at risk", r.local_data),
        ):
            out.append(f"  {title}: {', '.join(items) if items else 'none'}")
        out.append(f"  if drained now: {r.drain_verdict}")
    return "\n".join(out)


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    o = subs.add_parser(
        "outage",
        help="NotReady/unreachable nodes: when each pod is evicted and what becomes of it",
    )
    add_output(o)
    o.set_defaults(handler=outage_cmd)
    r = subs.add_parser(
        "risk",
        help="what if NODE went down (or were drained) now: losses, PDBs, local data; changes nothing",
    )
    r.add_argument("node", nargs="?", metavar="NODE", help="the node to assess")
    r.add_argument(
        "--all", dest="all_nodes", action="store_true", help="rank every node by blast radius"
    )
    add_output(r)
    r.set_defaults(handler=risk_cmd, completes_nodes=True)


def outage_cmd(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit
    from kubecare.nodes.outage import outage_report
    from kubecare.nodes.snapshot import take_snapshot

    async def body(kube: Kube) -> OutageReport:
        snap = await take_snapshot(kube)
        report = outage_report(snap.nodes, snap.pods, snap.settings, workloads=snap.workloads)
        return replace(report, notes=report.notes + snap.unseen)

    report = with_cluster(args, body)
    emit(report, args.output, lambda: report_text(report))


def risk_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit, say
    from kubecare.errors import NotFound, UsageError
    from kubecare.nodes.risk import assess, rank
    from kubecare.nodes.snapshot import take_snapshot

    if bool(args.node) == args.all_nodes:
        raise UsageError("name one node, or pass --all")

    async def body(kube: Kube) -> tuple[list[NodeRisk], ClusterSnapshot]:
        snap = await take_snapshot(kube, volumes=True)
        if args.all_nodes:
            return rank(snap), snap
        if args.node not in {n["metadata"]["name"] for n in snap.nodes}:
            raise NotFound(
                f'node "{args.node}" not found; list nodes with: kubecare nodes', status=404
            )
        return [assess(str(args.node), snap)], snap

    risks, snap = with_cluster(args, body)
    data = {"settings": snap.settings, "nodes": [_risk_data(r) for r in risks],
            "unseen": snap.unseen}  # fmt: skip
    for n in snap.unseen:
        say(f"note: {n}")
    emit(data, args.output, lambda: risk_text(risks, snap.settings, args.all_nodes))


def _risk_data(r: NodeRisk) -> dict[str, object]:
    return {
        "node": r.node,
        "score": r.score,
        "pods": r.pods,
        "lost_for_good": r.lost_for_good,
        "lose_all_ready_replicas": r.lose_all_ready_replicas,
        "below_pdb": r.below_pdb,
        "stuck": r.stuck,
        "local_data": r.local_data,
        "timeline": r.timeline,
        "drain_verdict": r.drain_verdict,
        "eviction": r.outage.pods,
    }
