"""`kubecare etcd members|health|compact|defrag|alarm`: looking after a running etcd cluster.

Targets as for the other etcd commands (cli/etcd.py): a kubeadm node's manifest by default,
``--manifests-dir``, ``--sandbox NAME`` or ``--endpoints/--cacert/--cert/--key``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.etcd.cluster import ClusterView, Target


def register(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from kubecare.cli.etcd import _add_target

    m = cmds.add_parser(
        "members", help="every member: name, URLs, leader, version, DB size, raft index, alarms"
    )
    _add_target(m)
    add_output(m)
    m.set_defaults(handler=members_cmd)

    h = cmds.add_parser(
        "health", help="go/no-go: quorum, leader, alarms, space, fragmentation, lag, hashes"
    )
    _add_target(h)
    add_output(h)
    h.set_defaults(handler=health_cmd)

    c = cmds.add_parser(
        "compact",
        help="compact the key space to the current revision (watchers behind it must relist: "
        "the apiservers do so by themselves)",
    )
    c.add_argument(
        "--keep", type=int, default=0, metavar="N", help="keep the last N revisions (default 0)"
    )
    c.add_argument("--plan", action="store_true", help="show the revision, change nothing")
    _add_target(c)
    add_output(c)
    c.set_defaults(handler=compact_cmd)

    d = cmds.add_parser(
        "defrag", help="defragment members one at a time: followers first, the leader last"
    )
    d.add_argument("member", nargs="*", metavar="MEMBER", help="names or IDs (default: all)")
    d.add_argument("--plan", action="store_true", help="show the order and the space to free")
    d.add_argument(
        "--move-leader",
        action="store_true",
        help="hand leadership to a defragmented follower before the leader's turn",
    )
    _add_target(d)
    add_output(d)
    d.set_defaults(handler=defrag_cmd)

    a = cmds.add_parser("alarm", help="space and corruption alarms: list, disarm, recover")
    a.set_defaults(handler=lambda _a: a.print_help())
    acmds = a.add_subparsers(dest="alarm_command", metavar="COMMAND")
    al = acmds.add_parser("list", help="the raised alarms")
    _add_target(al)
    add_output(al)
    al.set_defaults(handler=alarm_list_cmd)
    ad = acmds.add_parser("disarm", help="disarm every raised alarm (etcdctl alarm disarm)")
    _add_target(ad)
    add_output(ad)
    ad.set_defaults(handler=alarm_disarm_cmd)
    ar = acmds.add_parser(
        "recover",
        help="out of NOSPACE: compact, defragment every member, disarm, check a write",
    )
    ar.add_argument("--yes", action="store_true", help="go on without asking")
    _add_target(ar)
    add_output(ar)
    ar.set_defaults(handler=alarm_recover_cmd)
    register_member(cmds)


def register_member(cmds: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from kubecare.cli.etcd import _add_target

    m = cmds.add_parser("member", help="membership: add, remove, promote, replace a failed one")
    m.set_defaults(handler=lambda _a: m.print_help())
    mcmds = m.add_subparsers(dest="member_command", metavar="COMMAND")
    add = mcmds.add_parser("add", help="add a member (as a learner with --learner)")
    add.add_argument("name", metavar="NAME", help="its name (etcd --name)")
    add.add_argument("peer_url", metavar="PEER_URL", help="e.g. https://10.0.0.4:2380")
    add.add_argument("--learner", action="store_true", help="a non-voting learner")
    rm = mcmds.add_parser("remove", help="remove a member, never below quorum")
    rm.add_argument("member", metavar="MEMBER", help="name or hex ID")
    pr = mcmds.add_parser("promote", help="promote a learner once it has caught up")
    pr.add_argument("member", metavar="MEMBER", help="name or hex ID")
    pr.add_argument("--timeout", default="3m", help="how long to wait for it to catch up")
    rp = mcmds.add_parser(
        "replace",
        help="replace a failed stacked member on its node: remove, add as a learner, "
        "write its manifest as kubeadm's join does, promote",
    )
    rp.add_argument("member", metavar="NAME", help="the failed member (its node's name)")
    rp.add_argument("--force", action="store_true", help="even if it is healthy")
    rp.add_argument("--yes", action="store_true", help="go on without asking")
    rp.add_argument("--plan", action="store_true", help="show the steps, change nothing")
    for p in (add, rm, pr, rp):
        _add_target(p)
        add_output(p)
    add.set_defaults(handler=member_add_cmd)
    rm.set_defaults(handler=member_remove_cmd)
    pr.set_defaults(handler=member_promote_cmd)
    rp.set_defaults(handler=member_replace_cmd)


def _serving_endpoint(view: ClusterView) -> Any:
    from kubecare.errors import EtcdError

    m = view.serving_voter()
    if m is None or m.endpoint is None:
        raise EtcdError("no voting etcd member is serving; nothing can change")
    return m.endpoint


def member_add_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit
    from kubecare.etcd.grpc import member_add
    from kubecare.etcd.replace import check_add, initial_cluster

    _, _, view = _survey(args)
    if any(args.peer_url in m.peer_urls for m in view.members):
        from kubecare.errors import EtcdError

        raise EtcdError(f"{args.peer_url} is already a member's peer URL")
    check_add(view, learner=args.learner)
    new_id, members = run(member_add(_serving_endpoint(view), args.peer_url, learner=args.learner))
    cluster = initial_cluster(
        [(args.name if m.id == new_id else m.name, m.peer_urls) for m in members]
    )
    data = {
        "id": f"{new_id:x}",
        "name": args.name,
        "isLearner": args.learner,
        "initialCluster": cluster,
        "initialClusterState": "existing",
    }
    emit(
        data,
        args.output,
        lambda: (
            f"added {args.name} ({new_id:x}){' as a learner' if args.learner else ''}; "
            f"start it with:\n  --name={args.name} --initial-cluster={cluster} "
            "--initial-cluster-state=existing"
        ),
    )


def member_remove_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit
    from kubecare.etcd.maintenance import member_remove
    from kubecare.etcd.replace import check_remove, find

    _, _, view = _survey(args)
    m = find(view, args.member)
    check_remove(view, m)
    run(member_remove(_serving_endpoint(view), m.id))
    emit(
        {"removed": f"{m.id:x}", "name": m.name},
        args.output,
        lambda: f"removed {m.name or '(unstarted)'} ({m.id:x})",
    )


def member_promote_cmd(args: argparse.Namespace) -> None:
    import asyncio
    import time

    from kubecare.cli.common import run
    from kubecare.cli.render import emit
    from kubecare.durations import parse_duration
    from kubecare.errors import EtcdError
    from kubecare.etcd.grpc import member_promote
    from kubecare.etcd.replace import find

    _, _, view = _survey(args)
    m = find(view, args.member)
    if not m.is_learner:
        raise EtcdError(f"{m.name or f'{m.id:x}'} is a voting member already")
    timeout = parse_duration(args.timeout, "--timeout") or 0
    ep = _serving_endpoint(view)

    async def body() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await member_promote(ep, m.id)
                return
            except EtcdError as e:
                if "in sync with leader" not in str(e) or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(1.0)

    run(body())
    emit({"promoted": f"{m.id:x}"}, args.output, lambda: f"promoted {m.name} ({m.id:x})")


def member_replace_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import confirm, run
    from kubecare.cli.etcd import manifests_of
    from kubecare.cli.render import emit, say
    from kubecare.errors import EtcdError, UsageError
    from kubecare.etcd.members import parse_member
    from kubecare.etcd.replace import manifest_text, plan_replace, run_replace

    if args.endpoints:
        raise UsageError(
            "member replace writes the member's etcd.yaml: give --sandbox NAME, or run it on "
            "the member's node (--manifests-dir)"
        )
    targets, dial, view = _survey(args)
    dirs, reach, trees = manifests_of(args)
    member = None
    for d in dirs:
        try:
            m = parse_member(d / "etcd.yaml", manifest_text(d / "etcd.yaml"), reach, trees(d))
        except EtcdError:
            continue
        if m.name == args.member:
            member = m
            break
    if member is None:
        raise EtcdError(
            f"no etcd.yaml for member {args.member!r} here; run the replace on its node "
            "(or --sandbox NAME)"
        )
    plan = plan_replace(view, member.name, member.peer_url, force=args.force)
    for i, step in enumerate(plan.steps, 1):
        say(f"{i}. {step}")
    if args.plan:
        emit({"steps": list(plan.steps)}, args.output, lambda: "")
        return
    confirm(args.yes, "kubecare etcd member replace changes the cluster: add --yes")
    report = run(
        run_replace(targets, member, plan, reach=reach, dial_advertised=dial, progress=say)
    )
    emit(
        {
            "name": report.name,
            "removed": f"{report.removed:x}" if report.removed else None,
            "added": f"{report.added:x}" if report.added else None,
            "promoted": report.promoted,
            "kept": report.kept or [],
            "seconds": round(report.seconds, 1),
        },
        args.output,
        lambda: (
            f"{report.name} replaced in {report.seconds:.1f}s; every member is healthy"
            + (f"; kept: {', '.join(report.kept)}" if report.kept else "")
        ),
    )


def targets_of(args: argparse.Namespace) -> tuple[list[Target], bool]:
    """What to ask, and whether members' advertised client URLs may be dialled from here (not
    a sandbox's: its members live in network namespaces the host never dials)."""
    from kubecare.cli.etcd import endpoints_of, manifests_of
    from kubecare.etcd.cluster import Target
    from kubecare.etcd.members import read_members

    if args.endpoints:
        return [Target(ep) for ep in endpoints_of(args)], True
    if args.cacert or args.cert or args.key:
        endpoints_of(args)  # the same usage error as the other etcd commands
    from kubecare.errors import EtcdError
    from kubecare.sandbox.target import node_of, owner

    dirs, reach, trees = manifests_of(args)
    sandboxed = bool(getattr(args, "sandbox", None)) or any(owner(d) for d in dirs)
    targets = []
    for d in dirs:
        try:
            [m] = read_members([d], reach, trees)
        except EtcdError:
            # One node's manifest moved away (its etcd stopped, as an admin does on a kubeadm
            # node) is that member down, not the command failing; with one dir it is the error.
            if len(dirs) == 1 or (d / "etcd.yaml").exists():
                raise
            found = node_of(d)
            name = found[1] if found else str(d)
            targets.append(Target(None, name, f"{d / 'etcd.yaml'} is missing (etcd stopped)"))
            continue
        targets.append(Target(m.endpoint, m.name))
    return targets, not sandboxed


def _survey(args: argparse.Namespace) -> tuple[list[Target], bool, ClusterView]:
    from kubecare.cli.common import run
    from kubecare.etcd.cluster import survey

    targets, dial = targets_of(args)
    return targets, dial, run(survey(targets, dial_advertised=dial))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def members_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import emit, simple_table

    _, _, view = _survey(args)
    alarms: dict[int, str] = {}
    for a in view.alarms:  # every alarm of a member (member 0: the whole cluster's)
        alarms[a.member_id] = ",".join(filter(None, [alarms.get(a.member_id), a.alarm]))

    def table() -> str:
        rows = []
        for m in view.members:
            st = m.status
            rows.append(
                (
                    m.name or "(not started)",
                    f"{m.id:x}",
                    ",".join(m.peer_urls),
                    ",".join(m.client_urls) or "-",
                    "learner" if m.is_learner else "leader" if m.id == view.leader else "follower",
                    st.version if st else "-",
                    _mib(st.db_size) if st else "-",
                    _mib(st.db_size_in_use) if st else "-",
                    f"{st.raft_index}/{st.raft_term}" if st else "-",
                    alarms.get(m.id, "-"),
                    "healthy" if m.has_leader else (m.error or "no leader"),
                )
            )
        head = f"cluster {view.cluster_id:x}, {len(view.members)} members\n"
        if 0 in alarms:
            head += f"cluster-wide alarm: {alarms[0]}\n"
        if view.alarms_error:
            head += f"alarms unknown: {view.alarms_error}\n"
        return head + simple_table(
            [
                "name",
                "id",
                "peer urls",
                "client urls",
                "role",
                "version",
                "db size",
                "in use",
                "raft index/term",
                "alarm",
                "health",
            ],
            rows,
        )

    emit(view.as_dict(), args.output, table)
    down = [m for m in view.members if not m.has_leader]
    if down:
        from kubecare.errors import EtcdError

        raise EtcdError(
            f"{len(down)} of {len(view.members)} etcd members not healthy: "
            + "; ".join(f"{m.name or f'{m.id:x}'}: {m.error or 'no leader'}" for m in down)
        )


def health_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit, simple_table
    from kubecare.etcd.cluster import hash_all, survey
    from kubecare.etcd.health import assess, go

    targets, dial = targets_of(args)

    async def body() -> tuple[ClusterView, list[Any]]:
        before = await survey(targets, dial_advertised=dial)
        reference, peers = await hash_all(before)
        after = await survey(targets, dial_advertised=dial)
        return after, assess(after, before, reference, peers)

    view, checks = run(body())
    ok = go(checks)
    data = {
        "clusterID": f"{view.cluster_id:x}",
        "go": ok,
        "checks": [c.as_dict() for c in checks],
    }

    def table() -> str:
        verdict = "GO" if ok else "NO-GO"
        return (
            simple_table(
                ["check", "level", "detail"], [(c.name, c.level, c.detail) for c in checks]
            )
            + f"\n{verdict}: etcd cluster {view.cluster_id:x}"
        )

    emit(data, args.output, table)
    if not ok:
        from kubecare.errors import EtcdError

        failed = [c for c in checks if c.level == "fail"]
        raise EtcdError(f"etcd is not healthy: {failed[0].name}: {failed[0].detail}")


def compact_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit, say
    from kubecare.etcd.defrag import plan_compact, run_compact

    _, _, view = _survey(args)
    plan = plan_compact(view, args.keep)
    data = {"revision": plan.revision, "current": plan.current, "done": not args.plan}
    if not args.plan:
        run(run_compact(view, plan))
    emit(
        data,
        args.output,
        lambda: (
            f"{'would compact' if args.plan else 'compacted'} to revision {plan.revision} "
            f"(current {plan.current}, {args.keep} kept)"
        ),
    )
    if not args.plan and args.output == "table":
        say("the space is reused from now on; `kubecare etcd defrag` gives it back to the disk")


def _steps_table(steps: list[Any], names: dict[int, str]) -> str:
    from kubecare.cli.render import simple_table

    return simple_table(
        ["#", "member", "role", "db size", "in use", "expected free"],
        [
            (
                i,
                s.name
                + (
                    f" (leadership moved first to {s.move_leader_to:x})" if s.move_leader_to else ""
                ),
                s.role,
                _mib(s.db_size),
                _mib(s.db_size_in_use),
                _mib(s.expected_free),
            )
            for i, s in enumerate(steps, 1)
        ],
    )


def _results_table(results: list[Any]) -> str:
    from kubecare.cli.render import simple_table

    total = sum(max(0, r.before - r.after) for r in results)
    return (
        simple_table(
            ["member", "role", "before", "after", "freed", "seconds"],
            [
                (
                    r.step.name,
                    r.step.role,
                    _mib(r.before),
                    _mib(r.after),
                    _mib(max(0, r.before - r.after)),
                    f"{r.seconds:.2f}",
                )
                for r in results
            ],
        )
        + f"\nfreed {_mib(total)} on {len(results)} members"
    )


def defrag_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit, say
    from kubecare.etcd.defrag import plan_defrag, run_defrag

    targets, dial, view = _survey(args)
    steps = plan_defrag(view, args.member, move_leader=args.move_leader)
    if args.plan:
        emit(
            [s.as_dict() for s in steps],
            args.output,
            lambda: _steps_table(steps, {m.id: m.name or f"{m.id:x}" for m in view.members}),
        )
        return
    results = run(run_defrag(targets, steps, dial_advertised=dial, progress=say))
    emit([r.as_dict() for r in results], args.output, lambda: _results_table(results))


def alarm_list_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import emit, simple_table

    _, _, view = _survey(args)
    names = {m.id: m.name for m in view.members}
    emit(
        [a.as_dict() | {"member": names.get(a.member_id, "")} for a in view.alarms],
        args.output,
        lambda: (
            simple_table(
                ["member", "id", "alarm"],
                [(names.get(a.member_id, "?"), f"{a.member_id:x}", a.alarm) for a in view.alarms],
            )
            if view.alarms
            else "no alarms"
        ),
    )


def alarm_disarm_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit
    from kubecare.etcd.maintenance import disarm

    _, _, view = _survey(args)
    ep = _serving_endpoint(view)

    async def body() -> None:
        for a in view.alarms:
            await disarm(ep, a)

    run(body())
    emit(
        [a.as_dict() for a in view.alarms],
        args.output,
        lambda: (
            "\n".join(f"disarmed {a.alarm} of member {a.member_id:x}" for a in view.alarms)
            or "no alarms"
        ),
    )
    if any(a.alarm == "NOSPACE" for a in view.alarms):
        from kubecare.cli.render import say

        say(
            "note: unless space was freed first, etcd raises NOSPACE again at the next write; "
            "`kubecare etcd alarm recover` frees it"
        )


def alarm_recover_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import confirm, run
    from kubecare.cli.render import emit, say
    from kubecare.etcd.space import plan_recover, run_recover

    targets, dial, view = _survey(args)
    plan = plan_recover(view)
    for line in plan.lines({m.id: m.name for m in view.members}):
        say(line)
    confirm(args.yes, "kubecare etcd alarm recover changes every member: add --yes")
    report = run(run_recover(targets, plan, dial_advertised=dial, progress=say))
    emit(
        report.as_dict(),
        args.output,
        lambda: (
            _results_table(report.defrag)
            + f"\ncompacted to {report.compacted_to}; disarmed {len(report.disarmed)} alarm(s); "
            f"a write went through at revision {report.write_revision}"
        ),
    )
