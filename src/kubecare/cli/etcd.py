"""`kubecare etcd ...`: snapshots (save, status) and member status.

Where etcd is: etcdctl's ``--endpoints --cacert --cert --key``; or, on a kubeadm control-plane
node, nothing at all (read from /etc/kubernetes/manifests/etcd.yaml); ``--manifests-dir`` for
another place, ``--sandbox NAME`` for a kubecare sandbox's control-plane nodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.etcd.members import Endpoint, Member, Reach, Trees
    from kubecare.etcd.restore import RestoreReport
    from kubecare.etcd.restore_prepare import Prepared
    from kubecare.etcd.snapshot import Status


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subs.add_parser(
        "etcd", help="etcd: snapshots, members, health, compaction, defragmentation, alarms"
    )
    group.set_defaults(handler=lambda _a: group.print_help())
    cmds = group.add_subparsers(dest="etcd_command", metavar="COMMAND")

    st = cmds.add_parser("status", help="each member: version, leader, DB size, revision")
    _add_target(st)
    add_output(st)
    st.set_defaults(handler=member_status_cmd)

    from kubecare.cli import etcd_care

    etcd_care.register(cmds)

    snap = cmds.add_parser("snapshot", help="save a snapshot, or look inside one")
    snap.set_defaults(handler=lambda _a: snap.print_help())
    scmds = snap.add_subparsers(dest="snapshot_command", metavar="COMMAND")

    save = scmds.add_parser(
        "save",
        help="stream a snapshot from a healthy member into FILE (0600, atomic; etcdutl restores it)",
    )
    save.add_argument("file", metavar="FILE")
    _add_target(save)
    save.add_argument(
        "--overwrite", action="store_true", help="replace FILE if it exists (never by default)"
    )
    save.add_argument(
        "--compress", choices=("zstd",), help="write it zstd-compressed (kubecare reads it as is)"
    )
    save.add_argument(
        "--timeout", type=float, default=0, metavar="SECONDS", help="give up after (0: never)"
    )
    save.add_argument(
        "--verify",
        action="store_true",
        help="check the SHA-256 while saving (status and restore always check it)",
    )
    add_output(save)
    save.set_defaults(handler=save_cmd)

    status = scmds.add_parser(
        "status",
        help="etcdutl's numbers (hash, revision, keys, size, version) and what Kubernetes keeps in it",
    )
    status.add_argument("file", metavar="FILE")
    status.add_argument(
        "-w",
        "--write-out",
        dest="output",
        choices=("table", "json", "yaml"),
        default="table",
        help="table (default), json or yaml (-o works too)",
    )
    status.add_argument("-o", "--output", dest="output", choices=("table", "json", "yaml"))
    status.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="do not check the SHA-256 trailer (etcdutl's status does not either)",
    )
    status.set_defaults(handler=snapshot_status_cmd)

    ls = scmds.add_parser(
        "ls", help="the keys in a snapshot: resource, namespace, name, size, revision"
    )
    ls.add_argument("file", metavar="FILE")
    ls.add_argument("--prefix", default="", help="only keys under it, e.g. /registry/deployments/")
    add_output(ls)
    ls.set_defaults(handler=ls_cmd)

    def one_object(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = scmds.add_parser(name, help=help_text)
        p.add_argument("file", metavar="FILE")
        p.add_argument(
            "object", metavar="KEY|RESOURCE/NAME", help="e.g. configmaps/app or /registry/..."
        )
        p.add_argument(
            "--encryption-config",
            metavar="FILE",
            help="kube-apiserver's EncryptionConfiguration, to read values encrypted at rest",
        )
        p.add_argument(
            "--kubernetes-minor",
            type=int,
            help="decode as this Kubernetes minor's apiserver would (default: the newest table)",
        )
        return p

    get = one_object("get", "one object from a snapshot, as the apiserver returned it then")
    get.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    get.set_defaults(handler=get_cmd)

    rec = one_object(
        "recover", "one object from a snapshot, cleaned for a re-create; --apply creates it"
    )
    rec.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    rec.add_argument("--apply", action="store_true", help="create it in the live cluster")
    rec.add_argument(
        "--replace",
        action="store_true",
        help="with --apply: replace it if it exists (never by default)",
    )
    rec.set_defaults(handler=recover_cmd)

    diff = scmds.add_parser(
        "diff", help="the live cluster against a snapshot: objects added, deleted, modified since"
    )
    diff.add_argument("file", metavar="FILE")
    diff.add_argument(
        "--all",
        dest="all_types",
        action="store_true",
        help="include events and leases (left out: they change all the time)",
    )
    add_output(diff)
    diff.set_defaults(handler=diff_cmd)

    r = cmds.add_parser(
        "restore",
        help="restore a kubeadm control plane from a snapshot (new data dirs, guided, verified)",
    )
    r.add_argument("file", metavar="FILE")
    _add_target(r)
    r.add_argument(
        "--data-dir",
        help="the new data dir (one member only; default: <old data dir>-restore-<time>)",
    )
    r.add_argument("--etcdutl", metavar="PATH", help="the etcdutl binary (default: on $PATH)")
    r.add_argument(
        "--initial-cluster",
        metavar="NAME=PEER-URL,...",
        help="restore only this node's members into this whole cluster: run the same restore "
        "(same snapshot, list and --initial-cluster-token) on every control-plane node",
    )
    r.add_argument(
        "--initial-cluster-token",
        "--token",
        dest="token",
        metavar="TOKEN",
        help="the new cluster's token (default: kubecare-restore-<time>; with "
        "--initial-cluster: required, the same on every node)",
    )
    r.add_argument(
        "--quorum-timeout",
        default="10m",
        metavar="DURATION",
        help="with --initial-cluster: how long this node's run waits for the quorum the other "
        "nodes' runs bring (default 10m)",
    )
    r.add_argument(
        "--skip-hash-check",
        action="store_true",
        help="restore a file without etcd's SHA-256 trailer (a copied member/snap/db)",
    )
    r.add_argument(
        "--no-restart-controllers",
        dest="restart_controllers",
        action="store_false",
        help="leave kube-controller-manager and kube-scheduler running",
    )
    r.add_argument(
        "--bump-revision",
        type=int,
        default=1_000_000_000,
        metavar="N",
        help="move revisions past every one a client saw, old ones read as compacted, so "
        "watchers relist (etcdutl --bump-revision --mark-compacted; default 1000000000, 0: off)",
    )
    r.add_argument("--dry-run", action="store_true", help="print the steps, change nothing")
    r.add_argument(
        "--yes",
        action="store_true",
        help="go ahead: the whole cluster goes back to the snapshot (required unless --dry-run)",
    )
    add_output(r)
    r.set_defaults(handler=restore_cmd)


def _add_target(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where etcd is (default: /etc/kubernetes/manifests/etcd.yaml)")
    g.add_argument("--endpoints", help="comma-separated client URLs, e.g. https://127.0.0.1:2379")
    g.add_argument(
        "--cacert", help="etcd's CA certificate (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)"
    )
    g.add_argument("--cert", help="a client certificate etcd trusts")
    g.add_argument("--key", help="its private key")
    g.add_argument(
        "--manifests-dir",
        action="append",
        metavar="DIR",
        help="a kubeadm static pod manifests dir to read etcd.yaml from (repeatable)",
    )
    g.add_argument("--sandbox", metavar="NAME", help="the etcd of a kubecare sandbox")


def endpoints_of(args: argparse.Namespace) -> list[Endpoint]:
    """The endpoints the flags name, or those of the kubeadm manifests."""
    from kubecare.errors import UsageError
    from kubecare.etcd.members import parse_endpoints, read_members

    chosen = [f for f in ("endpoints", "manifests_dir", "sandbox") if getattr(args, f)]
    if len(chosen) > 1:
        raise UsageError("give one of --endpoints, --manifests-dir and --sandbox")
    if args.endpoints:
        return parse_endpoints(args.endpoints, args.cacert, args.cert, args.key)
    if args.cacert or args.cert or args.key:
        raise UsageError("--cacert/--cert/--key go with --endpoints")
    return [m.endpoint for m in read_members(*manifests_of(args))]


def manifests_of(args: argparse.Namespace) -> tuple[list[Path], Reach, Trees]:
    """The manifests dirs ``--sandbox``/``--manifests-dir`` name (kubeadm's by default), how
    this process reaches the URLs they name, and where the files they name are."""
    from kubecare.etcd.members import KUBEADM_MANIFESTS, as_written, on_the_node
    from kubecare.sandbox.target import etcd_target, owner, reach_for, trees_for

    if getattr(args, "sandbox", None):
        return etcd_target(args.sandbox)
    dirs = [Path(d) for d in getattr(args, "manifests_dir", None) or [KUBEADM_MANIFESTS]]
    # A sandbox node's manifests dir, given from the host: its URLs through the forwards, its
    # files inside its tree.
    if any(owner(d) for d in dirs):
        return dirs, reach_for(dirs), trees_for(dirs)
    return dirs, as_written, on_the_node


def member_status_cmd(args: argparse.Namespace) -> None:
    import asyncio

    from kubecare.cli.common import run
    from kubecare.cli.render import emit, simple_table
    from kubecare.etcd.grpc import MemberStatus, member_status
    from kubecare.etcd.snapshot import humanize_bytes

    eps = endpoints_of(args)

    async def all_of() -> list[MemberStatus | BaseException]:
        return await asyncio.gather(*(member_status(ep) for ep in eps), return_exceptions=True)

    results = run(all_of())
    rows: list[dict[str, Any]] = []
    failed = []
    for ep, res in zip(eps, results, strict=True):
        if isinstance(res, MemberStatus):
            rows.append(res.as_dict())
        else:
            failed.append(str(res))
            rows.append({"endpoint": ep.url, "error": str(res)})

    def table() -> str:
        return simple_table(
            [
                "endpoint",
                "id",
                "version",
                "db size",
                "in use",
                "leader",
                "learner",
                "revision",
                "errors",
            ],
            [
                (
                    r["endpoint"],
                    r.get("memberID", "-"),
                    r.get("version", "-"),
                    humanize_bytes(r["dbSize"]) if "dbSize" in r else "-",
                    humanize_bytes(r["dbSizeInUse"]) if "dbSizeInUse" in r else "-",
                    ("yes" if r.get("isLeader") else "no") if "isLeader" in r else "-",
                    ("yes" if r.get("isLearner") else "no") if "isLearner" in r else "-",
                    r.get("revision", "-"),
                    ", ".join(r.get("errors") or []) or r.get("error", "") or "-",
                )
                for r in rows
            ],
        )

    emit(rows, args.output, table)
    if failed:
        from kubecare.errors import EtcdError

        raise EtcdError(
            failed[0] if len(failed) == 1 else f"{len(failed)} members failed: {failed[0]}"
        )


def save_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import run
    from kubecare.cli.render import emit, say
    from kubecare.etcd.grpc import pick_healthy
    from kubecare.etcd.save import Saved, check_target, save

    dest = Path(args.file)
    check_target(dest, overwrite=args.overwrite)  # before any connection
    eps = endpoints_of(args)
    interactive = sys.stderr.isatty()
    last = [0.0]
    t0 = time.monotonic()

    def progress(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] < 0.5 and (total is None or done < total):
            return
        last[0] = now
        rate = done / max(now - t0, 1e-6) / 1e6
        of = f" of {total / 1e6:.1f} MB" if total else ""
        line = f"saving: {done / 1e6:.1f} MB{of} ({rate:.0f} MB/s)"
        if interactive:
            sys.stderr.write("\r" + line + "\x1b[K")
            sys.stderr.flush()

    async def body() -> Saved:
        ep = eps[0]
        if len(eps) > 1:
            ep, st = await pick_healthy(eps)
            say(f"taking the snapshot from {ep.url} (member {st.member_id:x}, healthy)")
        return await save(
            ep,
            dest,
            overwrite=args.overwrite,
            compress=args.compress,
            progress=progress if interactive else None,
            timeout=args.timeout or None,
            verify=args.verify,
        )

    try:
        saved = run(body())
    finally:
        if interactive:
            sys.stderr.write("\r\x1b[K")
    rate = saved.bytes / max(saved.seconds, 1e-6) / 1e6
    say(
        f"{saved.bytes / 1e6:.1f} MB from {saved.endpoint} in {saved.seconds:.2f}s ({rate:.0f} MB/s)"
        + (", SHA-256 verified" if args.verify else "")
        + (f", {saved.written / 1e6:.1f} MB written (zstd)" if args.compress else "")
    )

    def table() -> str:
        lines = [f"Snapshot saved at {saved.path}"]
        if saved.version:
            lines.append(f"Server version {saved.version}")
        return "\n".join(lines)

    emit(
        {
            "path": str(saved.path),
            "endpoint": saved.endpoint,
            "bytes": saved.bytes,
            "written": saved.written,
            "version": saved.version,
            "seconds": round(saved.seconds, 3),
        },
        args.output,
        table,
    )


def snapshot_status_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import emit
    from kubecare.errors import SnapshotError
    from kubecare.etcd.compressed import plain
    from kubecare.etcd.snapshot import status

    path = Path(args.file)
    if not path.exists():
        raise SnapshotError(f"{path}: no such file")
    with plain(path) as readable:
        st = status(readable, verify=not args.skip_hash_check)
    data = {**st.etcdutl(), "sha256": st.sha256, "kubernetes": _kube_part(st)}
    emit(data, args.output, lambda: _status_table(st))


def _kube_part(st: Status) -> dict[str, Any]:
    return {
        "resources": [
            {"resource": r.resource, "count": r.count, "bytes": r.bytes} for r in st.resources
        ],
        "namespaces": [{"namespace": ns, "count": n} for ns, n in st.namespaces],
        "largest": [{"key": k, "bytes": n} for k, n in st.largest],
        "encrypted": st.encrypted,
    }


def _status_table(st: Status) -> str:
    from kubecare.cli.render import simple_table
    from kubecare.etcd.snapshot import humanize_bytes

    out = [
        simple_table(
            ["hash", "revision", "total keys", "total size", "version"],
            [
                (
                    f"{st.hash:x}",
                    st.revision,
                    st.total_key,
                    humanize_bytes(st.total_size),
                    st.version,
                )
            ],
        ),
        "",
        "SHA-256 trailer: "
        + {
            "ok": "verified",
            "not checked": "present, not checked (--skip-hash-check)",
        }.get(
            st.sha256, "absent (not a file etcdctl/kubecare saved; restore needs --skip-hash-check)"
        ),
        f"encrypted at rest: {st.encrypted} of {st.total_key} values",
        "",
        simple_table(
            ["resource", "objects", "size"],
            [(r.resource, r.count, humanize_bytes(r.bytes)) for r in st.resources],
        ),
    ]
    if st.namespaces:
        out += ["", simple_table(["namespace", "objects"], st.namespaces[:10])]
    if st.largest:
        out += [
            "",
            simple_table(["largest keys", "size"], [(k, humanize_bytes(n)) for k, n in st.largest]),
        ]
    return "\n".join(out)


def _etcdutl(args: argparse.Namespace, members: list[Member]) -> Path:
    import shutil
    import subprocess

    from kubecare.errors import EtcdError
    from kubecare.sandbox.target import owner

    if args.etcdutl:
        path: Path | None = Path(args.etcdutl)
    elif args.sandbox or any(owner(m.manifest.parent) for m in members):
        from kubecare.sandbox.target import etcdutl_for

        path = etcdutl_for([m.image for m in members])
    else:
        found = shutil.which("etcdutl")
        path = Path(found) if found else None
    if path is None or not path.exists():
        raise EtcdError(
            "etcdutl not found: install it from the etcd release that matches your etcd image "
            "(it ships in the etcd image and release tarball) or give --etcdutl PATH"
        )
    try:
        subprocess.run([str(path), "version"], capture_output=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        raise EtcdError(f"{path} does not run as etcdutl (`{path} version` failed)") from None
    return path


def restore_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import emit
    from kubecare.errors import SnapshotError, UsageError
    from kubecare.etcd.compressed import plain

    snapshot = Path(args.file).absolute()
    if not snapshot.is_file():
        raise SnapshotError(f"{snapshot}: no such file")
    if args.endpoints:
        if not args.dry_run:
            raise UsageError(
                "with --endpoints (an etcd not run as a kubeadm static pod, e.g. by systemd) "
                "restore only prints the steps: add --dry-run and follow them"
            )
        from kubecare.etcd.systemd_restore import systemd_steps

        for i, text in enumerate(systemd_steps(snapshot, time.strftime("%Y%m%dT%H%M%S")), 1):
            print(f"{i}. {text}")
        return
    if not args.dry_run and not args.yes:
        raise UsageError(
            "a restore takes the whole cluster back to the snapshot (objects created since are "
            "gone); add --yes to go ahead, or --dry-run to see the steps"
        )
    if args.bump_revision < 0:
        raise UsageError("--bump-revision must not be negative")
    with plain(snapshot) as readable:  # a zstd file is decompressed next to itself
        report = _restore(args, snapshot, readable)
    if report is None:
        return

    def table() -> str:
        lines = [
            f"restored {snapshot} (revision {report.plan.revision}, served as {report.revision})"
        ]
        for m in report.plan.members:
            lines.append(
                f"  {m.member.name}: data in {m.new_data_dir} (the old {m.member.data_dir} is untouched)"
            )
        lines.append("backups: " + ", ".join(str(b) for b in report.backups))
        if report.kubeadm_config:
            lines.append(report.kubeadm_config)
        for name, seconds in report.steps:
            lines.append(f"  {seconds:6.1f}s  {name}")
        lines.append("next: restart the kubelet on every node (systemctl restart kubelet)")
        return "\n".join(lines)

    emit(report.as_dict(), args.output, table)


def _restore(args: argparse.Namespace, snapshot: Path, readable: Path) -> RestoreReport | None:
    from kubecare.cli.common import run
    from kubecare.cli.render import say
    from kubecare.durations import parse_duration
    from kubecare.etcd.restore import run_restore
    from kubecare.etcd.restore_prepare import RestoreRequest, check, prepare

    dirs, reach, trees = manifests_of(args)
    prepared = prepare(
        RestoreRequest(
            snapshot,
            readable,
            dirs,
            trees=trees,
            etcdutl=lambda members: _etcdutl(args, members),
            stamp=time.strftime("%Y%m%dT%H%M%S"),
            reach=reach,
            data_dir=Path(args.data_dir).absolute() if args.data_dir else None,
            skip_hash_check=args.skip_hash_check,
            restart_controllers=args.restart_controllers,
            bump=args.bump_revision,
            cluster=args.initial_cluster,
            token=args.token,
            quorum_timeout=float(parse_duration(args.quorum_timeout, "--quorum-timeout") or 0),
        ),
        say,
    )

    def print_steps() -> None:
        for i, text in enumerate(prepared.plan.steps(), 1):
            print(f"{i}. {text}", flush=True)

    if args.dry_run and prepared.per_node:
        print_steps()  # safe before the checks (see Prepared.per_node)
    run(check(prepared, say))
    if args.dry_run:
        if not prepared.per_node:
            print_steps()
        return None
    report: RestoreReport = run(run_restore(prepared.plan, say))
    report.kubeadm_config = _record_data_dir(args, prepared)
    return report


def _record_data_dir(args: argparse.Namespace, prepared: Prepared) -> str:
    """kubeadm-config's etcd.local.dataDir -> the restored dir (else the next kubeadm upgrade
    puts etcd back on the old data); a failure is a warning: the restore itself is done."""
    import argparse as ap

    from kubecare.cli.common import with_cluster
    from kubecare.errors import EtcdError, KubecareError
    from kubecare.etcd.kubeadm_config import is_restored_cluster, one_dir, record_data_dir

    members = prepared.plan.members
    dirs = [str(m.member.tree.node(m.new_data_dir)) for m in members]
    from kubecare.sandbox.target import owner

    # The restored cluster's own credentials first: --kubeconfig if given; a sandbox node's
    # dir, the sandbox's kubeconfig and forwards (its nodes' kubeconfigs name 192.0.2.x, which
    # the host never dials); a kubeadm node, its admin.conf; only then $KUBECONFIG or
    # ~/.kube/config. Whichever it is, it must lead to the cluster just restored.
    kubeconfig = args.kubeconfig
    sandbox = args.sandbox or owner(members[0].manifests)
    if not kubeconfig and sandbox:
        from kubecare.sandbox.state import state_root

        kubeconfig = str(state_root() / sandbox / "kubeconfig")
    admin = Path("/etc/kubernetes/admin.conf")
    if not kubeconfig and admin.exists():
        kubeconfig = str(admin)
    names = [m.member.name for m in members]

    async def record(kube: Any) -> bool:
        if not await is_restored_cluster(kube, names, data_dir):
            raise EtcdError(
                f"{kube.server} does not show the restored members' etcd on {data_dir} "
                f"(mirror pods {', '.join('kube-system/etcd-' + n for n in names)}): not the "
                "cluster just restored, or its kubelets lag; check --kubeconfig"
            )
        return await record_data_dir(kube, data_dir)

    try:
        data_dir = one_dir(dirs)
        changed = with_cluster(
            ap.Namespace(**{**vars(args), "kubeconfig": kubeconfig, "sandbox": sandbox}), record
        )
    except KubecareError as e:
        return (
            f"warning: kubeadm-config not updated ({e}); set etcd.local.dataDir in its "
            "ClusterConfiguration to the restored dir (kubectl -n kube-system edit cm "
            "kubeadm-config), or the next kubeadm upgrade puts etcd back on the old data"
        )
    if not changed:
        return ""
    return f"kubeadm-config: etcd.local.dataDir is now {data_dir} (kubeadm upgrade keeps it)"


def _readable(args: argparse.Namespace) -> Any:
    from kubecare.errors import SnapshotError
    from kubecare.etcd.compressed import plain

    path = Path(args.file)
    if not path.exists():
        raise SnapshotError(f"{path}: no such file")
    return plain(path)


def ls_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import emit, simple_table
    from kubecare.etcd.objects import entries
    from kubecare.etcd.snapshot import humanize_bytes

    with _readable(args) as path:
        items = entries(path, args.prefix)
    emit(
        items,
        args.output,
        lambda: simple_table(
            ["resource", "namespace", "name", "size", "revision", "stored as"],
            [
                (
                    e.resource or e.key,
                    e.namespace or "-",
                    e.name,
                    humanize_bytes(e.size),
                    e.mod_revision,
                    e.encoding,
                )
                for e in items
            ],
        ),
    )


def _decoded(args: argparse.Namespace) -> tuple[Any, dict[str, Any], list[str]]:
    from kubecare.etcd.encryption import load_keys
    from kubecare.etcd.k8sproto import Decoder
    from kubecare.etcd.objects import decode, find

    keys = load_keys(Path(args.encryption_config)) if args.encryption_config else None
    with _readable(args) as path:
        entry, value = find(path, args.object, args.namespace)
    result = decode(entry, value, Decoder(args.kubernetes_minor), keys)
    notes = []
    if not result.exact:
        notes.append(
            f"shown as stored ({result.api_version}); the apiserver serves it converted to a newer version"
        )
    return entry, result.object(), notes


def _print(obj: dict[str, Any], output: str) -> None:
    if output == "json":
        import orjson

        sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))


def get_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.render import say

    _, obj, notes = _decoded(args)
    for n in notes:
        say(f"note: {n}")
    _print(obj, args.output)


def recover_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import say
    from kubecare.errors import UsageError
    from kubecare.etcd.objects import api_path, clean

    if args.replace and not args.apply:
        raise UsageError("--replace goes with --apply")
    entry, obj, notes = _decoded(args)
    if notes and args.apply:  # shown as stored, in a version the apiserver no longer serves
        raise UsageError(
            f"{entry.resource}/{entry.name} is stored as {obj.get('apiVersion')}, which the "
            "apiserver does not serve; recover it without --apply and convert it first"
        )
    cleaned, warnings = clean(obj)
    for n in [*notes, *warnings]:
        say(f"note: {n}")
    if not args.apply:
        _print(cleaned, args.output)
        return

    async def body(kube: Any) -> str:
        from kubecare.errors import Conflict, NotFound

        collection = api_path(cleaned, entry, named=False)
        try:
            await kube.request_json("POST", collection, body=cleaned)
            return "created"
        except Conflict:
            if not args.replace:
                raise UsageError(
                    f"{entry.resource}/{entry.name} exists in the cluster; add --replace to overwrite it"
                ) from None
        named = api_path(cleaned, entry, named=True)
        try:
            live = await kube.get_json(named)
        except NotFound:  # deleted meanwhile
            await kube.request_json("POST", collection, body=cleaned)
            return "created"
        replacement = {
            **cleaned,
            "metadata": {
                **cleaned["metadata"],
                "resourceVersion": live["metadata"]["resourceVersion"],
            },
        }
        await kube.request_json("PUT", named, body=replacement)
        return "replaced"

    done = with_cluster(args, body)
    ns = f" in namespace {entry.namespace}" if entry.namespace else ""
    print(
        f"{entry.resource}/{entry.name}{ns} {done} from the snapshot (revision {entry.mod_revision})"
    )


def diff_cmd(args: argparse.Namespace) -> None:
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit, say, simple_table
    from kubecare.etcd.objects import (
        CHURN,
        compare,
        entries,
        iter_changes,
        live_index,
        snapshot_index,
    )

    with _readable(args) as path:
        items = entries(path, "/registry/")
    exclude = set() if args.all_types else set(CHURN)

    async def body(kube: Any) -> Any:
        return await live_index(kube, exclude)

    live, listed, failed = with_cluster(args, body)
    for problem in failed:
        say(f"warning: not compared, cannot list {problem}")
    changes = compare(snapshot_index(items, listed), live)

    def table() -> str:
        if not changes:
            return "no differences: every object is as in the snapshot"
        summary = simple_table(
            ["resource", "added", "deleted", "modified"],
            [(r, c["added"], c["deleted"], c["modified"]) for r, c in iter_changes(changes)],
        )
        detail = simple_table(
            ["change", "resource", "namespace", "name", "snapshot rev", "live rev"],
            [
                (
                    c.change,
                    c.resource,
                    c.namespace or "-",
                    c.name,
                    c.snapshot_revision or "-",
                    c.live_revision or "-",
                )
                for c in changes
            ],
        )
        return summary + "\n\n" + detail

    emit(changes, args.output, table)
