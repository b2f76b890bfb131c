"""`kubecare nodes`, `cordon` and `uncordon`."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import DRY_RUNS, add_node_selection, add_output

if TYPE_CHECKING:
    from kubecare.kube import Kube
    from kubecare.nodes.inventory import NodeRow
    from kubecare.nodes.outage import OutageReport


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subs.add_parser(
        "nodes", help="list nodes: status, roles, kubelet version, pods, taints, age"
    )
    add_node_selection(p, many=False)
    p.add_argument(
        "--wide", action="store_true", help="also OS image, runtime and the outage report"
    )
    add_output(p)
    p.set_defaults(handler=nodes_cmd, completes_nodes=False)
    for name, verb in (("cordon", "unschedulable"), ("uncordon", "schedulable again")):
        c = subs.add_parser(name, help=f"mark nodes {verb} (idempotent)")
        add_node_selection(c)
        c.add_argument(
            "--dry-run",
            choices=DRY_RUNS,
            default="none",
            help="none, client (plan only) or server (ask the apiserver, persist nothing)",
        )
        add_output(c)
        c.set_defaults(handler=cordon_cmd, unschedulable=name == "cordon", completes_nodes=True)


def nodes_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import age, emit, simple_table
    from kubecare.nodes.inventory import list_nodes

    notes: list[str] = []

    async def body(kube: Kube) -> tuple[list[NodeRow], OutageReport | None]:
        rows = await list_nodes(kube, selector=args.selector, notes=notes)
        if not args.wide:
            return rows, None
        from kubecare.nodes.outage import outage_report
        from kubecare.nodes.snapshot import take_snapshot

        snap = await take_snapshot(kube)
        report = outage_report(snap.nodes, snap.pods, snap.settings, workloads=snap.workloads)
        notes.extend(n for n in snap.unseen if n not in notes)
        return rows, report

    rows, report = with_cluster(args, body)
    headers = ["name", "status", "roles", "version", "pods", "taints", "age"]

    def line(r: NodeRow) -> tuple[object, ...]:
        base = (
            r.name,
            r.status,
            ",".join(r.roles) or "<none>",
            r.kubelet_version,
            "" if r.pods is None else r.pods,
            ",".join(r.taints) or "<none>",
            age(r.age_seconds),
        )
        return base + ((r.os_image, r.container_runtime) if args.wide else ())

    def table() -> str:
        text = simple_table(
            headers + (["os-image", "container-runtime"] if args.wide else []),
            [line(r) for r in rows],
        )
        if report is not None:
            from kubecare.cli.outage import report_text

            text += "\n\n" + report_text(report)
        return text

    from kubecare.cli.render import say

    for n in notes:
        say(f"note: {n}")
    emit({"nodes": rows, "outage": report} if args.wide else rows, args.output, table)


def cordon_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit
    from kubecare.nodes.cordon import DryRun, apply_cordon, plan_cordon
    from kubecare.nodes.select import select_nodes, validate_selection

    validate_selection(args.nodes, args.selector)
    dry_run = DryRun(args.dry_run)

    async def body(kube: Kube) -> Any:
        targets = await select_nodes(kube, args.nodes, args.selector)
        return await apply_cordon(
            kube, plan_cordon(targets, unschedulable=args.unschedulable), dry_run=dry_run
        )

    results = with_cluster(args, body)
    suffix = {DryRun.NONE: "", DryRun.CLIENT: " (dry run)", DryRun.SERVER: " (server dry run)"}[
        dry_run
    ]
    emit(
        results,
        args.output,
        lambda: "\n".join(f"node/{r.node} {r.outcome}{suffix}" for r in results),
    )
