"""`kubecare certs check|renew`: a kubeadm control plane's certificates.

Where: a control-plane node's ``/etc/kubernetes`` (``--kubernetes-dir``), or ``--sandbox NAME``
(every control-plane node of the sandbox, ``--node`` for one).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.certs.inventory import CertInfo

KUBERNETES_DIR = Path("/etc/kubernetes")


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subs.add_parser("certs", help="control-plane certificates: expiry, renewal")
    group.set_defaults(handler=lambda _a: group.print_help())
    cmds = group.add_subparsers(dest="certs_command", metavar="COMMAND")
    c = cmds.add_parser(
        "check", help="every certificate and CA kubeadm lists, with its expiry (exit 1 if soon)"
    )
    c.add_argument(
        "--warn",
        default="30d",
        metavar="DURATION",
        help="exit 1 if anything expires within it (default 30d; e.g. 12h, 90d)",
    )
    c.add_argument(
        "--kubelets",
        action="store_true",
        help="also each kubelet's serving certificate (read from its port at the node's "
        "InternalIP) and client certificate (from its last issued CSR), through --kubeconfig",
    )
    _add_where(c)
    add_output(c)
    c.set_defaults(handler=check_cmd)
    r = cmds.add_parser(
        "renew", help="renew certificates with the same CA (kubeadm certs renew), old files kept"
    )
    r.add_argument("names", nargs="+", metavar="NAME", help="kubeadm's names, or all")
    r.add_argument(
        "--validity",
        default="365d",
        metavar="DURATION",
        help="how long the new certificates are valid (default 365d, kubeadm's)",
    )
    r.add_argument(
        "--no-restart",
        action="store_true",
        help="do not restart the static pods that read them (restart them yourself)",
    )
    r.add_argument("--dry-run", action="store_true", help="say what would be renewed")
    _add_where(r)
    add_output(r)
    r.set_defaults(handler=renew_cmd)


def _add_where(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where (default: this node's /etc/kubernetes)")
    g.add_argument("--kubernetes-dir", metavar="DIR", help="a control-plane node's /etc/kubernetes")
    g.add_argument("--sandbox", metavar="NAME", help="a kubecare sandbox's control-plane nodes")
    g.add_argument("--node", metavar="NODE", help="with --sandbox: only this control-plane node")


def nodes_of(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(node name, its /etc/kubernetes as this process sees it)."""
    from kubecare.errors import UsageError

    if args.sandbox and args.kubernetes_dir:
        raise UsageError("give one of --sandbox and --kubernetes-dir")
    if not args.sandbox:
        if args.node:
            raise UsageError("--node goes with --sandbox")
        return [("", Path(args.kubernetes_dir) if args.kubernetes_dir else KUBERNETES_DIR)]
    from kubecare.sandbox.target import etcd_target

    dirs = etcd_target(args.sandbox)[0]  # each control-plane node's manifests dir
    from kubecare.sandbox.target import node_of

    out = []
    for d in dirs:
        found = node_of(d)
        out.append((found[1] if found else str(d), d.parent))
    if args.node:
        chosen = [n for n in out if n[0] == args.node]
        if not chosen:
            raise UsageError(
                f'"{args.node}" is not a control-plane node of sandbox "{args.sandbox}"; '
                "control planes: " + ", ".join(n for n, _ in out)
            )
        return chosen
    return out


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_cmd(args: argparse.Namespace) -> None:
    from kubecare.certs.inventory import OPTIONAL, inventory
    from kubecare.cli.render import emit, simple_table
    from kubecare.durations import SECOND_NS, human_duration, parse_age
    from kubecare.errors import CertError

    if args.kubelets and args.sandbox:
        from kubecare.errors import UsageError

        # the host never dials a sandbox's node addresses: they are inside its namespaces
        raise UsageError(
            "--kubelets dials each node's address, which only a node of the sandbox reaches: "
            f"kubecare sandbox exec --name {args.sandbox} NODE -- kubecare certs check "
            "--kubelets --kubeconfig /etc/kubernetes/admin.conf"
        )
    warn = dt.timedelta(seconds=parse_age(args.warn, "--warn"))
    now = _now()
    certs: list[CertInfo] = []
    cas: list[CertInfo] = []
    for node, kdir in nodes_of(args):
        c, a = inventory(kdir, node)
        certs += c
        cas += a
    several = len({c.node for c in certs}) > 1

    def state(c: CertInfo) -> str:
        left = c.residual(now)
        if left is None:
            return "missing" if c.name not in OPTIONAL else "absent"
        if left <= dt.timedelta(0):
            return "expired"
        return "expiring" if left <= warn else "ok"

    def residual(c: CertInfo) -> str:
        left = c.residual(now)
        if left is None:
            return ""
        return human_duration(int(left.total_seconds()) * SECOND_NS)

    def row(c: CertInfo, with_ca: bool) -> tuple[Any, ...]:
        exp = c.not_after.strftime("%b %d, %Y %H:%M UTC") if c.not_after else "-"
        cols: tuple[Any, ...] = (c.name, exp, residual(c) or "-")
        if with_ca:
            cols += (c.ca,)
        cols += ("yes" if c.externally_managed else "no", state(c))
        return ((c.node,) if several else ()) + cols

    node_col = ["node"] if several else []

    def table() -> str:
        return (
            simple_table(
                [
                    *node_col,
                    "certificate",
                    "expires",
                    "residual time",
                    "certificate authority",
                    "externally managed",
                    "state",
                ],
                [row(c, True) for c in certs],
            )
            + "\n\n"
            + simple_table(
                [
                    *node_col,
                    "certificate authority",
                    "expires",
                    "residual time",
                    "externally managed",
                    "state",
                ],
                [row(c, False) for c in cas],
            )
        )

    data: dict[str, Any] = {
        "warn": int(warn.total_seconds()),
        "certificates": [c.as_dict(now) | {"state": state(c)} for c in certs],
        "certificateAuthorities": [c.as_dict(now) | {"state": state(c)} for c in cas],
    }
    kubelets = _kubelets(args) if args.kubelets else []

    def kubelet_state(k: Any) -> str:
        if k.not_after is None:
            return "unknown"
        left = k.not_after - now
        return "expired" if left <= dt.timedelta(0) else "expiring" if left <= warn else "ok"

    if args.kubelets:
        data["kubelets"] = [k.as_dict(now) | {"state": kubelet_state(k)} for k in kubelets]
        plain_table = table

        def table() -> str:
            rows = [
                (
                    k.node,
                    f"kubelet-{k.kind}",
                    f"{k.not_after:%b %d, %Y %H:%M UTC}" if k.not_after else "-",
                    human_duration(int((k.not_after - now).total_seconds()) * SECOND_NS)
                    if k.not_after
                    else "-",
                    kubelet_state(k),
                    k.error or k.issuer,
                )
                for k in kubelets
            ]
            return (
                plain_table()
                + "\n\n"
                + simple_table(
                    [
                        "node",
                        "kubelet certificate",
                        "expires",
                        "residual time",
                        "state",
                        "issuer or why not read",
                    ],
                    rows,
                )
            )

    emit(data, args.output, table)
    bad = [c for c in certs + cas if state(c) in ("missing", "expired", "expiring")]
    late = [k for k in kubelets if kubelet_state(k) in ("expired", "expiring")]
    if late and not bad:
        from kubecare.errors import CertError as _CertError

        raise _CertError(
            f"{len(late)} kubelet certificate(s) expired or expiring within {args.warn}; first: "
            f"kubelet-{late[0].kind} of {late[0].node} (the kubelet renews it itself when "
            "rotateCertificates is on: check the kubelet's log)"
        )
    if bad:
        first = bad[0]
        where = f" on {first.node}" if first.node else ""
        fix = (
            "; renew with: kubecare certs renew " + first.name
            if not first.is_ca and state(first) != "missing"
            else ""
        )
        raise CertError(
            f"{len(bad)} certificate(s) expired, expiring within {args.warn} or missing; "
            f"first: {first.name}{where} is {state(first)}{fix}"
        )


def _kubelets(args: argparse.Namespace) -> list[Any]:
    from kubecare.certs.kubelets import kubelet_certs
    from kubecare.cli.common import with_cluster

    return with_cluster(args, kubelet_certs)


def renew_cmd(args: argparse.Namespace) -> None:
    from kubecare.certs.renew import components_for, plan_renew, renew_files, select
    from kubecare.cli.common import run
    from kubecare.cli.render import emit, say, simple_table
    from kubecare.durations import parse_age
    from kubecare.errors import UsageError

    seconds = parse_age(args.validity, "--validity")
    if not 0 < seconds <= 100 * 365 * 86400:
        raise UsageError(f"--validity {args.validity}: give a positive duration up to 36500d")
    validity = dt.timedelta(seconds=seconds)
    specs = select(args.names)
    now = _now()
    nodes = nodes_of(args)
    if not args.sandbox and not args.no_restart and not args.dry_run:
        from kubecare.sandbox.target import owner

        theirs = {owner(d) for _, d in nodes} - {None}
        if theirs:
            name = sorted(n for n in theirs if n)[0]
            # its components' probes are on node addresses the host must never dial
            raise UsageError(
                f"that is a node of sandbox {name}: give --sandbox {name} (its runner restarts "
                f"the components), or run it on the node: kubecare sandbox exec --name {name} "
                "NODE -- kubecare certs renew ..."
            )
    everything = args.names == ["all"]
    # every node planned (and every refusal found) before any file is written
    plans = [
        (
            n,
            d,
            plan_renew(d, specs, now, validity, skip_missing=everything, skip_external=everything),
        )
        for n, d in nodes
    ]
    rows: list[dict[str, Any]] = []
    for node, kdir, steps in plans:
        rows += [
            {"node": node, "name": s.spec.name, "path": str(s.path), "notAfter": None,
             "renewed": False, "skipped": s.skipped}
            for s in steps
            if s.skipped
        ]  # fmt: skip
        steps = [s for s in steps if not s.skipped]
        if args.dry_run:
            rows += [
                {
                    "node": node,
                    "name": s.spec.name,
                    "path": str(s.path),
                    "notAfter": f"{s.not_after:%Y-%m-%dT%H:%M:%SZ}",
                    "renewed": False,
                }
                for s in steps
            ]
            continue
        done = renew_files(kdir, steps, now)
        rows += [
            {
                "node": node,
                "name": r.name,
                "path": str(r.path),
                "notAfter": f"{r.not_after:%Y-%m-%dT%H:%M:%SZ}",
                "renewed": True,
                "kept": [str(k) for k in r.kept],
            }
            for r in done
        ]
        restart = components_for([r.name for r in done])
        if restart and not args.no_restart:
            say(f"{node or 'this node'}: restarting {', '.join(restart)} to read them")
            run(_restart(args, node, kdir, restart))
        elif restart:
            say(f"{node or 'this node'}: restart {', '.join(restart)} to use them")
    emit(
        rows,
        args.output,
        lambda: simple_table(
            ["node", "certificate", "valid until", "kept old as" if not args.dry_run else "done"],
            [
                (
                    r["node"] or "-",
                    r["name"],
                    r["notAfter"] or "-",
                    f"skipped: {r['skipped']}"
                    if r.get("skipped")
                    else ", ".join(Path(k).name for k in r.get("kept", [])) or "dry run",
                )
                for r in rows
            ],
        ),
    )


async def _restart(args: argparse.Namespace, node: str, kdir: Path, components: list[str]) -> None:
    """Restart static pods so they read the renewed files: through the runner on a sandbox (it
    is the sandbox's kubelet), else as kubeadm documents (manifest moved out and back)."""
    if args.sandbox:
        import asyncio

        from kubecare.sandbox import Sandbox

        sb = Sandbox(args.sandbox)
        for c in components:
            await asyncio.to_thread(sb.stop_component, c, node=node)
            await sb.start_component(c, node=node)
        return
    from kubecare.certs.restart import restart_static_pods

    await restart_static_pods(kdir / "manifests", components)
