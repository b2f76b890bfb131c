"""``kubecare backup create``: every listable resource type, paged, concurrently, streamed into
an archive (:mod:`kubecare.backup.archive`) with memory that does not grow with the cluster.

Each type is read with one paged list (one resourceVersion: the type is consistent as of that
revision, which the manifest records); types are read concurrently, a bounded number at a time.
Pages are turned into archive bytes by :func:`kubecare.backup.pages.process_page` — in worker
processes when ``workers`` > 0, while this process fetches the next pages — and each type's
section is spooled to disk, then appended to the archive when its list is complete.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import BrokenExecutor, Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import (
    ApiError,
    Conflict,
    Forbidden,
    KubecareError,
    NotFound,
    ServerError,
    TooManyRequests,
    UsageError,
    first_error,
)
from ..events import Event, EventSink, ignore
from ..kube.client import JSON, Kube
from ..kube.discovery import ApiResource, discover
from . import labels
from .archive import (
    FORMAT,
    FORMAT_VERSION,
    ArchiveWriter,
    TypeFrame,
    checksums_path,
)
from .pages import PageResult, PageSpec, list_meta, process_page, worker_init
from .rules import Filters, type_name

SHORT_NAMES = {
    "configmaps": "cm",
    "deployments.apps": "deploy",
    "services": "svc",
    "serviceaccounts": "sa",
    "namespaces": "ns",
    "pods": "po",
    "daemonsets.apps": "ds",
    "statefulsets.apps": "sts",
    "replicasets.apps": "rs",
    "persistentvolumeclaims": "pvc",
    "persistentvolumes": "pv",
    "ingresses.networking.k8s.io": "ing",
    "cronjobs.batch": "cj",
    "customresourcedefinitions.apiextensions.k8s.io": "crd",
    "poddisruptionbudgets.policy": "pdb",
    "networkpolicies.networking.k8s.io": "netpol",
    "storageclasses.storage.k8s.io": "sc",
    "horizontalpodautoscalers.autoscaling": "hpa",
}


@dataclass(frozen=True)
class CreateOptions:
    filters: Filters = field(default_factory=Filters)
    recipients: tuple[str, ...] = ()  # age recipients for Secrets
    allow_plaintext_secrets: bool = False
    strict: bool = False  # a type that cannot be listed fails the backup
    concurrency: int = 4  # types listed at once
    chunk_size: int = 500  # objects per list request
    # Processes that turn pages into archive bytes (0: this process). Forked, so only for a
    # process without other threads at that point: the CLI sets 2, the library default is 0.
    workers: int = 0
    volumes: str = ""  # "fs": persistent volume data too (kubecare.backup.volumes)
    exclude_volumes: tuple[str, ...] = ()  # namespace/claim
    helper_image: str = ""  # the volume helper pods' image ("": $KUBECARE_HELPER_IMAGE or busybox)


@dataclass
class TypeResult:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    custom: bool
    count: int = 0
    bytes: int = 0
    resource_version: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> objects left out
    restarted: bool = False  # the list started over (its continue token expired)

    @property
    def name(self) -> str:
        return type_name(self.group, self.resource)


@dataclass
class BackupResult:
    name: str
    location: str
    types: list[TypeResult]
    warnings: list[str]
    objects: int
    bytes: int  # uncompressed object bytes
    archive_bytes: int
    seconds: float
    encrypted_secrets: bool
    # types that could not be read (type -> why): the backup is partial
    missing: dict[str, str] = field(default_factory=dict)
    volumes: list[JSON] = field(default_factory=list)  # the manifest's volume records
    volumes_skipped: list[JSON] = field(default_factory=list)  # {claim, reason}
    cluster_uid: str = ""
    server: str = ""

    @property
    def partial(self) -> bool:
        return bool(self.missing)


def aliases(r: ApiResource) -> tuple[str, ...]:
    """What a user may call a type in --include/--exclude-resources."""
    gr = type_name(r.group, r.resource)
    out = {gr, r.resource, r.kind.lower()}
    if gr in SHORT_NAMES:
        out.add(SHORT_NAMES[gr])
    return tuple(sorted(out))


def plan_types(resources: list[ApiResource], filters: Filters) -> list[ApiResource]:
    """The types a backup lists: listable, each group-resource once (the preferred version,
    which discovery lists first), taken by the filters."""
    seen: set[str] = set()
    out = []
    for r in resources:
        gr = type_name(r.group, r.resource)
        if "list" not in r.verbs or gr in seen:
            continue
        seen.add(gr)
        if filters.type_ok(gr, r.namespaced, aliases=aliases(r)):
            out.append(r)
    return out


def parse_recipients(recipients: tuple[str, ...]) -> list[Any]:
    from .secrets import recipients as parse

    return parse(recipients)


class _Restart(Exception):
    """The list's continue token expired: read the type again from the start, unpaged."""


async def _fetch(kube: Kube, path: str, query: dict[str, Any], what: str, first: bool) -> bytes:
    """One page, raw; 429 and 5xx retried with back-off. An expired continue token (410) on a
    later page raises :class:`_Restart` (client-go's pager falls back to a full list the same
    way: tools/pager FullListIfExpired)."""
    for attempt in range(6):
        try:
            return await kube.get_bytes(path, params=query, what=what)
        except Conflict as e:
            if e.status == 410 and not first:
                raise _Restart() from None
            raise
        except (TooManyRequests, ServerError) as e:
            if attempt == 5:
                raise
            delay = getattr(e, "retry_after", None) or min(0.2 * 2**attempt, 5.0)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _read_type(
    kube: Kube,
    r: ApiResource,
    result: TypeResult,
    frame: TypeFrame,
    options: CreateOptions,
    spec: PageSpec,
    pool: Executor | None,
) -> None:
    """Page through the type; each page is processed (in a worker process when there is a
    pool) while this one goes on with the network."""
    filters = options.filters
    params: dict[str, Any] = {}
    if filters.selector:
        params["labelSelector"] = filters.selector
    namespace = (
        filters.include_namespaces[0]
        if r.namespaced and len(filters.include_namespaces) == 1
        else None
    )
    path = r.path(namespace)
    chunk = options.chunk_size

    def take(done: PageResult) -> None:
        frame.add_frame(done.frame, done.sums, done.count, done.size)
        result.count, result.bytes = frame.count, frame.size
        for reason, n in done.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + n

    for attempt in range(2):
        pending: list[asyncio.Future[PageResult]] = []
        try:
            await _pages(kube, path, params, chunk, result, spec, pool, pending, take)
            return
        except _Restart:
            if attempt:
                raise ApiError(
                    f"list {result.name}: the list expired twice while being read; "
                    "run the backup again",
                    status=410,
                ) from None
            frame.reset()
            result.count, result.bytes, result.skipped = 0, 0, {}
            result.resource_version, result.restarted, chunk = "", True, 0
        finally:
            for f in pending:  # queued pages of a failed or restarted list: not needed now
                f.cancel()


async def _pages(
    kube: Kube,
    path: str,
    params: dict[str, Any],
    chunk: int,
    result: TypeResult,
    spec: PageSpec,
    pool: Executor | None,
    pending: list[asyncio.Future[PageResult]],
    take: Callable[[PageResult], None],
) -> None:
    """Every page of one list. With a pool, the next page is fetched while workers process
    this one; results are taken in page order, a few pages in flight at most (memory stays
    flat). ``pending`` is the caller's, so it can cancel what is left if this fails."""
    loop = asyncio.get_running_loop()
    token = ""
    while True:
        query = dict(params)
        if chunk:
            query["limit"] = chunk
        if token:
            query["continue"] = token
        page = await _fetch(kube, path, query, f"list {result.name}", not token)
        version, token = list_meta(page)
        result.resource_version = result.resource_version or version
        if pool is None:
            take(process_page(spec, page))
        else:
            pending.append(loop.run_in_executor(pool, process_page, spec, page))
            while len(pending) > 2 or (pending and not token):
                take(await pending.pop(0))
        if not token:
            return


def _pool(workers: int) -> Executor | None:
    """Worker processes for the CPU work (forked: they start in milliseconds with everything
    imported). None: process pages in this process."""
    if workers <= 0:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=worker_init,
        initargs=(os.getpid(),),
    )
    pool.submit(int).result()  # fork them now, before anything else starts a thread
    return pool


async def create_backup(
    kube: Kube,
    dest: Path,
    name: str,
    options: CreateOptions,
    *,
    on_event: EventSink = ignore,
) -> BackupResult:
    """Write the backup ``name`` to the archive file ``dest`` (which must not exist)."""
    started = time.monotonic()
    filters = options.filters
    if filters.selector:
        labels.parse(filters.selector)
    encrypted = bool(options.recipients)
    if encrypted:
        parse_recipients(options.recipients)  # a bad recipient is a usage error, before listing
    from kubecare.kube.identity import cluster_uid

    version, uid = await asyncio.gather(kube.version(), cluster_uid(kube))
    resources = await discover(kube, all_versions=True)
    types = plan_types(resources, filters)
    if not types:
        raise KubecareError("no resource type matches the filters; nothing to back up")
    has_secrets = any(type_name(r.group, r.resource) == "secrets" for r in types)
    if has_secrets and not encrypted and not options.allow_plaintext_secrets:
        raise UsageError(
            "the backup would hold Secrets in plaintext; give --encrypt-to RECIPIENT (an age "
            "public key) or --recipients-file, or pass --allow-plaintext-secrets, or "
            "--exclude-resources secrets"
        )
    if options.volumes not in ("", "fs"):
        raise UsageError(
            f"--volumes takes fs (a file-system copy through a helper pod), not "
            f"{options.volumes!r}; CSI snapshots (--volumes=snapshot) are not supported yet"
        )
    if options.exclude_volumes and not options.volumes:
        raise UsageError("--exclude-volume goes with --volumes (no volume is copied without it)")
    if options.volumes and not filters.type_ok(
        "persistentvolumeclaims", True, aliases=("persistentvolumeclaims", "pvc")
    ):
        raise UsageError(
            "--volumes needs the PersistentVolumeClaims in the backup (a restore makes the new "
            "claims from them); do not exclude persistentvolumeclaims"
        )
    custom = await _custom_types(kube)
    now = datetime.datetime.now(datetime.UTC)
    mtime = int(now.timestamp())
    results = [
        TypeResult(
            r.group,
            r.version,
            r.resource,
            r.kind,
            r.namespaced,
            (r.group, r.resource) in custom,
        )
        for r in types
    ]
    frames: dict[str, JSON] = {}
    warnings: list[str] = []
    missing: dict[str, str] = {}
    try:
        pool = _pool(options.workers)
    except OSError as e:  # no fork here (process limit, no /dev/shm): do the work in-process
        warnings.append(f"worker processes unavailable ({e.strerror or e}); worked in one")
        pool = None
    writer = ArchiveWriter(dest)
    lock = asyncio.Lock()
    sem = asyncio.Semaphore(max(1, options.concurrency))
    # types listed and waiting for the archive (a volume copy holds it) keep a spool file open
    # each: a bound, so hundreds of CRD types cannot exhaust file descriptors meanwhile
    waiting = asyncio.Semaphore(4 * max(1, options.concurrency))
    done = 0

    async def one(r: ApiResource, result: TypeResult) -> None:
        async with waiting:
            await _one(r, result)

    async def _one(r: ApiResource, result: TypeResult) -> None:
        nonlocal done
        await sem.acquire()
        held = True
        try:
            with tempfile.TemporaryFile(dir=dest.parent, prefix=".kubecare-spool-") as spool:
                frame = TypeFrame(spool, mtime, tmpdir=str(dest.parent))
                try:
                    spec = PageSpec(
                        result.name, r.group, r.resource, r.group_version, r.kind, r.namespaced,
                        options.filters, options.recipients, mtime,
                    )  # fmt: skip
                    await _read_type(kube, r, result, frame, options, spec, pool)
                except BaseException as e:
                    frame.close()
                    if not isinstance(e, ApiError) or options.strict:
                        raise
                    # Forbidden by RBAC, gone since discovery, or an aggregated API whose server
                    # keeps failing (after the retries): the rest of the cluster is still worth
                    # backing up, and the manifest names what is missing.
                    why = {Forbidden: "forbidden", NotFound: "no longer served"}.get(
                        type(e), "cannot be listed"
                    )
                    warnings.append(f"{result.name}: {why}, not backed up ({e})")
                    missing[result.name] = why
                    result.count = -1
                    return
                sums = checksums_path(r.group, r.resource)
                sums_sha = frame.finish(sums)
                if frame.count:
                    # Listed: the next type may start while this one waits for the archive
                    # (a volume copy holds it for as long as its stream lasts).
                    sem.release()
                    held = False
                    async with lock:
                        offset, length, sha = writer.append(spool)
                    frames[result.name] = {
                        "frame": {"offset": offset, "length": length, "sha256": sha},
                        "checksums": {"path": sums, "sha256": sums_sha},
                    }
        finally:
            if held:
                sem.release()
        done += 1
        on_event(
            Event(
                "type-done",
                f"{result.name}: {result.count} objects",
                data={
                    "type": result.name,
                    "objects": result.count,
                    "bytes": result.bytes,
                    "done": done,
                    "total": len(results),
                    "resourceVersion": result.resource_version,
                },
            )
        )

    volumes: list[JSON] = []
    skipped_volumes: list[JSON] = []

    async def copy_volumes() -> None:
        # While the types are listed: a helper pod's start and the copy overlap the lists (the
        # helper pods themselves are never backed up: rules.skip_reason).
        found = await _back_up_volumes(kube, writer, lock, dest.parent, mtime, options, on_event)
        volumes.extend(found[0])
        skipped_volumes.extend(found[1])

    try:
        try:
            async with asyncio.TaskGroup() as tg:
                if options.volumes:
                    tg.create_task(copy_volumes())
                for r, result in zip(types, results, strict=True):
                    tg.create_task(one(r, result))
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        kept = [t for t in results if t.count >= 0]
        if not kept:
            raise KubecareError(
                "no resource type could be listed (" + "; ".join(warnings[:3]) + "); "
                "nothing was backed up: check the credentials' RBAC"
            )
        manifest = {
            "format": FORMAT,
            "formatVersion": FORMAT_VERSION,
            "kubecareVersion": __version__,
            "name": name,
            "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cluster": {
                "server": kube.server,
                "version": version.get("gitVersion", ""),
                "uid": uid,  # the kube-system namespace's (kubecare.kube.identity)
            },
            "filters": filters.to_json(),
            "encryption": {
                "secrets": "age" if encrypted else "none",
                "recipients": list(options.recipients),
            },
            "warnings": warnings,
            **({"volumes": volumes, "volumesSkipped": skipped_volumes} if options.volumes else {}),
            # partial: these types are not in it (restore, retention and upgrades know)
            "missing": [{"type": t, "reason": missing[t]} for t in sorted(missing)],
            "types": [
                {
                    "group": t.group,
                    "version": t.version,
                    "resource": t.resource,
                    "kind": t.kind,
                    "namespaced": t.namespaced,
                    "custom": t.custom,
                    "count": t.count,
                    "bytes": t.bytes,
                    "resourceVersion": t.resource_version,
                    "skipped": t.skipped,
                    "restarted": t.restarted,
                    **frames.get(t.name, {}),
                }
                for t in sorted(kept, key=lambda t: t.name)
            ],
        }
        await asyncio.to_thread(writer.commit, manifest, mtime)
    except BrokenExecutor:
        writer.abort()
        raise KubecareError(
            "a worker process died (out of memory?); nothing was written under the backup's "
            "name; run it again, with --workers 0 to do the work in one process"
        ) from None
    except OSError as e:
        writer.abort()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        raise KubecareError(
            f"cannot write the backup to {dest.parent}: {e.strerror or e}; free some space or "
            "choose another --to (nothing was written under the backup's name)"
        ) from None
    except BaseException:
        writer.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    kept = [t for t in results if t.count >= 0]
    return BackupResult(
        name=name,
        location=str(dest),
        types=kept,
        warnings=warnings,
        objects=sum(t.count for t in kept),
        bytes=sum(t.bytes for t in kept),
        archive_bytes=dest.stat().st_size,  # noqa: ASYNC240 (one stat, at the end)
        seconds=time.monotonic() - started,
        encrypted_secrets=encrypted,
        missing=dict(sorted(missing.items())),
        cluster_uid=uid,
        server=kube.server,
        volumes=volumes,
        volumes_skipped=skipped_volumes,
    )


async def _back_up_volumes(
    kube: Kube,
    writer: ArchiveWriter,
    lock: asyncio.Lock,
    directory: Path,
    mtime: int,
    options: CreateOptions,
    on_event: EventSink,
) -> tuple[list[JSON], list[JSON]]:
    """Every claim in scope, one after another (one helper pod at a time: the data path, not
    the API, is what a volume copy waits on); the first that fails fails the backup."""
    from .volumes import back_up_volume, helper_image, list_claims, plan_volumes

    claims, pvs, pods = await list_claims(kube, options.filters)
    plans = plan_volumes(claims, pvs, pods, set(options.exclude_volumes))
    unknown = set(options.exclude_volumes) - {p.key for p in plans}
    if unknown:
        raise UsageError(
            f"--exclude-volume {sorted(unknown)[0]}: no such claim in the backup's scope "
            "(give it as NAMESPACE/CLAIM)"
        )
    recipients = parse_recipients(options.recipients) if options.recipients else None
    image = options.helper_image or helper_image()
    records, skipped = [], []
    for plan in plans:
        if plan.skip:
            skipped.append({"claim": plan.key, "reason": plan.skip})
            on_event(Event("volume-skipped", f"volume {plan.key}: {plan.skip}",
                           data={"claim": plan.key, "reason": plan.skip}))  # fmt: skip
            continue
        result = await back_up_volume(
            kube, plan, directory, mtime, image=image, recipients=recipients, on_event=on_event,
            writer=writer, lock=lock,
        )  # fmt: skip
        records.append(result.entry)
        on_event(
            Event(
                "volume-done",
                f"volume {plan.key}: {result.bytes / 2**20:.1f} MiB from {result.node} in "
                f"{result.seconds:.1f}s",
                data={
                    "claim": plan.key,
                    "bytes": result.bytes,
                    "seconds": result.seconds,
                    "node": result.node,
                    "method": "fs",
                },
            )
        )
    return records, skipped


async def _custom_types(kube: Kube) -> set[tuple[str, str]]:
    """(group, plural) of every type a CustomResourceDefinition serves (a CRD is named
    ``<plural>.<group>``: metadata alone tells, without the CRDs' schemas)."""
    out = set()
    try:
        async for meta in kube.list_metadata(
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", what="list CRDs"
        ):
            plural, _, group = str(meta.get("name") or "").partition(".")
            out.add((group, plural))
    except (Forbidden, NotFound):
        return set()
    return out
