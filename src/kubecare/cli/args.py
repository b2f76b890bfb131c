"""Flags shared by several commands, declared once.

Kept free of heavy imports: every command's flags are declared at start-up (``--help`` and shell
completion need them), while the code behind a command is imported only when it runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubecare.kube import ClientOptions
    from kubecare.nodes.drain_options import DrainOptions

OUTPUTS = ("table", "json", "yaml")
DRY_RUNS = ("none", "client", "server")


def add_global_flags(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """kubectl's global flags. They are accepted before and after the subcommand, as kubectl's
    are: the root parser holds the defaults, every subcommand parser declares them again with
    ``SUPPRESS`` so a value given after the subcommand wins and an absent one changes nothing."""

    def d(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    def h(text: str) -> str:
        return text if defaults else argparse.SUPPRESS  # listed once, in `kubecare --help`

    g = parser.add_argument_group("global options (before or after the command)")
    g.add_argument(
        "--kubeconfig",
        default=d(None),
        metavar="FILE",
        help=h("kubeconfig file(s) (default: $KUBECONFIG, ~/.kube/config, in-cluster)"),
    )
    g.add_argument("--context", default=d(None), help=h("the kubeconfig context to use"))
    g.add_argument("-n", "--namespace", default=d(None), help=h("namespace, where it applies"))
    g.add_argument(
        "--request-timeout",
        type=_positive_seconds,
        default=d(30.0),
        metavar="SECONDS",
        help=h("how long to wait for one API response (default 30)"),
    )
    g.add_argument(
        "--connect-timeout",
        type=_positive_seconds,
        default=d(5.0),
        metavar="SECONDS",
        help=h("how long to wait for a connection to the apiserver (default 5)"),
    )


def _positive_seconds(text: str) -> float:
    from kubecare.durations import go_duration_seconds

    seconds = go_duration_seconds(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive number of seconds (e.g. 30 or 30s)"
        )
    return seconds


def client_options(args: argparse.Namespace) -> ClientOptions:
    """The global flags as the library's :class:`ClientOptions`."""
    from kubecare.kube import ClientOptions

    return ClientOptions(
        kubeconfig=args.kubeconfig,
        context=args.context,
        namespace=args.namespace,
        connect_timeout=args.connect_timeout,
        request_timeout=args.request_timeout,
        addresses=_sandbox_addresses(args),
    )


def _sandbox_addresses(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """A sandbox's apiservers as the host reaches them, when the command talks to a sandbox:
    ``--sandbox NAME``, or a kubeconfig that is a sandbox's own file (``sandbox env``). Its
    nodes' 192.0.2.x addresses exist only inside its network namespaces; dialled from the host
    they would leave the machine."""
    import os

    from kubecare.sandbox.state import state_root
    from kubecare.sandbox.target import api_addresses, sandbox_of_context

    name = getattr(args, "sandbox", None) or sandbox_of_context(getattr(args, "context", None))
    if not name:
        path = args.kubeconfig or os.environ.get("KUBECONFIG", "")
        if not path or os.pathsep in path:
            return ()
        where = Path(path).absolute()
        if where.parent.parent != state_root().absolute():
            return ()
        name = where.parent.name
    return api_addresses(name)


def add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o", "--output", choices=OUTPUTS, default="table", help="table (default), json or yaml"
    )


def add_node_selection(parser: argparse.ArgumentParser, *, many: bool = True) -> None:
    if many:
        parser.add_argument("nodes", nargs="*", metavar="NODE", help="node names")
    parser.add_argument("-l", "--selector", help="label selector instead of names")


def add_drain_flags(
    parser: argparse.ArgumentParser, *, dry_run: bool = True, ignore_daemonsets: bool = False
) -> None:
    """kubectl drain's flags and kubecare's own: declared once for drain, maintain and upgrade,
    read back by :func:`drain_options`.

    ``ignore_daemonsets``: the default of --ignore-daemonsets. kubectl drain's is false; an
    upgrade's and maintain's are true, as kubeadm's upgrade guide and the node maintenance docs
    drain (``kubectl drain --ignore-daemonsets``): every real cluster runs kube-proxy and a CNI as
    DaemonSets, whose pods a drain cannot move."""
    g = parser.add_argument_group("drain options (kubectl drain's)")
    if ignore_daemonsets:
        g.add_argument(
            "--ignore-daemonsets",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="leave DaemonSet-managed pods running on the drained node (default: yes, as "
            "the upgrade and maintenance guides drain; --no-ignore-daemonsets refuses nodes "
            "that run any)",
        )
    else:
        g.add_argument(
            "--ignore-daemonsets", action="store_true", help="ignore DaemonSet-managed pods"
        )
    g.add_argument(
        "--force",
        action="store_true",
        help="also delete pods without a controller (their data is lost)",
    )
    g.add_argument(
        "--delete-emptydir-data",
        action="store_true",
        help="also delete pods with emptyDir volumes (their data is lost)",
    )
    g.add_argument(
        "--grace-period",
        type=int,
        default=-1,
        help="seconds each pod gets to terminate; -1: its own (default), 0: immediately",
    )
    g.add_argument(
        "--timeout", default="0s", help="give up after this long (e.g. 5m); 0s: wait forever"
    )
    g.add_argument("--pod-selector", help="only evict pods matching this label selector")
    g.add_argument(
        "--disable-eviction",
        action="store_true",
        help="delete instead of evict: BYPASSES PodDisruptionBudgets",
    )
    g.add_argument(
        "--skip-wait-for-delete-timeout",
        type=int,
        default=0,
        metavar="SECONDS",
        help="skip pods terminating for longer than this",
    )
    g.add_argument(
        "--chunk-size",
        type=int,
        default=500,
        help="list pods in chunks of this size (0: one request)",
    )
    if dry_run:
        g.add_argument("--dry-run", choices=DRY_RUNS, default="none", help="none, client or server")
    k = parser.add_argument_group("kubecare's drain options")
    k.add_argument(
        "--surge",
        action="store_true",
        help="a pod whose PodDisruptionBudget will never allow its eviction (one replica, or "
        "replicas == minAvailable), owned by a Deployment: roll the Deployment out first, so a "
        "new pod is Ready elsewhere before the old one goes (only when its rolling update keeps "
        "every replica up: maxUnavailable 0). Not upgrade's --strategy surge (new nodes)",
    )
    k.add_argument(
        "--concurrency", type=int, default=50, help="evictions in flight at once, per node"
    )
    k.add_argument(
        "--lock",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take the cluster-wide maintenance lock, a Lease (default: yes)",
    )
    k.add_argument(
        "--lock-namespace", default="kube-system", help="namespace of the maintenance lock Leases"
    )
    k.add_argument(
        "--max-concurrent-drains",
        type=int,
        default=1,
        help="nodes in maintenance at once, across all kubecare runs",
    )
    k.add_argument(
        "--lock-timeout",
        default="0s",
        help="give up waiting for the maintenance lock after this long; 0s: wait forever",
    )


def drain_options(args: argparse.Namespace) -> DrainOptions:
    """The drain flags of ``args`` as the library's :class:`DrainOptions` (validated)."""
    from kubecare.durations import parse_duration
    from kubecare.errors import UsageError
    from kubecare.nodes.cordon import DryRun
    from kubecare.nodes.drain_options import DrainOptions

    if args.grace_period < -1:
        raise UsageError(
            f"--grace-period must be -1 (the pod's own) or >= 0, not {args.grace_period}"
        )
    for flag, value in (
        ("--skip-wait-for-delete-timeout", args.skip_wait_for_delete_timeout),
        ("--chunk-size", args.chunk_size),
    ):
        if value < 0:
            raise UsageError(f"{flag} must not be negative (got {value})")
    if args.concurrency < 1 or args.max_concurrent_drains < 1:
        raise UsageError("--concurrency and --max-concurrent-drains must be at least 1")
    return DrainOptions(
        ignore_daemonsets=args.ignore_daemonsets,
        force=args.force,
        delete_emptydir_data=args.delete_emptydir_data,
        grace_period=args.grace_period,
        timeout=float(parse_duration(args.timeout, "--timeout") or 0),
        pod_selector=args.pod_selector,
        disable_eviction=args.disable_eviction,
        skip_wait_for_delete_timeout=args.skip_wait_for_delete_timeout,
        chunk_size=args.chunk_size,
        dry_run=DryRun(getattr(args, "dry_run", "none")),
        concurrency=args.concurrency,
        lock=args.lock,
        lock_namespace=args.lock_namespace,
        max_concurrent_drains=args.max_concurrent_drains,
        surge=args.surge,
        lock_timeout=float(parse_duration(args.lock_timeout, "--lock-timeout") or 0),
    )
