"""`kubecare sandbox ...`: build, start, inspect and stop local control planes."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.sandbox.lifecycle import ComponentStatus, Sandbox

SUPPORTED = "1.37, 1.36"  # kept in step with sandbox.binaries.KUBE_VERSIONS (a unit test checks)


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subs.add_parser(
        "sandbox", help="a real local control plane for tests, demos and practice"
    )
    group.set_defaults(handler=lambda _a: group.print_help())
    cmds = group.add_subparsers(dest="sandbox_command", metavar="COMMAND")

    def named(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = cmds.add_parser(name, help=help_text)
        p.add_argument("--name", default="kubecare", help="sandbox name (several can run at once)")
        return p

    b = cmds.add_parser("build", help="build the binaries from source (cached per version)")
    b.add_argument("--version", help=f"Kubernetes version ({SUPPORTED}); default the newest")
    b.add_argument(
        "--all", dest="all_versions", action="store_true", help="every supported version"
    )
    b.add_argument(
        "--real-nodes",
        action="store_true",
        help="also what real nodes run: the kubelet, containerd, CNI plugins, the images' program",
    )
    b.set_defaults(handler=build_cmd)

    u = named("up", "start a sandbox; returns when /readyz is OK and every node is Ready")
    u.add_argument("--nodes", type=int, default=3, help="worker nodes (default 3, up to 200)")
    u.add_argument(
        "--real-nodes",
        type=int,
        default=0,
        metavar="N",
        help="also N real workers (real-1, ...): a real kubelet and containerd each, joined by "
        "kubeadm, running real containers (up to 8; needs `make real-node-deps`)",
    )
    u.add_argument(
        "--control-planes",
        type=int,
        default=1,
        help="control-plane nodes: 1 (default) or 3 (HA: a 3-member etcd, the apiservers behind one address)",
    )
    u.add_argument("--version", help=f"Kubernetes version ({SUPPORTED})")
    u.add_argument(
        "--pod-eviction-timeout",
        help="default not-ready/unreachable toleration (e.g. 15s); the apiserver's default is 300s",
    )
    u.add_argument(
        "--node-monitor-grace-period",
        help="how long a silent node stays Ready (e.g. 10s); default 50s",
    )
    u.add_argument(
        "--audit-log",
        action="store_true",
        help="write the apiserver's audit log (logs/audit.log): who sent which request",
    )
    u.add_argument(
        "--etcd-quota",
        metavar="BYTES",
        help="etcd's --quota-backend-bytes (e.g. 64Mi; default etcd's 2Gi, at most 8Gi): "
        "a small one fills up and raises NOSPACE",
    )
    u.add_argument(
        "--cert-validity",
        metavar="DURATION",
        help="how long kubeadm's control-plane certificates are valid (e.g. 2h, 10d; default "
        "kubeadm's 365d): short ones show as expiring in `kubecare certs check`",
    )
    u.set_defaults(handler=up_cmd)

    d = named("down", "stop every process of the sandbox and remove its state (unless --keep)")
    d.add_argument("--keep", action="store_true", help="keep the state dir (etcd data, logs, pki)")
    d.set_defaults(handler=down_cmd)

    named("env", "print `export KUBECONFIG=...` for the sandbox (use with eval)").set_defaults(
        handler=env_cmd
    )
    cmds.add_parser("list", help="sandboxes on this machine").set_defaults(handler=list_cmd)

    s = named("status", "each component: pid, port, version, health, memory")
    add_output(s)
    s.set_defaults(handler=status_cmd)

    lg = named("logs", "the end of one component's log")
    lg.add_argument(
        "component",
        help="etcd, kube-apiserver, kube-controller-manager, kube-scheduler (of the first control "
        "plane; or e.g. etcd-control-plane-2), kwok or runner",
    )
    lg.add_argument("--tail", type=int, default=50, help="lines to show")
    lg.set_defaults(handler=logs_cmd)

    nd = named("node-down", "the node stops reporting, so the node lifecycle controller reacts")
    nd.add_argument("node", metavar="NODE")
    nd.add_argument("--wait", action="store_true", help="wait until the node is NotReady")
    nd.set_defaults(handler=node_down_cmd)

    x = named(
        "exec",
        "run a command on a node: its /etc/kubernetes, /var/lib/etcd and "
        "kubeadm/kubectl/etcdctl, in a private mount namespace (root); on a real node, inside it",
    )
    x.add_argument("node", metavar="NODE")
    x.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    x.set_defaults(handler=exec_cmd, completes_nodes=True)

    sh = named("shell", "an interactive shell on a control-plane node (as sandbox exec)")
    sh.add_argument("node", metavar="NODE")
    sh.set_defaults(handler=shell_cmd, completes_nodes=True)

    ins = named(
        "install",
        "the sandbox's apt-get install: switch a node's kubeadm, or the kubelet version it reports",
    )
    ins.add_argument("node", metavar="NODE")
    ins.add_argument("package", choices=("kubeadm", "kubelet"))
    ins.add_argument("version", metavar="VERSION", help=f"a built version ({SUPPORTED})")
    ins.set_defaults(handler=install_cmd, completes_nodes=True)

    nu = named("node-up", "the node resumes reporting and becomes Ready again")
    nu.add_argument("node", metavar="NODE")
    nu.add_argument("--reboot", action="store_true", help="come back with a new boot ID")
    nu.set_defaults(handler=node_up_cmd)

    rb = named(
        "reboot",
        "reboot a node: a new boot ID; a real node loses power (every container killed) and boots",
    )
    rb.add_argument("node", metavar="NODE")
    rb.set_defaults(handler=reboot_cmd, completes_nodes=True)

    im = named("images", "the images real nodes have (built here: there is no registry)")
    im.set_defaults(handler=images_cmd)


def _sandbox(name: str) -> Sandbox:
    from kubecare.sandbox.lifecycle import Sandbox

    return Sandbox(name)


def _progress(message: str) -> None:
    from kubecare.cli.render import say

    say(f"… {message}")


def build_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import say
    from kubecare.sandbox.binaries import KUBE_VERSIONS, ensure_binaries, resolve_version

    versions = list(KUBE_VERSIONS) if args.all_versions else [resolve_version(args.version)]
    for v in versions:
        t0 = time.monotonic()
        tools = ensure_binaries(v, _progress, real_nodes=args.real_nodes)
        say(f"binaries for v{v} ready in {time.monotonic() - t0:.0f}s")
        for name, path in sorted(tools.paths.items()):
            print(f"{name}\t{path}")


def _cert_validity(value: str | None) -> int | None:
    from kubecare.durations import parse_age
    from kubecare.errors import UsageError

    if not value:
        return None
    seconds = parse_age(value, "--cert-validity")
    if seconds < 600:
        # kubeadm backdates certificates 5 minutes; under 10 minutes the sandbox could expire
        # while it starts
        raise UsageError(f"--cert-validity {value} is too short; give at least 10m")
    if seconds > 10 * 365 * 86400:
        raise UsageError(
            f"--cert-validity {value} outlives the CA (kubeadm's CAs are valid 10 years)"
        )
    return seconds


def up_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import say
    from kubecare.durations import parse_duration
    from kubecare.errors import UsageError
    from kubecare.etcd.maintenance import check_quota
    from kubecare.sandbox.lifecycle import SandboxOptions
    from kubecare.sizes import parse_size

    if not 0 <= args.nodes <= 200:
        raise UsageError(f"--nodes must be between 0 and 200 (got {args.nodes})")
    from kubecare.sandbox.realnode import MAX_REAL_NODES

    if not 0 <= args.real_nodes <= MAX_REAL_NODES:
        raise UsageError(
            f"--real-nodes must be between 0 and {MAX_REAL_NODES} (got {args.real_nodes})"
        )
    opts = SandboxOptions(
        workers=args.nodes,
        control_planes=args.control_planes,
        version=args.version,
        pod_eviction_timeout=parse_duration(args.pod_eviction_timeout, "--pod-eviction-timeout"),
        node_monitor_grace_period=parse_duration(
            args.node_monitor_grace_period, "--node-monitor-grace-period"
        ),
        audit_log=args.audit_log,
        real_nodes=args.real_nodes,
        cert_validity=_cert_validity(args.cert_validity),
        etcd_quota=check_quota(parse_size(args.etcd_quota, "--etcd-quota"))
        if args.etcd_quota
        else None,
    )
    sb = _sandbox(args.name)
    seconds = run(sb.up(opts, _progress))
    state = sb.load()
    say(
        f"sandbox {args.name} (Kubernetes v{state.version}, {len(state.nodes)} nodes) is up in {seconds:.1f}s"
    )
    say(
        f"use it with: eval $(kubecare sandbox env --name {args.name})   or: kubectl --kubeconfig {sb.kubeconfig} get nodes"
    )


def down_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import say

    stopped = _sandbox(args.name).down(keep=args.keep)
    say(
        f"sandbox {args.name}: stopped {len(stopped)} processes"
        + (" (state kept)" if args.keep else ", state removed")
    )


def env_cmd(args: argparse.Namespace) -> None:
    sb = _sandbox(args.name)
    state = sb.load()
    print(f"export KUBECONFIG={sb.kubeconfig}")
    if state.real_nodes:
        from kubecare.backup.volumes import IMAGE_ENV
        from kubecare.sandbox.images import TOOLS

        # volume helper pods use the image the real nodes have (there is no registry here)
        print(f"export {IMAGE_ENV}={TOOLS}")


def list_cmd(_args: argparse.Namespace) -> None:
    from kubecare.sandbox.state import list_sandboxes

    for n in list_sandboxes():
        print(n)


def status_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.render import emit, mib, simple_table

    sb = _sandbox(args.name)
    state, comps = sb.status()
    mem = sb.memory()
    data = {
        "name": args.name,
        "version": state.version,
        "apiserver": state.apiserver,
        "kubeconfig": str(sb.kubeconfig),
        "components": comps,
    }

    def table() -> str:
        lines = [f"sandbox {args.name}: Kubernetes v{state.version}, apiserver {state.apiserver}"]
        lines.append(
            simple_table(
                [
                    "component",
                    "node",
                    "pid",
                    "port",
                    "version",
                    "image",
                    "healthy",
                    "restarts",
                    "rss",
                ],
                [
                    (
                        c.name,
                        c.node or "-",
                        c.pid or "-",
                        c.port or "-",
                        c.version or "-",
                        c.image.removeprefix("registry.k8s.io/") or "-",
                        _health(c),
                        c.restarts,
                        mib(mem.get(c.name, 0)),
                    )
                    for c in comps
                ],
            )
        )
        for c in comps:
            if not c.running and c.log_tail:
                lines.append(f"--- {c.name} is not running ({c.reason}):\n{c.log_tail}")
        return "\n".join(lines)

    emit(data, args.output, table)
    return 0 if all(c.healthy for c in comps) else 1


def _health(c: ComponentStatus) -> str:
    if not c.running:
        return c.reason or "STOPPED"
    return "yes" if c.healthy else "no"


def logs_cmd(args: argparse.Namespace) -> None:
    from kubecare.errors import UsageError

    if args.tail < 1:
        raise UsageError("--tail must be at least 1")
    print(_sandbox(args.name).logs(args.component, args.tail))


def node_down_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import say

    run(_sandbox(args.name).node_down(args.node, wait=args.wait))
    say(f"node/{args.node} stopped reporting" + (" and is NotReady" if args.wait else ""))


def node_up_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import say

    run(_sandbox(args.name).node_up(args.node, reboot=args.reboot))
    say(f"node/{args.node} is reporting again and Ready")


def reboot_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import say

    run(_sandbox(args.name).node_up(args.node, reboot=True))
    say(f"node/{args.node} rebooted and is Ready")


def images_cmd(args: argparse.Namespace) -> None:
    from kubecare.sandbox import images

    for ref, what in images.DESCRIPTIONS.items():
        print(f"{ref}\t{what}")


def exec_cmd(args: argparse.Namespace) -> None:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    _exec_on(args.name, args.node, command)


def shell_cmd(args: argparse.Namespace) -> None:
    import os
    import shutil

    shell = os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"
    # bash without the user's rc files: they would replace the prompt that names the node
    argv = [shell, "--noprofile", "--norc", "-i"] if shell.endswith("bash") else [shell, "-i"]
    _exec_on(args.name, args.node, argv)


def _exec_on(name: str, node: str, command: list[str]) -> None:
    """Replace this process with ``command`` in the node's view (its exit code is ours)."""
    import os
    import sys

    from kubecare.errors import SandboxError, UsageError
    from kubecare.sandbox import nodeshell

    if not command:
        raise UsageError("give the command to run on the node: kubecare sandbox exec NODE -- CMD")
    if os.geteuid() != 0:
        raise SandboxError(
            "sandbox exec needs root: it makes a private mount namespace (unshare --mount) "
            "where the node's tree is /etc/kubernetes; run it as root (sudo)"
        )
    unshare, nsenter = nodeshell.tools()
    from kubecare.cli.common import run

    view = run(_sandbox(name).prepare_node(node))
    argv = nodeshell.argv(view, command, unshare=unshare, nsenter=nsenter)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, nodeshell.environment(view, dict(os.environ)))


def install_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import say

    before, after = run(_sandbox(args.name).install(args.node, args.package, args.version))
    say(f"{args.node}: {args.package} v{before} -> v{after}")
