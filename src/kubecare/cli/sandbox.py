"""`kubecare sandbox ...`: build, start, inspect and stop local control planes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer

from kubecare.cli.common import run
from kubecare.cli.render import Output, emit, err, mib, simple_table
from kubecare.durations import parse_duration
from kubecare.sandbox.binaries import KUBE_VERSIONS, ensure_binaries, resolve_version

if TYPE_CHECKING:
    from kubecare.sandbox.cluster import ComponentStatus, Sandbox


def _sandbox(name: str) -> Sandbox:
    # Imported here, not at module level: it pulls in cryptography, which every other command
    # would pay for at start-up.
    from kubecare.sandbox.cluster import Sandbox

    return Sandbox(name)


sandbox_app = typer.Typer(
    help="A real local control plane for tests, demos and practice.", no_args_is_help=True
)

NAME_OPT = typer.Option("kubecare", "--name", help="Sandbox name (several can run at once).")


def _progress(message: str) -> None:
    err.print(f"[dim]…[/dim] {message}", highlight=False)


@sandbox_app.command()
def build(
    version: str | None = typer.Option(
        None,
        "--version",
        help=f"Kubernetes version ({', '.join(KUBE_VERSIONS)}); default the newest.",
    ),
    all_versions: bool = typer.Option(
        False, "--all", help="Build every supported Kubernetes version."
    ),
) -> None:
    """Build the binaries from source through the Go module proxy (cached per version)."""
    versions = list(KUBE_VERSIONS) if all_versions else [resolve_version(version)]
    for v in versions:
        t0 = time.monotonic()
        tools = ensure_binaries(v, _progress)
        err.print(f"binaries for v{v} ready in {time.monotonic() - t0:.0f}s")
        for name, path in sorted(tools.paths.items()):
            typer.echo(f"{name}\t{path}")


@sandbox_app.command()
def up(
    name: str = NAME_OPT,
    nodes: int = typer.Option(
        3, "--nodes", min=0, max=50, help="Worker nodes (plus one control-plane node)."
    ),
    version: str | None = typer.Option(
        None, "--version", help=f"Kubernetes version ({', '.join(KUBE_VERSIONS)})."
    ),
    pod_eviction_timeout: str | None = typer.Option(
        None,
        "--pod-eviction-timeout",
        help="Default not-ready/unreachable toleration (e.g. 15s); the apiserver's default is 300s.",
    ),
    node_monitor_grace_period: str | None = typer.Option(
        None,
        "--node-monitor-grace-period",
        help="How long a silent node stays Ready (e.g. 10s); default 50s.",
    ),
) -> None:
    """Start a sandbox and wait until /readyz is OK and every node is Ready."""
    from kubecare.sandbox.cluster import SandboxOptions

    opts = SandboxOptions(
        workers=nodes,
        version=version,
        pod_eviction_timeout=parse_duration(pod_eviction_timeout, "--pod-eviction-timeout"),
        node_monitor_grace_period=parse_duration(
            node_monitor_grace_period, "--node-monitor-grace-period"
        ),
    )
    sb = _sandbox(name)
    seconds = run(sb.up(opts, _progress))
    state = sb.load()
    err.print(
        f"sandbox [bold]{name}[/bold] (Kubernetes v{state.version}, {len(state.nodes)} nodes) is up in {seconds:.1f}s"
    )
    err.print(
        f"use it with: eval $(kubecare sandbox env --name {name})   or: kubectl --kubeconfig {sb.kubeconfig} get nodes"
    )


@sandbox_app.command()
def down(
    name: str = NAME_OPT,
    keep: bool = typer.Option(
        False, "--keep", help="Keep the state dir (etcd data, logs, certificates)."
    ),
) -> None:
    """Stop every process of the sandbox and remove its state (unless --keep)."""
    stopped = _sandbox(name).down(keep=keep)
    err.print(
        f"sandbox {name}: stopped {len(stopped)} processes"
        + (" (state kept)" if keep else ", state removed")
    )


@sandbox_app.command()
def env(name: str = NAME_OPT) -> None:
    """Print `export KUBECONFIG=...` for the sandbox (use with eval)."""
    sb = _sandbox(name)
    sb.load()
    typer.echo(f"export KUBECONFIG={sb.kubeconfig}")


@sandbox_app.command("list")
def list_cmd() -> None:
    """List sandboxes on this machine."""
    from kubecare.sandbox.cluster import list_sandboxes

    for n in list_sandboxes():
        typer.echo(n)


@sandbox_app.command()
def status(
    name: str = NAME_OPT, output: Output = typer.Option(Output.TABLE, "-o", "--output")
) -> None:
    """Each component: pid, port, version, health; the log tail of a crashed one."""
    sb = _sandbox(name)
    state, comps = sb.status()
    mem = sb.memory()
    data = {
        "name": name,
        "version": state.version,
        "apiserver": state.apiserver,
        "kubeconfig": str(sb.kubeconfig),
        "components": comps,
    }

    def table() -> str:
        lines = [f"sandbox {name}: Kubernetes v{state.version}, apiserver {state.apiserver}"]
        lines.append(
            simple_table(
                ["component", "pid", "port", "version", "healthy", "rss"],
                [
                    (c.name, c.pid or "-", c.port, c.version, _health(c), mib(mem.get(c.name, 0)))
                    for c in comps
                ],
            )
        )
        for c in comps:
            if not c.running and c.log_tail:
                lines.append(f"--- {c.name} is not running; last log lines:\n{c.log_tail}")
        return "\n".join(lines)

    emit(data, output, table)
    if not all(c.healthy for c in comps if not c.name.startswith("kwok-")):
        raise typer.Exit(1)


def _health(c: ComponentStatus) -> str:
    if not c.running:
        return "STOPPED"
    return "yes" if c.healthy else "no"


@sandbox_app.command()
def logs(
    component: str = typer.Argument(
        ..., help="etcd, kube-apiserver, kube-controller-manager, kube-scheduler or kwok-NODE."
    ),
    name: str = NAME_OPT,
    lines: int = typer.Option(50, "--tail", min=1, help="Lines to show."),
) -> None:
    """Show the end of one component's log."""
    typer.echo(_sandbox(name).logs(component, lines))


@sandbox_app.command("node-down")
def node_down(
    node: str = typer.Argument(..., help="Sandbox node name."),
    name: str = NAME_OPT,
    wait: bool = typer.Option(
        False, "--wait", help="Wait until the node lifecycle controller marks it NotReady."
    ),
) -> None:
    """The node stops reporting (its kwok stops), so the node lifecycle controller reacts."""
    run(_sandbox(name).node_down(node, wait=wait))
    err.print(f"node/{node} stopped reporting" + (" and is NotReady" if wait else ""))


@sandbox_app.command("node-up")
def node_up(
    node: str = typer.Argument(..., help="Sandbox node name."),
    name: str = NAME_OPT,
    reboot: bool = typer.Option(
        False, "--reboot", help="Come back with a new boot ID, as after a reboot."
    ),
) -> None:
    """The node resumes reporting and becomes Ready again."""
    run(_sandbox(name).node_up(node, reboot=reboot))
    err.print(f"node/{node} is reporting again and Ready")
