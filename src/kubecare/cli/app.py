"""The `kubecare` / `kubectl care` command line: a thin layer over the library.

Results go to stdout, progress and errors to stderr. Exit codes: 0 done, 1 the operation failed,
2 usage error. Expected failures print one ``error: ...`` line, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from rich.text import Text

from kubecare import __version__
from kubecare.cli.common import client_options, run, with_kube
from kubecare.cli.drain import register as register_drain
from kubecare.cli.outage import register as register_outage
from kubecare.cli.outage import report_text
from kubecare.cli.render import Output, age, emit, err, simple_table
from kubecare.cli.sandbox import sandbox_app
from kubecare.errors import KubecareError
from kubecare.kube import ClientOptions, Kube
from kubecare.nodes.cordon import DryRun, apply_cordon, plan_cordon
from kubecare.nodes.inventory import NodeRow, list_nodes
from kubecare.nodes.outage import OutageReport, outage_report
from kubecare.nodes.select import select_nodes, validate_selection
from kubecare.nodes.snapshot import take_snapshot

app = typer.Typer(
    name="kubecare",
    help="Kubernetes node maintenance: cordon, drain, maintain, node outages and risks, and a local sandbox.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


@app.callback()
def main_options(
    ctx: typer.Context,
    kubeconfig: str | None = typer.Option(
        None,
        "--kubeconfig",
        help="Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
    ),
    context: str | None = typer.Option(None, "--context", help="The kubeconfig context to use."),
    namespace: str | None = typer.Option(
        None, "-n", "--namespace", help="Namespace, where it applies."
    ),
    request_timeout: float = typer.Option(
        30.0, "--request-timeout", min=0.1, help="Seconds to wait for one API response."
    ),
    connect_timeout: float = typer.Option(
        5.0, "--connect-timeout", min=0.1, help="Seconds to wait for a connection to the apiserver."
    ),
) -> None:
    ctx.obj = ClientOptions(
        kubeconfig=kubeconfig,
        context=context,
        namespace=namespace,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
    )


@app.command()
def version() -> None:
    """Print kubecare's version."""
    typer.echo(f"kubecare {__version__}")


@app.command("nodes")
def nodes_cmd(
    ctx: typer.Context,
    selector: str | None = typer.Option(None, "-l", "--selector", help="Label selector."),
    wide: bool = typer.Option(
        False, "--wide", help="Also OS image and runtime, and the outage report."
    ),
    output: Output = typer.Option(Output.TABLE, "-o", "--output", help="table, json or yaml."),
) -> None:
    """List nodes: status, schedulability, roles, kubelet version, pods, taints, age."""

    async def body(kube: Kube) -> tuple[list[NodeRow], OutageReport | None]:
        rows = await list_nodes(kube, selector=selector)
        if not wide:
            return rows, None
        snap = await take_snapshot(kube)
        return rows, outage_report(snap.nodes, snap.pods, snap.settings)

    rows, report = run(with_kube(client_options(ctx), body))
    headers = ["name", "status", "roles", "version", "pods", "taints", "age"]

    def line(r: NodeRow) -> tuple[object, ...]:
        base = (
            r.name,
            r.status,
            ",".join(r.roles) or "<none>",
            r.kubelet_version,
            r.pods,
            ",".join(r.taints) or "<none>",
            age(r.age_seconds),
        )
        return base + ((r.os_image, r.container_runtime) if wide else ())

    def table() -> str:
        text = simple_table(
            headers + (["os-image", "container-runtime"] if wide else []), [line(r) for r in rows]
        )
        if report is not None:
            text += "\n\n" + report_text(report)
        return text

    emit({"nodes": rows, "outage": report} if wide else rows, output, table)


def _cordon(
    ctx: typer.Context,
    nodes: list[str],
    selector: str | None,
    dry_run: DryRun,
    output: Output,
    unschedulable: bool,
) -> None:
    validate_selection(nodes, selector)

    async def body(kube: Kube) -> Any:
        targets = await select_nodes(kube, nodes, selector)
        return await apply_cordon(
            kube, plan_cordon(targets, unschedulable=unschedulable), dry_run=dry_run
        )

    results = run(with_kube(client_options(ctx), body))
    suffix = {DryRun.NONE: "", DryRun.CLIENT: " (dry run)", DryRun.SERVER: " (server dry run)"}[
        dry_run
    ]
    emit(results, output, lambda: "\n".join(f"node/{r.node} {r.outcome}{suffix}" for r in results))


NODES_ARG = typer.Argument(None, help="Node names.", show_default=False)
SELECTOR_OPT = typer.Option(None, "-l", "--selector", help="Label selector instead of names.")
DRY_RUN_OPT = typer.Option(
    DryRun.NONE,
    "--dry-run",
    help="none, client (plan only) or server (ask the apiserver, persist nothing).",
)
OUTPUT_OPT = typer.Option(Output.TABLE, "-o", "--output", help="table, json or yaml.")


@app.command()
def cordon(
    ctx: typer.Context,
    nodes: list[str] | None = NODES_ARG,
    selector: str | None = SELECTOR_OPT,
    dry_run: DryRun = DRY_RUN_OPT,
    output: Output = OUTPUT_OPT,
) -> None:
    """Mark nodes unschedulable (idempotent)."""
    _cordon(ctx, nodes or [], selector, dry_run, output, True)


@app.command()
def uncordon(
    ctx: typer.Context,
    nodes: list[str] | None = NODES_ARG,
    selector: str | None = SELECTOR_OPT,
    dry_run: DryRun = DRY_RUN_OPT,
    output: Output = OUTPUT_OPT,
) -> None:
    """Mark nodes schedulable again (idempotent)."""
    _cordon(ctx, nodes or [], selector, dry_run, output, False)


app.add_typer(sandbox_app, name="sandbox")
register_drain(app)
register_outage(app)


def main(argv: list[str] | None = None) -> int:
    """Entry point of both `kubecare` and `kubectl-care`."""
    try:
        # Standalone mode prints usage errors (exit 2) and --help itself, and raises SystemExit.
        app(args=argv, prog_name="kubecare")
    except KubecareError as e:
        err.print(Text.assemble(("error: ", "red"), e.message), highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
