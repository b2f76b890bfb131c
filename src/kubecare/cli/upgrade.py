"""`kubecare versions` and `kubecare upgrade plan|apply|status|reset`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_drain_flags, add_output

if TYPE_CHECKING:
    from kubecare.events import Event
    from kubecare.upgrade.journal import Journal
    from kubecare.upgrade.plan import UpgradePlan
    from kubecare.versions.inventory import Inventory

SNAPSHOT_DIR = "~/.local/share/kubecare/etcd-snapshots"


def _etcd_flags(p: argparse.ArgumentParser, *, sandbox: bool = True) -> None:
    g = p.add_argument_group(
        "where etcd is (default: /etc/kubernetes/manifests/etcd.yaml when present)"
    )
    g.add_argument("--etcd-endpoints", metavar="URLS", help="comma-separated etcd client URLs")
    g.add_argument("--etcd-cacert", metavar="FILE", help="etcd's CA certificate")
    g.add_argument("--etcd-cert", metavar="FILE", help="a client certificate etcd trusts")
    g.add_argument("--etcd-key", metavar="FILE", help="its private key")
    if sandbox:
        g.add_argument("--sandbox", metavar="NAME", help="a kubecare sandbox (its etcd)")


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    v = subs.add_parser(
        "versions", help="every component's version, checked against the version skew policy"
    )
    _etcd_flags(v)
    v.add_argument("--strict", action="store_true", help="exit 1 when the skew policy is violated")
    add_output(v)
    v.set_defaults(handler=versions_cmd)

    up = subs.add_parser("upgrade", help="plan and run a cluster upgrade, one minor at a time")
    cmds = up.add_subparsers(dest="upgrade_command", metavar="COMMAND", required=True)

    def planning(p: argparse.ArgumentParser, *, target_required: bool = True) -> None:
        if target_required:
            p.add_argument("--to", required=True, metavar="VERSION", help="target, e.g. v1.37.2")
        else:
            p.add_argument(
                "--to", metavar="VERSION",
                help="target, e.g. v1.37.2 (default: the next minor's newest release kubecare "
                "knows)",
            )  # fmt: skip
        p.add_argument(
            "--strategy",
            choices=("rolling", "all-at-once", "surge"),
            default="rolling",
            help="workers: in batches (default), all together (downtime), or replaced by new nodes",
        )
        p.add_argument(
            "--max-unavailable",
            default="1",
            metavar="N|N%",
            help="rolling: workers upgraded at once (default 1)",
        )
        p.add_argument(
            "--ignore-version-warnings",
            action="store_true",
            help="go on past skippable version-policy errors (kubeadm's --force)",
        )
        p.add_argument("--allow-experimental-upgrades", action="store_true")
        p.add_argument("--allow-release-candidate-upgrades", action="store_true")
        p.add_argument(
            "--snapshot-dir",
            default=SNAPSHOT_DIR,
            help=f"where etcd snapshots are kept (default {SNAPSHOT_DIR})",
        )
        p.add_argument(
            "--backup-store", metavar="STORE", help="resource backups' store (dir or s3://)"
        )
        _etcd_flags(p)
        add_drain_flags(p, dry_run=False, ignore_daemonsets=True)
        add_output(p)

    plan = cmds.add_parser(
        "plan", help="is the upgrade allowed, in which order, and is the cluster ready (go/no-go)"
    )
    planning(plan, target_required=False)
    plan.set_defaults(handler=plan_cmd)

    apply = cmds.add_parser(
        "apply", help="upgrade node by node: drain, executor, Ready, uncordon (resumable)"
    )
    planning(apply)
    ex = apply.add_argument_group("executor")
    ex.add_argument(
        "--executor", choices=("command", "ssh", "job", "sandbox"), required=True,
        help="who runs each node's upgrade steps",
    )  # fmt: skip
    ex.add_argument(
        "--command", dest="command_template", metavar="TEMPLATE",
        help="command: run locally per node; {node} {version} {minor} {role}",
    )  # fmt: skip
    ex.add_argument(
        "--steps", metavar="FILE", help="ssh/job: YAML step list (default: kubeadm/apt)"
    )
    ex.add_argument("--ssh-user", default="root")
    ex.add_argument(
        "--ssh-host", default="{ip}", metavar="TEMPLATE",
        help="ssh: host[:port] per node; {node}, {ip} (default: the node's InternalIP)",
    )  # fmt: skip
    ex.add_argument("--ssh-port", type=int, default=22)
    ex.add_argument("--ssh-key", help="ssh: private key (default: the agent, ~/.ssh/id_*)")
    ex.add_argument("--known-hosts", help="ssh: known_hosts (default ~/.ssh/known_hosts)")
    ex.add_argument("--job-image", default="debian:bookworm-slim", help="job: the image")
    ex.add_argument(
        "--step-timeout", default="30m", help="how long one node's upgrade steps may take"
    )
    ex.add_argument(
        "--provision-command", metavar="TEMPLATE",
        help="surge: adds a node for {node}'s workloads, prints its name last",
    )  # fmt: skip
    ex.add_argument(
        "--deprovision-command", metavar="TEMPLATE", help="surge: removes the old {node}"
    )
    run = apply.add_argument_group("run")
    run.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    run.add_argument(
        "--no-snapshot", dest="snapshot", action="store_false",
        help="skip the etcd snapshot taken first",
    )  # fmt: skip
    run.add_argument(
        "--no-backup", dest="backup", action="store_false",
        help="skip the resource backup taken first",
    )  # fmt: skip
    run.add_argument("--encrypt-to", action="append", default=[], metavar="RECIPIENT")
    run.add_argument("--recipients-file", metavar="FILE")
    run.add_argument("--backup-allow-plaintext-secrets", action="store_true")
    run.add_argument(
        "--backup-allow-partial", action="store_true",
        help="go on when the resource backup misses types the credentials cannot list",
    )  # fmt: skip
    _journal_flags(run)
    run.add_argument("--window", help="maintenance window, e.g. 'Sat 02:00-06:00' (local time)")
    run.add_argument(
        "--wait-for-window", action="store_true", help="wait for the window instead of stopping"
    )
    run.add_argument("--ready-timeout", default="10m", help="per node, to be Ready again")
    run.add_argument("--gate-timeout", default="5m", help="health gate after each batch")
    run.add_argument(
        "--ignore-preflight-errors", default="", metavar="CHECKS",
        help="comma-separated check names (or 'all') to go on despite a no-go",
    )  # fmt: skip
    run.add_argument(
        "--take-over",
        action="store_true",
        help="resume a journal another machine's run still holds (that machine is gone)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no per-pod or executor lines")
    apply.set_defaults(handler=apply_cmd)

    status = cmds.add_parser("status", help="the journal of the last or current upgrade")
    _journal_flags(status)
    add_output(status)
    status.set_defaults(handler=status_cmd)

    reset = cmds.add_parser(
        "reset", help="forget an unfinished upgrade (deletes the journal; nodes are not touched)"
    )
    _journal_flags(reset)
    reset.add_argument("--yes", action="store_true", required=True)
    reset.set_defaults(handler=reset_cmd)


def _journal_flags(g: Any) -> None:
    g.add_argument(
        "--journal", metavar="FILE",
        help="a local journal file instead of the ConfigMap kube-system/kubecare-upgrade",
    )  # fmt: skip


def _store(args: argparse.Namespace, kube: Any) -> Any:
    from kubecare.upgrade.journal import ConfigMapStore, FileStore

    return FileStore(Path(args.journal)) if args.journal else ConfigMapStore(kube)


def _etcd_endpoints(args: argparse.Namespace) -> list[Any]:
    from kubecare.errors import UsageError
    from kubecare.etcd.members import KUBEADM_MANIFESTS, parse_endpoints, read_members

    if args.etcd_endpoints:
        return parse_endpoints(args.etcd_endpoints, args.etcd_cacert, args.etcd_cert, args.etcd_key)
    if args.etcd_cacert or args.etcd_cert or args.etcd_key:
        raise UsageError("--etcd-cacert/--etcd-cert/--etcd-key go with --etcd-endpoints")
    if getattr(args, "sandbox", None):
        from kubecare.sandbox.target import etcd_target

        return [m.endpoint for m in read_members(*etcd_target(args.sandbox))]
    if (Path(KUBEADM_MANIFESTS) / "etcd.yaml").is_file():
        return [m.endpoint for m in read_members([Path(KUBEADM_MANIFESTS)])]
    return []


# -- versions ---------------------------------------------------------------------------------
def versions_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit
    from kubecare.versions.inventory import collect, etcd_statuses

    eps = _etcd_endpoints(args)

    async def body(kube: Any) -> Inventory:
        statuses = await etcd_statuses(eps) if eps else []
        return await collect(kube, etcd_status=statuses)

    inv = with_cluster(args, body)
    data = {
        "components": inv.components,
        "violations": [{**_plain(v), "text": v.text} for v in inv.violations],
        "notes": inv.notes,
        "unseen": inv.unseen,
    }
    emit(data, args.output, lambda: versions_table(inv))
    # --strict: a skew check that could not see every component is not a pass
    return 1 if args.strict and (inv.violations or inv.unseen) else 0


def _plain(v: Any) -> dict[str, Any]:
    from kubecare.cli.render import plain

    return dict(plain(v))


def versions_table(inv: Inventory) -> str:
    from kubecare.cli.render import simple_table

    rows = [(c.name, c.node or "-", c.version, c.source) for c in inv.components]
    out = [simple_table(("COMPONENT", "NODE", "VERSION", "SOURCE"), rows)]
    for n in [*inv.unseen, *inv.notes]:
        out.append(f"note: {n}")
    if inv.violations:
        out.append("")
        out.append(f"Version skew policy: {len(inv.violations)} violation(s)")
        out += [f"  ✘ {v.text}" for v in inv.violations]
    else:
        out.append("")
        out.append("Version skew policy: no violation")
    return "\n".join(out)


# -- plan ---------------------------------------------------------------------------------------
def _plan_inputs(args: argparse.Namespace) -> dict[str, Any]:
    from kubecare.upgrade.plan import Strategy

    return {
        "strategy": Strategy(args.strategy),
        "max_unavailable": args.max_unavailable,
        "snapshot_dir": Path(args.snapshot_dir),
        "backup_store": args.backup_store,
        "ignore_version_warnings": args.ignore_version_warnings,
        "allow_experimental": args.allow_experimental_upgrades,
        "allow_rc": args.allow_release_candidate_upgrades,
    }


def plan_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.args import drain_options
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit
    from kubecare.upgrade.plan import parse_max_unavailable
    from kubecare.upgrade.preflight import make_plan
    from kubecare.versions.semver import parse_target

    target = parse_target(args.to) if args.to else None
    drain = drain_options(args)
    parse_max_unavailable(args.max_unavailable, 1)  # a bad value fails before any request
    eps = _etcd_endpoints(args)

    async def body(kube: Any) -> UpgradePlan:
        plan, _ = await make_plan(kube, target, drain, etcd_endpoints=eps, **_plan_inputs(args))
        return plan

    plan = with_cluster(args, body)
    emit(plan_data(plan), args.output, lambda: plan_text(plan))
    return 0 if plan.go else 1


def plan_data(plan: UpgradePlan) -> dict[str, Any]:
    from kubecare.cli.render import plain

    data = dict(plain(plan))
    data["go"] = plan.go
    data["reasons"] = plan.reasons
    return data


def plan_text(plan: UpgradePlan) -> str:
    from kubecare.cli.render import simple_table

    out = [
        f"Upgrade {plan.current} -> {plan.target} (etcd -> {plan.etcd_target}), "
        f"strategy {plan.strategy}, {plan.max_unavailable} worker(s) at a time",
        "",
    ]
    if plan.target_reason:
        out[1:1] = [f"Target {plan.target}: {plan.target_reason}."]
    rows = []
    for s in plan.steps:
        for c in s.changes:
            rows.append((c.component, s.node, c.current, c.target))
    # kubeadm's addon phase (with `kubeadm upgrade apply`, after the first control plane)
    for c in plan.addons:
        rows.append((c.component, "-", c.current, c.target))
    if rows:
        out.append(simple_table(("COMPONENT", "NODE", "CURRENT", "TARGET"), rows))
    else:
        out.append("every node is already at the target")
    out.append("")
    order = []
    for s in plan.steps:
        if s.up_to_date:
            continue
        skew_text = "; ".join(s.skew_after) if s.skew_after else "ok"
        order.append((s.batch + 1, s.node, s.role, skew_text))
    if order:
        out.append("Order (nodes of one batch go together):")
        out.append(simple_table(("BATCH", "NODE", "ROLE", "SKEW AFTER THE BATCH"), order))
        out.append("")
    out.append("Preflight:")
    for check in plan.checks:
        mark = "✔" if check.ok else ("✘" if check.blocking else "!")
        out.append(f"  {mark} {check.name}: {check.detail}")
    out.append("")
    out.append("GO" if plan.go else "NO-GO: " + "; ".join(plan.reasons))
    return "\n".join(out)


# -- apply --------------------------------------------------------------------------------------
class UpgradePrinter:
    """Drain events as `kubecare drain` prints them; executor output indented under its node."""

    def __init__(self, quiet: bool) -> None:
        from kubecare.cli.drain import ProgressPrinter

        self.quiet = quiet
        self.drain = ProgressPrinter(quiet=quiet)

    def __call__(self, e: Event) -> None:
        from kubecare.cli.render import say

        if e.kind == "executor-output":
            if not self.quiet:
                say(f"  {e.node} | {e.message}")
            return
        self.drain(e)


def _executor(args: argparse.Namespace, kube: Any, step_timeout: float) -> Any:
    from kubecare.errors import UsageError
    from kubecare.upgrade import executors as ex

    steps = ex.load_steps(Path(args.steps)) if args.steps else None
    if args.executor != "command" and args.command_template:
        raise UsageError("--command goes with --executor command")
    if args.executor == "command":
        return ex.CommandExecutor(
            args.command_template or "",
            timeout=step_timeout,
            provision=args.provision_command,
            deprovision=args.deprovision_command,
        )
    if args.executor == "ssh":
        return ex.SshExecutor(
            kube,
            user=args.ssh_user,
            host=args.ssh_host,
            port=args.ssh_port,
            identity=args.ssh_key,
            known_hosts=args.known_hosts,
            steps=steps,
            timeout=step_timeout,
        )
    if args.executor == "job":
        return ex.JobExecutor(kube, image=args.job_image, steps=steps, timeout=step_timeout)
    if not args.sandbox:
        raise UsageError("--executor sandbox needs --sandbox NAME")
    from kubecare.sandbox.executor import SandboxExecutor

    return SandboxExecutor(kube, args.sandbox, step_timeout=step_timeout)


def apply_cmd(args: argparse.Namespace) -> int:
    import sys

    from kubecare.backup.secrets import default_recipients, read_recipients_file
    from kubecare.cli.args import drain_options
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit, say
    from kubecare.durations import parse_duration
    from kubecare.errors import UsageError
    from kubecare.upgrade.apply import ApplyOptions, ApplyResult, Upgrade
    from kubecare.upgrade.plan import parse_max_unavailable
    from kubecare.upgrade.preflight import make_plan
    from kubecare.upgrade.window import parse_window
    from kubecare.versions.semver import parse_target

    target = parse_target(args.to)
    drain = drain_options(args)
    parse_max_unavailable(args.max_unavailable, 1)
    window = parse_window(args.window) if args.window else None
    step_timeout = float(parse_duration(args.step_timeout, "--step-timeout") or 0) or None
    recipients = list(args.encrypt_to)
    if args.recipients_file:
        recipients += read_recipients_file(Path(args.recipients_file))
    if args.backup and not recipients:
        recipients = default_recipients()
    eps = _etcd_endpoints(args) if args.snapshot else []
    if not args.yes and not sys.stdin.isatty():
        raise UsageError("kubecare upgrade apply changes every node: add --yes to go ahead")
    printer = UpgradePrinter(args.quiet)

    async def body(kube: Any) -> ApplyResult:
        executor = _executor(args, kube, step_timeout or 1800)
        store = _store(args, kube)
        existing = await store.load()
        if existing is not None and existing.state != "done" and existing.target != str(target):
            raise UsageError(
                f"an upgrade to {existing.target} is unfinished ({store.where}, {existing.state}); "
                f"finish it with --to {existing.target}, or forget it with kubecare upgrade reset --yes"
            )
        resuming = existing is not None and existing.state != "done"
        # Nodes the unfinished run left cordoned or NotReady are its own doing, not a no-go.
        exempt = frozenset(
            n.name for n in (existing.nodes if existing and resuming else []) if n.state != "done"
        )
        plan, _ = await make_plan(
            kube, target, drain, etcd_endpoints=eps, exempt=exempt, **_plan_inputs(args)
        )
        if not resuming:
            say(plan_text(plan))
        if not args.yes:
            answer = input(f"Upgrade the cluster to {target}? [y/N] ")  # noqa: ASYNC250
            if answer.strip().lower() not in ("y", "yes"):
                raise UsageError("not confirmed; nothing changed")
        opts = ApplyOptions(
            target=target,
            drain=drain,
            snapshot=args.snapshot,
            snapshot_dir=Path(args.snapshot_dir),
            etcd_endpoints=tuple(eps),
            backup=args.backup,
            backup_store=args.backup_store,
            backup_recipients=tuple(recipients),
            backup_allow_plaintext=args.backup_allow_plaintext_secrets,
            backup_allow_partial=args.backup_allow_partial,
            ready_timeout=float(parse_duration(args.ready_timeout, "--ready-timeout") or 600),
            gate_timeout=float(parse_duration(args.gate_timeout, "--gate-timeout") or 300),
            window=window,
            wait_for_window=args.wait_for_window,
            ignore_preflight=tuple(
                x.strip() for x in args.ignore_preflight_errors.split(",") if x.strip()
            ),
            lock_slots=plan.max_unavailable,
            take_over=args.take_over,
        )
        return await Upgrade(kube, executor, store, opts, on_event=printer).run(
            plan, existing if resuming else None
        )

    try:
        result = with_cluster(args, body)
    except KeyboardInterrupt:
        say(
            "interrupted: the node in progress may be cordoned; run the same command again to "
            "resume (kubecare upgrade status shows where it stopped)"
        )
        return 130
    emit(result.journal, args.output, lambda: status_text(result.journal))
    return 0


# -- status / reset ---------------------------------------------------------------------------
def status_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.common import run, with_cluster
    from kubecare.cli.render import emit
    from kubecare.errors import NotFound

    async def body(kube: Any) -> tuple[Journal | None, str]:
        store = _store(args, kube)
        return await store.load(), store.where

    if args.journal:  # a local journal needs no cluster
        journal, where = run(body(None))
    else:
        journal, where = with_cluster(args, body)
    if journal is None:
        raise NotFound(f"no upgrade journal at {where}: no upgrade has run", status=404)
    emit(journal, args.output, lambda: status_text(journal))
    return 0


def status_text(j: Journal) -> str:
    from kubecare.cli.render import simple_table

    done = len(j.done)
    out = [
        f"upgrade to {j.target}: {j.state}, {done}/{len(j.nodes)} node(s) done "
        f"(executor {j.executor}, strategy {j.strategy}, started {j.started}, updated {j.updated})"
    ]
    if j.snapshot:
        out.append(f"etcd snapshot: {j.snapshot}")
    if j.backup:
        out.append(f"resource backup: {j.backup}")
    if j.message:
        out.append(j.message)
    rows = []
    for n in j.nodes:
        took = n.seconds.get("total")
        rows.append(
            (
                n.batch + 1,
                n.name + (f" -> {n.replaced_by}" if n.replaced_by else ""),
                n.role,
                n.state,
                f"{took:.1f}s" if took is not None else "-",
                n.error or "",
            )
        )
    out.append(simple_table(("BATCH", "NODE", "ROLE", "STATE", "TOOK", "ERROR"), rows))
    return "\n".join(out)


def reset_cmd(args: argparse.Namespace) -> int:
    import contextlib

    from kubecare.cli.common import run, with_cluster
    from kubecare.cli.render import say
    from kubecare.errors import KubecareError

    backup = ""

    async def body(kube: Any) -> str:
        nonlocal backup
        store = _store(args, kube)
        with contextlib.suppress(KubecareError):  # an unreadable journal is deleted all the same
            old = await store.load()
            backup = old.backup if old is not None and old.state != "done" else ""
        await store.delete()
        return str(store.where)

    where = run(body(None)) if args.journal else with_cluster(args, body)
    say(f"upgrade journal {where} deleted; nodes were not touched")
    if backup:  # no unfinished upgrade names it any more
        from kubecare.upgrade.apply import unpin

        try:
            unpin(backup)
        except KubecareError as e:
            say(f"warning: its backup {backup} is still pinned ({e.message})")
    return 0
