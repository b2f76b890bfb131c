"""`kubecare backup ...`: the cluster's resource configuration, through the API, into an
archive (a directory or s3://), and back.

STORE is a directory (default ~/.local/share/kubecare/backups) or s3://bucket/prefix (endpoint
and credentials from AWS_* variables). NAME is a backup in the store, or the path of an archive.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.cli.args import add_output

if TYPE_CHECKING:
    from kubecare.backup.create import BackupResult
    from kubecare.backup.rules import Filters
    from kubecare.backup.stores import Store


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    group = subs.add_parser(
        "backup", help="back up the cluster's resources through the API; verify, diff, restore"
    )
    group.set_defaults(handler=lambda _a: group.print_help())
    cmds = group.add_subparsers(dest="backup_command", metavar="COMMAND")

    create = cmds.add_parser(
        "create", help="every resource type into one archive (Secrets encrypted with age)"
    )
    create.add_argument("name", nargs="?", metavar="NAME", help="default: backup-<date>-<time>")
    create.add_argument(
        "--to", dest="store", metavar="STORE", help="directory or s3://bucket/prefix"
    )
    _add_filters(create)
    enc = create.add_argument_group("Secrets")
    enc.add_argument(
        "--encrypt-to",
        action="append",
        default=[],
        metavar="RECIPIENT",
        help="age recipient (age1... or an SSH public key) for the Secrets; repeatable",
    )
    enc.add_argument(
        "--recipients-file",
        metavar="FILE",
        help="age recipients file (default: ~/.config/kubecare/backup-recipients.txt if present)",
    )
    enc.add_argument(
        "--allow-plaintext-secrets",
        action="store_true",
        help="store Secrets unencrypted when no recipient is given",
    )
    vol = create.add_argument_group("persistent volume data")
    vol.add_argument(
        "--volumes", nargs="?", const="fs", default="", metavar="METHOD",
        help="also copy each bound claim's files (fs: tar through a helper pod on the "
        "volume's node; encrypted with --encrypt-to like Secrets)",
    )  # fmt: skip
    vol.add_argument(
        "--exclude-volume", action="append", default=[], metavar="NS/CLAIM",
        help="a claim whose data is left out; repeatable",
    )  # fmt: skip
    _add_helper_image(vol)
    create.add_argument(
        "--strict", action="store_true",
        help="stop at the first type that cannot be listed, writing nothing",
    )  # fmt: skip
    create.add_argument(
        "--allow-partial", action="store_true",
        help="exit 0 although some types could not be listed (the backup is marked partial)",
    )  # fmt: skip
    create.add_argument(
        "--no-default-excludes",
        dest="default_excludes",
        action="store_false",
        help="keep the objects left out by default (controller-made pods, kube-root-ca.crt, ...)",
    )
    create.add_argument("--concurrency", type=int, default=4, help="types listed at once (4)")
    create.add_argument(
        "--chunk-size", type=int, default=500, help="objects per list request (500; 0: unpaged)"
    )
    create.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes that serialize, encrypt and compress (2; 0: none, all in this one)",
    )
    _add_retention(create)
    add_output(create)
    create.set_defaults(handler=create_cmd)

    lst = cmds.add_parser("list", help="the backups in a store")
    lst.add_argument("--from", dest="store", metavar="STORE")
    add_output(lst)
    lst.set_defaults(handler=list_cmd)

    desc = cmds.add_parser("describe", help="a backup's manifest: cluster, filters, types, counts")
    desc.add_argument("name", metavar="NAME")
    desc.add_argument("--from", dest="store", metavar="STORE")
    add_output(desc)
    desc.set_defaults(handler=describe_cmd)

    ver = cmds.add_parser("verify", help="check every object's sha256 and the archive's layout")
    ver.add_argument("name", metavar="NAME")
    ver.add_argument("--from", dest="store", metavar="STORE")
    add_output(ver)
    ver.set_defaults(handler=verify_cmd)

    diff = cmds.add_parser(
        "diff",
        help="the backup against the cluster: only in the backup, only in the cluster, changed",
    )
    diff.add_argument("name", metavar="NAME")
    diff.add_argument("--from", dest="store", metavar="STORE")
    _add_filters(diff)
    diff.add_argument("--identity", metavar="FILE", help="age identity file, to compare Secrets")
    add_output(diff)
    diff.set_defaults(handler=diff_cmd)

    rest = cmds.add_parser(
        "restore", help="apply the backup's objects in dependency order (never deletes anything)"
    )
    rest.add_argument("name", metavar="NAME")
    rest.add_argument("--from", dest="store", metavar="STORE")
    _add_filters(rest)
    rest.add_argument(
        "--existing",
        choices=("skip", "update"),
        default="skip",
        help="objects that exist already: leave them (skip, default) or apply over them (update)",
    )
    rest.add_argument(
        "--namespace-map",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="restore namespace OLD's objects into NEW; repeatable",
    )
    rest.add_argument(
        "--dry-run", action="store_true", help="send every object with a server-side dry run"
    )
    rest.add_argument("--identity", metavar="FILE", help="age identity file, for the Secrets")
    rest.add_argument(
        "--order", default="", metavar="TYPES", help="types restored first, comma-separated"
    )
    rest.add_argument("--concurrency", type=int, default=16, help="objects in flight (16)")
    rest.add_argument(
        "--no-volumes", dest="volumes", action="store_false",
        help="restore the claims but not the volume data the backup holds",
    )  # fmt: skip
    _add_helper_image(rest)
    add_output(rest)
    rest.set_defaults(handler=restore_cmd)

    delete = cmds.add_parser(
        "delete", help="delete backups by name, or those --keep-last/--keep-within let go"
    )
    delete.add_argument("names", nargs="*", metavar="NAME")
    delete.add_argument("--from", dest="store", metavar="STORE")
    _add_retention(delete)
    delete.add_argument(
        "--dry-run", action="store_true", help="say what would be deleted, delete nothing"
    )
    delete.add_argument(
        "--unpin", action="store_true",
        help="delete named backups even if pinned (an unfinished upgrade's rollback backup)",
    )  # fmt: skip
    delete.set_defaults(handler=delete_cmd)

    keygen = cmds.add_parser(
        "keygen",
        help="a new age identity for encrypted backups: the key file (0600), its recipient printed",
    )
    keygen.add_argument(
        "-o", "--output-file", required=True, metavar="FILE",
        help="where the identity goes (0600; never overwritten without --overwrite)",
    )  # fmt: skip
    keygen.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
    keygen.set_defaults(handler=keygen_cmd)

    sched = cmds.add_parser(
        "schedule",
        help="print a CronJob and read-only RBAC (the types the cluster serves now) that run "
        "`kubecare backup create` in the cluster",
    )
    sched.add_argument("--image", required=True, help="an image with kubecare installed")
    sched.add_argument("--schedule", default="0 2 * * *", help="cron schedule (0 2 * * *)")
    sched.add_argument("--to", dest="store", default="", metavar="STORE")
    sched.add_argument("--claim", default="", help="PVC to keep backups on (directory store)")
    sched.add_argument("--s3-secret", default="", help="Secret with the AWS_* variables")
    sched.add_argument("--encrypt-to", action="append", default=[], metavar="RECIPIENT")
    sched.add_argument("--allow-plaintext-secrets", action="store_true")
    sched.add_argument("--schedule-namespace", default="kubecare", help="namespace (kubecare)")
    sched.add_argument("--keep-last", type=int, default=None, metavar="N")
    sched.add_argument("--keep-within", default="", metavar="DURATION")
    sched.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    sched.set_defaults(handler=schedule_cmd)


def _add_helper_image(p: Any) -> None:
    p.add_argument(
        "--volume-helper-image", default="", metavar="IMAGE",
        help="image of the helper pods (needs sh, sleep, du and tar; default "
        "$KUBECARE_HELPER_IMAGE, else docker.io/library/busybox:1.37)",
    )  # fmt: skip


def _add_filters(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (comma-separated lists; repeatable)")
    g.add_argument("--include-namespaces", action="append", default=[], metavar="NS")
    g.add_argument("--exclude-namespaces", action="append", default=[], metavar="NS")
    g.add_argument(
        "--include-resources",
        action="append",
        default=[],
        metavar="TYPE",
        help="e.g. deployments,configmaps,widgets.example.com (takes default-skipped types too)",
    )
    g.add_argument("--exclude-resources", action="append", default=[], metavar="TYPE")
    g.add_argument("-l", "--selector", default="", help="label selector")
    g.add_argument(
        "--include-cluster-resources",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cluster-scoped types (default: yes, unless --include-namespaces is given)",
    )


def _add_retention(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("retention (a backup either rule keeps is kept)")
    g.add_argument("--keep-last", type=int, default=None, metavar="N", help="keep the N newest")
    g.add_argument(
        "--keep-within", default=None, metavar="DURATION", help="keep those younger than (30d)"
    )


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip())


def filters(args: argparse.Namespace) -> Filters:
    from kubecare.backup.rules import Filters

    return Filters(
        default_excludes=getattr(args, "default_excludes", True),
        include_namespaces=_split(args.include_namespaces),
        exclude_namespaces=_split(args.exclude_namespaces),
        include_resources=_split(args.include_resources),
        exclude_resources=_split(args.exclude_resources),
        selector=args.selector,
        include_cluster_resources=args.include_cluster_resources,
    )


def _store_and_name(args: argparse.Namespace) -> tuple[Store, str]:
    """NAME in --from STORE, or NAME as the path of an archive file."""
    from kubecare.backup.archive import SUFFIX
    from kubecare.backup.stores import LocalStore, open_store

    name = args.name
    if not args.store and (name.endswith(SUFFIX) or "/" in name):
        path = Path(name).expanduser()
        return LocalStore(path.parent), path.name.removesuffix(SUFFIX)
    return open_store(args.store), name


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _retention(args: argparse.Namespace) -> tuple[int | None, float | None]:
    from kubecare.backup.retention import parse_keep_within
    from kubecare.errors import UsageError

    if args.keep_last is not None and args.keep_last < 1:
        raise UsageError(f"--keep-last must be at least 1 (got {args.keep_last})")
    within = parse_keep_within(args.keep_within) if args.keep_within else None
    return args.keep_last, within


@dataclass
class Pruned:
    deleted: list[str] = field(default_factory=list)
    pinned: dict[str, str] = field(default_factory=dict)  # kept although the rules let it go


def _prune(
    store: Store,
    keep_last: int | None,
    keep_within: float | None,
    dry_run: bool,
    *,
    cluster: str | None = None,
) -> Pruned:
    """Delete what retention lets go — only kubecare backups (a file that merely ends in
    .tar.zst, a kernel tarball in the same directory, is never a candidate), rules applied per
    cluster (``cluster``: only that cluster's backups), never a pinned one."""
    import datetime

    from kubecare.backup.retention import to_delete
    from kubecare.backup.scope import cluster_of
    from kubecare.backup.stores import check_name
    from kubecare.errors import KubecareError

    out = Pruned()
    if keep_last is None and keep_within is None:
        return out
    groups: dict[str, str] = {}
    infos = []
    for info in store.infos():
        try:
            check_name(info.name)
            groups[info.name] = cluster_of(store.manifest(info.name))
        except KubecareError:
            continue  # not a kubecare backup
        if cluster is None or groups[info.name] == cluster:
            infos.append(info)
    pins = store.pins()
    now = datetime.datetime.now(datetime.UTC)
    let_go = to_delete(infos, keep_last=keep_last, keep_within=keep_within, now=now, groups=groups)
    gone = [i for i in let_go if i.name not in pins]
    out.pinned = {i.name: pins[i.name] for i in let_go if i.name in pins}
    for info in gone:
        if not dry_run:
            store.delete(info.name)
    out.deleted = [i.name for i in gone]
    return out


def create_cmd(args: argparse.Namespace) -> int:
    import datetime

    from kubecare.backup.create import CreateOptions, create_backup
    from kubecare.backup.secrets import default_recipients, read_recipients_file
    from kubecare.backup.stores import check_name, open_store
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import say
    from kubecare.errors import UsageError

    if args.concurrency < 1 or args.chunk_size < 0 or args.workers < 0:
        raise UsageError(
            "--concurrency must be at least 1, --chunk-size and --workers not negative"
        )
    keep_last, keep_within = _retention(args)
    name = check_name(
        args.name or datetime.datetime.now(datetime.UTC).strftime("backup-%Y%m%d-%H%M%S")
    )
    recipients = list(args.encrypt_to)
    if args.recipients_file:
        recipients += read_recipients_file(Path(args.recipients_file))
    if not recipients:
        recipients = default_recipients()
    options = CreateOptions(
        filters=filters(args),
        recipients=tuple(recipients),
        allow_plaintext_secrets=args.allow_plaintext_secrets,
        strict=args.strict,
        concurrency=args.concurrency,
        chunk_size=args.chunk_size,
        workers=args.workers,
        volumes=args.volumes,
        exclude_volumes=tuple(args.exclude_volume),
        helper_image=args.volume_helper_image,
    )
    store = open_store(args.store)
    quiet = args.output != "table"
    started = time.monotonic()
    objects = 0

    def progress(event: Any) -> None:
        nonlocal objects
        d = event.data
        if event.kind.startswith("volume"):
            if not quiet:
                say(event.message)
            return
        objects += max(0, d.get("objects", 0))
        if quiet or d.get("objects", 0) <= 0:
            return
        rate = objects / max(time.monotonic() - started, 1e-6)
        say(
            f"[{d['done']}/{d['total']}] {d['type']}: {d['objects']} objects, "
            f"{_bytes(d['bytes'])} at revision {d['resourceVersion']} ({rate:.0f} objects/s)"
        )

    with store.staging(name) as dest:
        result = with_cluster(
            args, lambda kube: create_backup(kube, dest, name, options, on_event=progress)
        )
    result.location = f"{store.url.rstrip('/')}/{name}.tar.zst"
    pruned = Pruned()
    if result.partial and (keep_last is not None or keep_within is not None):
        # An incomplete backup must not rotate complete ones out (RBAC broken for two weeks
        # would otherwise leave nothing but partial backups).
        say("not deleting older backups: this one is incomplete (see the warnings)")
    else:
        from kubecare.backup.scope import cluster_of

        this = cluster_of({"cluster": {"uid": result.cluster_uid, "server": result.server}})
        pruned = _prune(store, keep_last, keep_within, False, cluster=this)
    _render_created(result, pruned, args.output)
    if result.partial and not args.allow_partial:
        from kubecare.backup.scope import describe_missing
        from kubecare.errors import OperationFailed

        raise OperationFailed(
            f"backup {name} is partial: {describe_missing(result.missing)} not backed up; it is "
            f"kept at {result.location}, marked partial (never taken as a complete backup); "
            "grant the credentials list on those types, or pass --allow-partial to accept it"
        )
    return 0


def _render_created(result: BackupResult, pruned: Pruned, output: str) -> None:
    from kubecare.cli.render import emit, say, simple_table

    data = {
        "name": result.name,
        "location": result.location,
        "objects": result.objects,
        "bytes": result.bytes,
        "archiveBytes": result.archive_bytes,
        "seconds": round(result.seconds, 2),
        "secrets": "encrypted (age)" if result.encrypted_secrets else "plaintext or none",
        "warnings": result.warnings,
        "partial": result.partial,
        "missing": result.missing,
        "pruned": pruned.deleted,
        "pinned": pruned.pinned,
        "types": [
            {
                "type": t.name,
                "objects": t.count,
                "bytes": t.bytes,
                "resourceVersion": t.resource_version,
                "skipped": t.skipped,
            }
            for t in result.types
        ],
        "volumes": [
            {
                k: v.get(k)
                for k in (
                    "namespace",
                    "claim",
                    "method",
                    "node",
                    "bytes",
                    "sha256",
                    "encrypted",
                    "hooks",
                    "seconds",
                )
            }
            for v in result.volumes
        ],
        "volumesSkipped": result.volumes_skipped,
    }

    def table() -> str:
        rows = [
            (t.name, t.count, _bytes(t.bytes), t.resource_version, sum(t.skipped.values()))
            for t in result.types
            if t.count or t.skipped
        ]
        return simple_table(("type", "objects", "size", "revision", "skipped"), rows)

    emit(data, output, table)
    if output == "table":
        for w in result.warnings:
            say(f"warning: {w}")
        say(
            f"backup {result.name}: {result.objects} objects in {len(result.types)} types, "
            f"{_bytes(result.archive_bytes)} -> {result.location} in {result.seconds:.1f}s "
            f"({result.objects / max(result.seconds, 1e-6):.0f} objects/s)"
        )
        for v in result.volumes:
            say(
                f"volume {v['namespace']}/{v['claim']}: {_bytes(int(v['bytes']))} copied (fs, "
                f"from {v['node']}{', encrypted' if v['encrypted'] else ''})"
            )
        for v in result.volumes_skipped:
            say(f"volume {v['claim']}: not copied, {v['reason']}")
        for name in pruned.deleted:
            say(f"deleted {name} (retention)")
        for name, why in pruned.pinned.items():
            say(f"kept {name} although retention lets it go: {why}")


def list_cmd(args: argparse.Namespace) -> int:
    from kubecare.backup.stores import open_store
    from kubecare.cli.render import emit, simple_table
    from kubecare.errors import KubecareError

    store = open_store(args.store)
    infos = sorted(store.infos(), key=lambda i: (i.modified, i.name))
    rows = []
    for info in infos:
        try:
            m = store.manifest(info.name)
            objects = sum(max(0, int(t.get("count") or 0)) for t in m.get("types") or [])
            row = {
                "name": info.name,
                "created": m.get("created", ""),
                "cluster": (m.get("cluster") or {}).get("version", ""),
                "objects": objects,
                "size": info.size,
                "secrets": (m.get("encryption") or {}).get("secrets", ""),
            }
        except KubecareError as e:  # one bad archive must not hide the others
            row = {
                "name": info.name,
                "created": "",
                "cluster": "",
                "objects": 0,
                "size": info.size,
                "secrets": f"unreadable: {e}",
            }
        rows.append(row)
    emit(
        rows,
        args.output,
        lambda: simple_table(
            ("name", "created", "kubernetes", "objects", "size", "secrets"),
            [
                (
                    r["name"],
                    r["created"],
                    r["cluster"],
                    r["objects"],
                    _bytes(int(r["size"])),
                    r["secrets"],
                )
                for r in rows
            ],
        ),
    )
    return 0


def describe_cmd(args: argparse.Namespace) -> int:
    from kubecare.cli.render import emit, simple_table

    store, name = _store_and_name(args)
    m = store.manifest(name)

    def table() -> str:
        head = [
            f"Name:        {m.get('name')}",
            f"Created:     {m.get('created')} by kubecare {m.get('kubecareVersion')}",
            f"Cluster:     {(m.get('cluster') or {}).get('server')} "
            f"({(m.get('cluster') or {}).get('version')})",
            f"Secrets:     {(m.get('encryption') or {}).get('secrets')}",
            f"Filters:     {_filters_line(m.get('filters') or {})}",
        ]
        for w in m.get("warnings") or []:
            head.append(f"Warning:     {w}")
        types = [t for t in m.get("types") or [] if t.get("count") or t.get("skipped")]
        rows = [
            (
                f"{t['resource']}.{t['group']}" if t.get("group") else t["resource"],
                t.get("version"),
                t.get("count"),
                _bytes(int(t.get("bytes") or 0)),
                t.get("resourceVersion"),
                sum((t.get("skipped") or {}).values()),
            )
            for t in types
        ]
        text = (
            "\n".join(head)
            + "\n\n"
            + simple_table(("type", "version", "objects", "size", "revision", "skipped"), rows)
        )
        vols = [
            (f"{v['namespace']}/{v['claim']}", v.get("method"), v.get("node"),
             _bytes(int(v.get("bytes") or 0)), "yes" if v.get("encrypted") else "no")
            for v in m.get("volumes") or []
        ] + [(v["claim"], "not copied", "", "", v["reason"]) for v in m.get("volumesSkipped") or []]  # fmt: skip
        if vols:
            text += "\n\n" + simple_table(("volume", "method", "node", "size", "encrypted"), vols)
        return text

    emit(m, args.output, table)
    return 0


def _filters_line(f: dict[str, Any]) -> str:
    parts = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in f.items() if v]
    return " ".join(parts) or "none"


def verify_cmd(args: argparse.Namespace) -> int:
    from kubecare.backup.verify import verify
    from kubecare.cli.render import emit, error

    store, name = _store_and_name(args)
    with store.reader(name) as reader:
        report = verify(reader)
    data = {
        "name": name,
        "ok": report.ok,
        "types": report.types,
        "objects": report.objects,
        "problems": report.problems,
    }
    emit(
        data,
        args.output,
        lambda: (
            f"{name}: {'OK' if report.ok else 'FAILED'} — {report.objects} objects in "
            f"{report.types} types checked"
        ),
    )
    for p in report.problems:
        error(f"{name}: {p}")
    return 0 if report.ok else 1


def _decryptor(identity: str | None) -> Any:
    if not identity:
        return None
    from kubecare.backup.secrets import decryptor, identities

    return decryptor(identities(Path(identity).expanduser()))


def diff_cmd(args: argparse.Namespace) -> int:
    from kubecare.backup.diff import diff_backup
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit

    store, name = _store_and_name(args)
    decrypt = _decryptor(args.identity)
    with store.reader(name) as reader:
        diffs = with_cluster(
            args, lambda kube: diff_backup(kube, reader, filters(args), decrypt=decrypt)
        )

    def table() -> str:
        lines = []
        mark = {"only-in-archive": "-", "only-in-cluster": "+", "changed": "~", "not-compared": "?"}
        for d in diffs:
            where = f"{d.namespace}/" if d.namespace else ""
            note = {
                "only-in-archive": f"  (only in the backup: {d.reason or 'deleted since'})",
                "only-in-cluster": "  (only in the cluster: created since)",
                "not-compared": f"  ({d.reason})",
            }.get(d.change, "")
            lines.append(f"{mark[d.change]} {d.type} {where}{d.name}{note}")
            for f in d.fields:
                lines.append(f"    {f.path}: {_short(f.archived)} -> {_short(f.live)}")
        if not diffs:
            lines.append(f"no differences between {name} and the cluster")
        return "\n".join(lines)

    emit(diffs, args.output, table)
    return 0


def _short(value: Any) -> str:
    if value is None:
        return "(none)"
    import orjson

    text = orjson.dumps(value).decode()
    return text if len(text) <= 80 else text[:77] + "..."


def restore_cmd(args: argparse.Namespace) -> int:
    from kubecare.backup.restore import Outcome, RestoreOptions, parse_namespace_map, restore_backup
    from kubecare.cli.common import with_cluster
    from kubecare.cli.render import emit, say, simple_table
    from kubecare.errors import UsageError

    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    options = RestoreOptions(
        filters=filters(args),
        existing=args.existing,
        namespace_map=parse_namespace_map(list(_split(args.namespace_map))),
        dry_run=args.dry_run,
        order=_split([args.order]) if args.order else (),
        concurrency=args.concurrency,
        volumes=args.volumes,
        helper_image=args.volume_helper_image,
    )
    store, name = _store_and_name(args)
    decrypt = _decryptor(args.identity)
    identities = None
    if args.identity:
        from kubecare.backup.secrets import identities as read_identities

        identities = read_identities(Path(args.identity).expanduser())
    quiet = args.output != "table"

    def progress(event: Any) -> None:
        if not quiet:
            say(event.message)

    with store.reader(name) as reader:
        result = with_cluster(
            args,
            lambda kube: restore_backup(
                kube, reader, options, decrypt=decrypt, identities=identities, on_event=progress
            ),
        )

    def table() -> str:
        rows = [
            (o.type, o.namespace, o.name, o.outcome.value, o.reason)
            for o in result.objects
            if o.outcome in (Outcome.FAILED,) or o.reason.startswith("not validated")
        ]
        rows += [
            ("volume data", v["claim"].split("/")[0], v["claim"].split("/")[1], v["outcome"],
             v.get("reason", ""))
            for v in result.volumes
            if v["outcome"] != "restored"
        ]  # fmt: skip
        return (
            simple_table(("type", "namespace", "name", "outcome", "reason"), rows) if rows else ""
        )

    emit(result, args.output, table)
    if args.output == "table":
        verb = "would be " if result.dry_run else ""
        say(
            f"restore of {result.backup}{' (dry run)' if result.dry_run else ''}: "
            f"{result.count(Outcome.CREATED)} {verb}created, {result.count(Outcome.UPDATED)} "
            f"{verb}updated, {result.count(Outcome.SKIPPED)} skipped (exist), "
            f"{result.count(Outcome.FAILED)} failed, in {result.seconds:.1f}s"
        )
        for v in result.volumes:
            if v["outcome"] == "restored":
                say(f"volume {v['claim']}: {_bytes(v['bytes'])} restored on {v.get('node')}")
    failed_volumes = [v for v in result.volumes if v["outcome"] == "failed"]
    return 1 if result.failed or failed_volumes else 0


def keygen_cmd(args: argparse.Namespace) -> int:
    """``age-keygen -o FILE``, without a separate tool: the identity 0600 and atomic, the
    recipient on stdout (for --encrypt-to or a recipients file)."""
    import datetime as dt

    from kubecare.backup.secrets import new_identity
    from kubecare.cli.render import say
    from kubecare.errors import UsageError
    from kubecare.files import write_atomic

    path = Path(args.output_file)
    if path.exists() and not args.overwrite:
        raise UsageError(
            f"{path} exists (an identity there would be lost with it); choose another file or "
            "add --overwrite"
        )
    if path.is_dir():
        raise UsageError(f"{path} is a directory; give a file name")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text, recipient = new_identity(now)
    try:
        write_atomic(path, text, mode=0o600)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    say(f"Public key: {recipient}")
    print(recipient)
    return 0


def delete_cmd(args: argparse.Namespace) -> int:
    from kubecare.backup.stores import open_store
    from kubecare.cli.render import say
    from kubecare.errors import UsageError

    keep_last, keep_within = _retention(args)
    if not args.names and keep_last is None and keep_within is None:
        raise UsageError("name the backups to delete, or give --keep-last / --keep-within")
    if args.names and (keep_last is not None or keep_within is not None):
        raise UsageError("give backup names or a retention rule, not both")
    store = open_store(args.store)
    gone = list(args.names)
    pins = store.pins() if gone else {}
    for n in gone:  # all checked before the first is deleted
        if n in pins and not args.unpin:
            raise UsageError(
                f"backup {n} is pinned ({pins[n]}); it is kept until that is over, or pass "
                "--unpin to delete it anyway"
            )
        if not store.exists(n):
            store.manifest(n)  # raises the not-found error
    for n in gone:
        if not args.dry_run:
            store.delete(n)
            if n in pins:
                store.unpin(n)
    kept: dict[str, str] = {}
    if not gone:
        pruned = _prune(store, keep_last, keep_within, args.dry_run)
        gone, kept = pruned.deleted, pruned.pinned
    for n in gone:
        say(f"{'would delete' if args.dry_run else 'deleted'} {n}")
    for n, why in kept.items():
        say(f"kept {n} although retention lets it go: {why}")
    if not gone:
        say("nothing to delete")
    return 0


def schedule_cmd(args: argparse.Namespace) -> int:
    from kubecare.backup.schedule import ScheduleOptions, manifests, read_rules
    from kubecare.cli.common import with_cluster
    from kubecare.kube.discovery import discover

    _retention(args)  # validated here, run in the cluster

    async def types(kube: Any) -> list[tuple[str, str, tuple[str, ...]]]:
        return [(r.group, r.resource, r.verbs) for r in await discover(kube, all_versions=True)]

    rules = read_rules(with_cluster(args, types))

    docs = manifests(
        ScheduleOptions(
            image=args.image,
            schedule=args.schedule,
            namespace=args.schedule_namespace,
            store=args.store,
            claim=args.claim,
            s3_secret=args.s3_secret,
            recipients=tuple(args.encrypt_to),
            allow_plaintext_secrets=args.allow_plaintext_secrets,
            keep_last=args.keep_last,
            keep_within=args.keep_within,
            resources=rules,
        )
    )
    if args.output == "json":
        import orjson

        sys.stdout.write(
            orjson.dumps(
                {"apiVersion": "v1", "kind": "List", "items": docs}, option=orjson.OPT_INDENT_2
            ).decode()
            + "\n"
        )
    else:
        import yaml

        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
    return 0
