"""`kubecare fleet status|run`: the maintenance commands over many clusters.

The fleet: the kubeconfig's contexts chosen by kubectl-foreach's patterns (``NAME``, ``/RE/``,
globs, ``^`` to exclude), or a fleet file (``--fleet FILE``: clusters with labels, groups,
waves) narrowed by the same patterns and ``-l SELECTOR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.fleet.fleetfile import Fleet, Wave
    from kubecare.fleet.runner import RunResult
    from kubecare.fleet.status import ClusterStatus
    from kubecare.fleet.upgrade import ClusterPlan, ClusterUpgradeStatus, FleetUpgradeResult

from kubecare.cli.upgrade import SNAPSHOT_DIR  # the same place upgrade plan looks


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subs.add_parser("fleet", help="every maintenance command over many clusters at once")
    group.set_defaults(handler=lambda _a: group.print_help())
    cmds = group.add_subparsers(dest="fleet_command", metavar="COMMAND")
    st = cmds.add_parser(
        "status",
        help="one row per cluster: version, skew, nodes, pods, upgrade go/no-go, snapshot and "
        "backup ages, soonest certificate expiry, locks and unfinished upgrades",
    )
    _add_selection(st)
    st.add_argument(
        "--snapshot-dir",
        default=SNAPSHOT_DIR,
        help=f"where etcd snapshots are kept (default {SNAPSHOT_DIR})",
    )
    st.add_argument("--backup-store", metavar="STORE", help="resource backups' store")
    st.add_argument(
        "--cluster-timeout",
        type=float,
        default=45.0,
        metavar="SECONDS",
        help="a cluster that has not answered by then is a row saying so (default 45)",
    )
    add_output(st)
    st.set_defaults(handler=status_cmd)
    run = cmds.add_parser(
        "run",
        help="run a kubecare command on every cluster: fleet run [PATTERN...] -- COMMAND...",
        description="Run `kubecare COMMAND...` once per cluster, with that cluster's "
        "--kubeconfig and --context; {context} in COMMAND becomes the cluster's name.",
    )
    _add_selection(run)
    run.add_argument(
        "--parallel", type=int, default=5, metavar="N", help="clusters at once (default 5)"
    )
    run.add_argument("--fail-fast", action="store_true", help="start no cluster after a failure")
    run.add_argument(
        "--yes", action="store_true", help="run a command that changes clusters without asking"
    )
    add_output(run)
    run.set_defaults(handler=run_cmd)
    _register_upgrade(cmds)


def _register_upgrade(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = cmds.add_parser(
        "upgrade", help="upgrade the fleet one minor, wave by wave, each wave gated"
    )
    up.set_defaults(handler=lambda _a: up.print_help())
    ucmds = up.add_subparsers(dest="fleet_upgrade_command", metavar="COMMAND")

    def waves(p: argparse.ArgumentParser) -> None:
        _add_selection(p)
        p.add_argument(
            "--waves",
            metavar="SPEC",
            help="waves in order, e.g. canary=dev-*,rest=* (default: the fleet file's, or one)",
        )

    plan = ucmds.add_parser("plan", help="each wave's clusters planned as `upgrade plan` does")
    waves(plan)
    plan.add_argument("--to", metavar="VERSION", help="target (default: the next minor)")
    plan.add_argument("--snapshot-dir", default=SNAPSHOT_DIR, help="where etcd snapshots are")
    plan.add_argument("--backup-store", metavar="STORE", help="resource backups' store")
    add_output(plan)
    plan.set_defaults(handler=upgrade_plan_cmd)

    apply = ucmds.add_parser(
        "apply",
        help="fleet upgrade apply [PATTERN...] --to V [-- UPGRADE-APPLY-FLAGS...]",
        description="Run `kubecare upgrade apply --to V` on every cluster, wave by wave; the "
        "flags after -- go to every cluster's run, a fleet file's `upgrade:` list to its own.",
    )
    waves(apply)
    apply.add_argument("--to", required=True, metavar="VERSION", help="target, e.g. v1.37.2")
    apply.add_argument(
        "--parallel",
        type=int,
        default=5,
        metavar="N",
        help="clusters of a wave at once (default 5)",
    )
    apply.add_argument(
        "--soak", default="0s", metavar="DURATION",
        help="after a wave, how long each of its clusters must stay healthy (default: one look)",
    )  # fmt: skip
    apply.add_argument(
        "--gate-interval", default="10s", metavar="DURATION",
        help="between two looks during the soak (default 10s)",
    )  # fmt: skip
    apply.add_argument(
        "--gate", metavar="CMD",
        help="a command that must exit 0 for each cluster (sh -c, with KUBECONFIG, "
        "KUBECARE_CONTEXT and KUBECARE_CLUSTER set)",
    )  # fmt: skip
    apply.add_argument("--gate-timeout", default="5m", metavar="DURATION")
    apply.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_output(apply)
    apply.set_defaults(handler=upgrade_apply_cmd)

    status = ucmds.add_parser("status", help="every cluster's upgrade journal and gate")
    waves(status)
    add_output(status)
    status.set_defaults(handler=upgrade_status_cmd)


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "patterns",
        nargs="*",
        metavar="PATTERN",
        help="contexts: NAME, /REGEX/, a glob, ^ before any to exclude (default: all)",
    )
    p.add_argument("--fleet", metavar="FILE", help="a fleet file (clusters, labels, waves)")
    p.add_argument("-l", "--selector", help="the fleet file's clusters with these labels")


def resolve(args: argparse.Namespace) -> Fleet:
    """The clusters the flags choose; a choice of nothing is an error before anything runs."""
    from kubecare.errors import UsageError
    from kubecare.fleet.fleetfile import from_contexts, load_fleet
    from kubecare.fleet.select import matches, parse_selector, select

    if args.fleet:
        fleet = load_fleet(Path(args.fleet))
        names = [c.name for c in fleet.clusters]
        if args.patterns:
            names = select(names, args.patterns)
        if args.selector:
            reqs = parse_selector(args.selector)
            labels = {c.name: c.labels for c in fleet.clusters}
            names = [n for n in names if matches(reqs, labels[n])]
            if not names:
                raise UsageError(f"no cluster of {args.fleet} has the labels {args.selector}")
        return fleet.named(names)
    if args.selector:
        raise UsageError("-l/--selector reads a fleet file's labels: add --fleet FILE")
    from kubecare.cli.render import say
    from kubecare.kube.config import context_names, shadowed

    names = select(context_names(args.kubeconfig), args.patterns)
    for note in shadowed(args.kubeconfig, names):
        say(f"note: {note}")
    return from_contexts(names, args.kubeconfig)


def _age(seconds: float | None) -> str:
    from kubecare.durations import human_duration

    return "-" if seconds is None else human_duration(int(seconds * 1e9))


def status_table(rows: list[ClusterStatus]) -> str:
    from kubecare.cli.render import simple_table

    def upgrade(r: ClusterStatus) -> str:
        if r.upgrade_go is None:
            return "-"
        if not r.upgrade_pending and r.upgrade_to == r.version:
            return "up to date"
        return f"{r.upgrade_to} {'go' if r.upgrade_go else 'NO-GO'}"

    table = simple_table(
        ("CONTEXT", "VERSION", "SKEW", "NODES", "CORDONED", "PODS-DOWN", "UPGRADE", "SNAPSHOT",
         "BACKUP", "CERT-EXPIRES", "LOCK", "ERROR"),
        [
            (r.context, r.version or "-",
             "-" if r.error else "ok" if not r.skew else f"{len(r.skew)} issue(s)",
             f"{r.nodes_ready}/{r.nodes_total}" if not r.error else "-",
             len(r.cordoned) if not r.error else "-",
             r.pods_not_running if not r.error else "-", upgrade(r),
             _age(r.snapshot_age), _age(r.backup_age), r.cert_expiry or "-",
             ", ".join([*r.lock, *([f"upgrade {r.journal}"] if r.journal else [])]) or "-",
             r.error or "-")
            for r in rows
        ],
    )  # fmt: skip
    out = [table]
    for r in rows:
        out += [f"{r.context}: NO-GO: {why}" for why in r.upgrade_reasons]
        out += [f"{r.context}: skew: {s}" for s in r.skew]
        out += [f"{r.context}: note: {n}" for n in r.notes]
    return "\n".join(out)


def status_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.render import emit
    from kubecare.errors import UsageError
    from kubecare.fleet.status import fleet_status_parallel

    if args.cluster_timeout <= 0:
        raise UsageError("--cluster-timeout must be positive")
    fleet = resolve(args)
    rows = fleet_status_parallel(
        list(fleet.clusters),
        snapshot_dir=Path(args.snapshot_dir).expanduser(),
        backup_store=args.backup_store,
        timeout=args.cluster_timeout,
    )
    emit([r.as_dict() for r in rows], args.output, lambda: status_table(rows))
    # every row is printed; the exit code says whether every cluster could be read
    return 1 if any(r.error for r in rows) else 0


def _summary(results: list[RunResult]) -> str:
    from kubecare.cli.render import simple_table

    return simple_table(
        ("CONTEXT", "EXIT", "SECONDS", "ERROR"),
        [
            (r.context, "-" if r.code is None else r.code, f"{r.seconds:.1f}", r.error or "-")
            for r in results
        ],
    )


def run_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.common import confirm
    from kubecare.cli.common import run as run_async
    from kubecare.cli.render import emit, say
    from kubecare.errors import UsageError
    from kubecare.fleet.runner import check_command, is_read_only, run_fleet

    command = list(args.command_line)
    if not command:
        raise UsageError("fleet run needs a command after --: fleet run [PATTERN...] -- nodes")
    if command[0] in ("kubecare", "kubectl-care"):
        command = command[1:]
    if command[:1] == ["fleet"]:
        raise UsageError("fleet run runs one cluster's command; it does not nest fleets")
    check_command(command)
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    fleet = resolve(args)
    names = [c.name for c in fleet.clusters]
    if len(names) > 1 and not is_read_only(command):
        say(f"kubecare {' '.join(command)} on {len(names)} clusters: {', '.join(names)}")
        what = " ".join(a for a in command if not a.startswith("-"))[:60]
        confirm(
            args.yes,
            f"kubecare {what} changes clusters; on {len(names)} clusters add --yes",
        )
    structured = args.output != "table"
    width = max(len(n) for n in names)

    def on_line(name: str, which: str, line: str) -> None:
        stream = sys.stdout if which == "out" else sys.stderr
        stream.write(f"{name.ljust(width)} | {line}\n")
        stream.flush()

    results = run_async(
        run_fleet(
            list(fleet.clusters),
            command,
            on_line,
            parallel=args.parallel,
            fail_fast=args.fail_fast,
            keep_stdout=structured,
        )
    )
    if structured:
        emit([_record(r) for r in results], args.output, lambda: "")
    else:
        say("")
        say(_summary(results))
    failed = [r for r in results if not r.ok]
    if failed:
        say(
            f"{len(failed)} of {len(results)} clusters failed: {', '.join(r.context for r in failed)}"
        )
    return 1 if failed else 0


def _record(r: RunResult) -> dict[str, Any]:
    """One cluster's result with its output: parsed when it is JSON (-o json passed on)."""
    import contextlib
    import json

    output: Any = r.stdout
    with contextlib.suppress(ValueError):
        output = json.loads(r.stdout) if r.stdout.strip() else None
    return {
        "context": r.context,
        "exitCode": r.code,
        "seconds": round(r.seconds, 2),
        "error": r.error or None,
        "output": output,
    }


# -- fleet upgrade ------------------------------------------------------------------------------
def _waves(args: argparse.Namespace) -> tuple[Fleet, list[Wave]]:
    from kubecare.fleet.upgrade import fleet_waves

    fleet = resolve(args)
    return fleet, fleet_waves(fleet, args.waves)


def plan_table(rows: list[ClusterPlan]) -> str:
    from kubecare.cli.render import simple_table

    table = simple_table(
        ("WAVE", "CONTEXT", "CURRENT", "TARGET", "PENDING", "GO", "ERROR"),
        [
            (r.wave, r.cluster, r.current or "-", r.target or "-", r.pending if not r.error
             else "-", "-" if r.error else "go" if r.go else "NO-GO", r.error or "-")
            for r in rows
        ],
    )  # fmt: skip
    return "\n".join([table, *(f"{r.cluster}: NO-GO: {why}" for r in rows for why in r.reasons)])


def _is_flag(arg: str, flag: str) -> bool:
    return arg.split("=", 1)[0] == flag


def _cluster_args(
    target: str, common: list[str], fleet: Fleet, names: list[str], *, planning: bool = False
) -> dict[str, argparse.Namespace]:
    """Each cluster's `upgrade apply` command line, parsed by the real parser before anything
    runs: a bad flag is an error naming the cluster, and nothing is changed."""
    import contextlib
    import io

    from kubecare.cli.app import build_parser
    from kubecare.errors import UsageError
    from kubecare.fleet.upgrade import apply_argv, check_upgrade_args

    check_upgrade_args(common, "the flags after --", shared=True)
    parser = build_parser()
    out: dict[str, argparse.Namespace] = {}
    by_name = {c.name: c for c in fleet.clusters}
    for name in names:
        c = by_name[name]
        check_upgrade_args(
            c.upgrade_args, f"the fleet file's upgrade flags of {name}", shared=False
        )
        argv = [a.replace("{context}", name) for a in apply_argv(target, common, c)]
        if planning and not any(_is_flag(a, "--executor") for a in argv):
            argv += ["--executor", "command"]  # a plan needs no executor; apply's parser does
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                out[name] = parser.parse_args(argv)
        except SystemExit:
            said = next((ln for ln in reversed(err.getvalue().splitlines()) if ln.strip()), "")
            raise UsageError(
                f"{name}: kubecare {' '.join(argv[:2])} refuses its flags: "
                f"{said.split(': error: ', 1)[-1]}"
            ) from None
    return out


def upgrade_plan_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.args import drain_options
    from kubecare.cli.common import run as run_async
    from kubecare.cli.render import emit
    from kubecare.cli.upgrade import _etcd_endpoints, _plan_inputs
    from kubecare.fleet.upgrade import plan_fleet
    from kubecare.versions.semver import parse_target

    target = parse_target(args.to) if args.to else None
    fleet, waves = _waves(args)
    names = [n for w in waves for n in w.clusters]
    # the flags each cluster's apply will get decide its plan (snapshot place, strategy...)
    parsed = _cluster_args(
        str(target or "v1.0.0"), list(args.command_line), fleet, names, planning=True
    )
    inputs = {
        n: (drain_options(a), {**_plan_inputs(a), "etcd_endpoints": _etcd_endpoints(a)})
        for n, a in parsed.items()
    }
    rows = run_async(plan_fleet(list(fleet.clusters), waves, target, inputs))
    emit([r.as_dict() for r in rows], args.output, lambda: plan_table(rows))
    return 0 if all(r.go and not r.error for r in rows) else 1


class _Printer:
    """Prefixed lines to stderr; a closed pipe stops the printing, never the supervision of
    upgrades in flight (the exit code then says output was lost)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.lost = False

    def write(self, text: str) -> None:
        if self.lost:
            return
        try:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except OSError:
            self.lost = True

    def line(self, name: str, _which: str, line: str) -> None:
        self.write(f"{name.ljust(self.width)} | {line}")

    def event(self, who: str, message: str) -> None:
        self.write(f"{who.ljust(self.width)} : {message}")


def upgrade_apply_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.common import confirm
    from kubecare.cli.common import run as run_async
    from kubecare.cli.render import emit, say
    from kubecare.durations import parse_duration
    from kubecare.errors import UsageError
    from kubecare.fleet.gate import GateCommand
    from kubecare.fleet.upgrade import GateOptions, apply_fleet
    from kubecare.versions.semver import parse_target

    target = str(parse_target(args.to))
    common = list(args.command_line)
    if args.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    soak = float(parse_duration(args.soak, "--soak") or 0)
    interval = float(parse_duration(args.gate_interval, "--gate-interval") or 0)
    if interval <= 0:
        raise UsageError("--gate-interval must be positive")
    gate_timeout = float(parse_duration(args.gate_timeout, "--gate-timeout") or 0)
    if gate_timeout <= 0:
        raise UsageError("--gate-timeout must be positive")
    if args.gate is not None and not args.gate.strip():
        raise UsageError("--gate needs a command")
    fleet, waves = _waves(args)
    names = [n for w in waves for n in w.clusters]
    _cluster_args(target, common, fleet, names)
    for i, w in enumerate(waves, 1):
        say(f"wave {i} {w.name}: {', '.join(w.clusters)}")
    confirm(args.yes, f"fleet upgrade to {target} changes {len(names)} cluster(s): add --yes")
    printer = _Printer(max(len(n) for n in names))
    try:
        result = run_async(
            apply_fleet(
                list(fleet.clusters),
                waves,
                target,
                common_args=common,
                parallel=args.parallel,
                gate=GateOptions(
                    soak=soak,
                    interval=interval,
                    command=GateCommand(args.gate, gate_timeout) if args.gate else None,
                ),
                on_line=printer.line,
                on_event=printer.event,
            )
        )
    except KeyboardInterrupt:
        printer.write(
            "interrupted: each cluster's upgrade was asked to stop as on Ctrl-C (a node in "
            "progress may be cordoned); run the same command again to resume"
        )
        return 130
    emit(
        {"target": target, "ok": result.ok,
         "waves": [w.__dict__ for w in result.waves],
         "clusters": [c.as_dict() for c in result.clusters]},
        args.output,
        lambda: apply_summary(result),
    )  # fmt: skip
    return 0 if result.ok and not printer.lost else 1


def apply_summary(result: FleetUpgradeResult) -> str:
    from kubecare.cli.render import simple_table

    table = simple_table(
        ("WAVE", "CONTEXT", "STATE", "EXIT", "SECONDS", "GATE", "ERROR"),
        [
            (c.wave, c.cluster, c.state, "-" if c.code is None else c.code, f"{c.seconds:.0f}",
             c.gate or "-", c.error or "-")
            for c in result.clusters
        ],
    )  # fmt: skip
    out = ["", table]
    for w in result.waves:
        if w.state == "failed":
            out.append(f"wave {w.name} failed: {w.reason}")
        elif w.state != "passed":
            out.append(f"wave {w.name} not run: {w.reason}")
    if result.ok:
        out.append(f"every wave passed: the fleet is at {result.target}")
    else:
        out.append("run the same command again to resume: finished clusters are only gated again")
    return "\n".join(out)


def upgrade_status_table(rows: list[ClusterUpgradeStatus]) -> str:
    from kubecare.cli.render import simple_table

    def cells(r: ClusterUpgradeStatus) -> tuple[Any, ...]:
        j = r.journal or {}
        nodes = j.get("nodes") or []
        done = sum(1 for n in nodes if n.get("state") == "done")
        gate = r.record.gate if r.record and r.record.target == j.get("target") else ""
        return (r.wave, r.cluster, j.get("target") or "-", j.get("state") or "-",
                f"{done}/{len(nodes)}" if j else "-", gate or "-", j.get("updated") or "-",
                r.error or j.get("message") or "-")  # fmt: skip

    return simple_table(
        ("WAVE", "CONTEXT", "TARGET", "STATE", "NODES", "GATE", "UPDATED", "MESSAGE"),
        [cells(r) for r in rows],
    )


def upgrade_status_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.common import run as run_async
    from kubecare.cli.render import emit
    from kubecare.fleet.upgrade import status_fleet

    fleet, waves = _waves(args)
    rows = run_async(status_fleet(list(fleet.clusters), waves))
    emit([r.as_dict() for r in rows], args.output, lambda: upgrade_status_table(rows))
    return 1 if any(r.error for r in rows) else 0
