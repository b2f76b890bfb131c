"""``kubecare backup restore``: the archive's objects back into a cluster, type by type in
dependency order (:data:`kubecare.backup.rules.RESTORE_ORDER`), under the field manager
``kubecare``. It never deletes anything.

- Objects the cluster does not have are created with one POST each; one metadata-only list per
  type tells which exist.
- ``existing="skip"`` (default): objects that already exist are left alone; ``"update"``: they
  are server-side applied over, forcing kubecare's ownership of the fields the backup sets.
- One object failing does not stop the others; every object gets an outcome.
- ``dry_run``: every object is sent with ``dryRun=All`` (validated and admitted by the server,
  nothing stored); objects that need something the restore would create first (their namespace,
  their CRD) are reported as not validated.
- The archive is verified end to end before anything is sent: a tampered or corrupt archive
  restores nothing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import orjson

from ..errors import (
    ApiError,
    Conflict,
    Forbidden,
    KubecareError,
    NotFound,
    Unreachable,
    UsageError,
    first_error,
)
from ..events import Event, EventSink, ignore
from ..kube.client import JSON, Kube
from . import labels
from .archive import ArchiveError, ArchiveReader, parse_member_path
from .rules import Filters, for_restore, restore_order, type_name
from .verify import checked_members, verify

FIELD_MANAGER = "kubecare"
_CRDS = "customresourcedefinitions.apiextensions.k8s.io"


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class RestoreOptions:
    filters: Filters = field(default_factory=Filters)
    existing: str = "skip"  # skip | update
    namespace_map: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False
    order: tuple[str, ...] = ()
    concurrency: int = 16
    crd_timeout: float = 60.0
    volumes: bool = True  # unpack the archive's volume data into the claims it creates
    helper_image: str = ""  # the volume helper pods' image ("": $KUBECARE_HELPER_IMAGE or busybox)


@dataclass(frozen=True)
class ObjectResult:
    type: str
    namespace: str
    name: str
    outcome: Outcome
    reason: str = ""


@dataclass
class RestoreResult:
    backup: str
    dry_run: bool
    objects: list[ObjectResult]
    seconds: float = 0.0
    volumes: list[JSON] = field(default_factory=list)  # {claim, outcome, reason, bytes, node}

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.objects if o.outcome == outcome)

    @property
    def failed(self) -> list[ObjectResult]:
        return [o for o in self.objects if o.outcome == Outcome.FAILED]


def selected_types(manifest: JSON, filters: Filters) -> list[JSON]:
    """The manifest's type entries the filters take."""
    out = []
    for entry in manifest.get("types") or []:
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        aliases = {str(entry["resource"]), str(entry.get("kind", "")).lower()}
        from .create import SHORT_NAMES

        if gr in SHORT_NAMES:
            aliases.add(SHORT_NAMES[gr])
        namespaced = bool(entry.get("namespaced"))
        if filters.include_resources or filters.exclude_resources:
            if not filters.type_ok(gr, namespaced, aliases=aliases):
                continue
        elif (
            not namespaced
            and not filters.cluster_resources
            and not (gr == "namespaces" and filters.include_namespaces)
        ):
            continue
        out.append(entry)
    return out


def parse_namespace_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"--namespace-map takes OLD=NEW, not {pair!r}")
        out[old] = new
    return out


def api_path(entry: JSON, namespace: str, name: str = "") -> str:
    group, version = str(entry.get("group") or ""), str(entry["version"])
    base = f"/apis/{group}/{version}" if group else f"/api/{version}"
    ns = f"/namespaces/{_quote(namespace)}" if entry.get("namespaced") and namespace else ""
    return f"{base}{ns}/{entry['resource']}" + (f"/{_quote(name)}" if name else "")


def _quote(segment: str) -> str:
    """A name as one URL path segment (RBAC names may hold spaces, "?", ":")."""
    from urllib.parse import quote

    return quote(segment, safe=":@")


class _Restore:
    def __init__(
        self,
        kube: Kube,
        reader: ArchiveReader,
        options: RestoreOptions,
        decrypt: Callable[[bytes, str], bytes] | None,
        on_event: EventSink,
    ) -> None:
        self.kube, self.reader, self.options = kube, reader, options
        self.decrypt, self.on_event = decrypt, on_event
        self.selector = labels.parse(options.filters.selector)
        self.results: list[ObjectResult] = []
        self.namespaces: dict[str, bool] = {}  # name -> terminating
        self.new_namespaces: set[str] = set()  # created (or, dry run: would be) by this restore
        self.served: set[str] = set()
        self.versions: set[tuple[str, str]] = set()  # (type, version) served
        self.pending_crds: set[str] = set()  # dry run: CRDs in the archive not in the cluster
        # claims whose data the archive holds: restored as new claims (a new volume each)
        self.volume_claims: set[tuple[str, str]] = (
            {(str(v["namespace"]), str(v["claim"])) for v in reader.manifest.get("volumes") or []}
            if options.volumes
            else set()
        )
        self.volumes: list[JSON] = []
        # those of them this restore will create (their namespace taken, the claim not in the
        # cluster): a restored PV must not catch them (found before the PVs are restored)
        self.new_volume_claims: set[tuple[str, str]] = set()
        # why the types after the claims are not restored (a volume's data failed): a database
        # restored onto an empty volume would start a new, empty one
        self.halted = ""

    def result(self, entry: JSON, ns: str, name: str, outcome: Outcome, why: str = "") -> None:
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        self.results.append(ObjectResult(gr, ns, name, outcome, why))

    async def refresh(self) -> None:
        from ..kube.discovery import discover

        found = await discover(self.kube, all_versions=True)
        self.served = {type_name(r.group, r.resource) for r in found}
        self.versions = {(type_name(r.group, r.resource), r.version) for r in found}
        try:
            self.namespaces = {
                str(meta.get("name")): bool(meta.get("deletionTimestamp"))
                async for meta in self.kube.list_metadata("/api/v1/namespaces")
            }
        except Forbidden:
            self.namespaces = {}  # a namespaced user: terminating namespaces show as API errors

    async def existing(self, entry: JSON, namespaces: set[str]) -> set[tuple[str, str]]:
        """(namespace, name) of the type's objects already in the cluster."""
        targets: list[str | None] = [None]
        if entry.get("namespaced") and len(namespaces) == 1:
            targets = [next(iter(namespaces))]
        out: set[tuple[str, str]] = set()
        for ns in targets:
            async for meta in self.kube.list_metadata(
                api_path(entry, ns or ""), what=f"list {entry['resource']}"
            ):
                out.add((str(meta.get("namespace") or ""), str(meta.get("name"))))
        return out

    def objects(self, entry: JSON) -> Iterator[tuple[str, str, JSON]]:
        """(namespace after mapping, name, object to send) of the type, filtered, as the
        archive is read (memory does not grow with the number of objects)."""
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        filters = self.options.filters
        for member in checked_members(self.reader, entry):
            _, _, path_ns, name, encrypted = parse_member_path(member.path)
            data = member.data
            gr_ns = path_ns if entry.get("namespaced") else ""
            if encrypted:
                if self.decrypt is None:
                    raise UsageError("the archive's Secrets are encrypted; pass --identity FILE")
                data = self.decrypt(data, member.path)
            try:
                obj = load_object(data, self.reader.name, member.path)
                check_identity(obj, path_ns, name, bool(entry.get("namespaced")), member.path)
            except ArchiveError as e:  # this object only; verify has passed for the rest
                self.result(entry, gr_ns, name, Outcome.FAILED, e.message)
                continue
            if not filters.object_ok(gr, obj):
                continue
            if not labels.matches(self.selector, (obj.get("metadata") or {}).get("labels")):
                continue
            ref = (
                ((obj.get("spec") or {}).get("claimRef") or {}) if gr == "persistentvolumes" else {}
            )
            if ref and (ref.get("namespace"), ref.get("name")) in self.new_volume_claims:
                # Its claim's data comes back in a new volume: this one (its storage may still
                # hold the old data, a Retain policy) must not catch the new claim.
                self.result(entry, "", name, Outcome.SKIPPED,
                            "its claim's data is restored into a new volume")  # fmt: skip
                continue
            sent, _ = for_restore(gr, obj, self.options.namespace_map)
            if gr == "persistentvolumeclaims" and (path_ns, name) in self.volume_claims:
                # the old volume went with the old claim: the data comes back in a new one
                (sent.get("spec") or {}).pop("volumeName", None)
            meta = sent.get("metadata") or {}
            target_ns = str(meta.get("namespace") or "") if entry.get("namespaced") else ""
            yield target_ns, str(meta.get("name") or name), sent

    async def apply(self, entry: JSON, ns: str, name: str, obj: JSON, exists: bool) -> None:
        options = self.options
        params: dict[str, Any] = {"fieldManager": FIELD_MANAGER}
        if options.dry_run:
            params["dryRun"] = "All"
        if exists:
            params["force"] = "true"
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        done = Outcome.UPDATED if exists else Outcome.CREATED
        if ns and self.namespaces.get(ns):
            self.result(
                entry,
                ns,
                name,
                Outcome.FAILED,
                f"namespace {ns} is being deleted; run the restore again when it is gone",
            )
            return
        if options.dry_run and ((ns and ns in self.new_namespaces) or gr not in self.served):
            why = (
                f"not validated: namespace {ns} is created by this restore"
                if ns in self.new_namespaces
                else "not validated: its CustomResourceDefinition is created by this restore"
            )
            self.result(entry, ns, name, done, why)
            return
        what = f"{gr} {ns + '/' if ns else ''}{name}"
        try:
            if exists:
                await self._apply(entry, ns, name, obj, params, what)
            else:
                done = await self._create(entry, ns, name, obj, params, what)
        except Unreachable:
            raise
        except ApiError as e:
            self.result(entry, ns, name, Outcome.FAILED, e.message)
            return
        if done is Outcome.SKIPPED:
            self.result(entry, ns, name, done, "already exists (created while restoring)")
        else:
            self.result(entry, ns, name, done)

    async def _apply(
        self, entry: JSON, ns: str, name: str, obj: JSON, params: dict[str, Any], what: str
    ) -> None:
        await self.kube.request_json(
            "PATCH",
            api_path(entry, ns, name),
            body=obj,
            params=params,
            content_type="application/apply-patch+yaml",
            what=what,
        )

    async def _create(
        self, entry: JSON, ns: str, name: str, obj: JSON, params: dict[str, Any], what: str
    ) -> Outcome:
        """One POST for an object the list did not show: the apiserver's create path, several
        times cheaper than a server-side apply that creates (no merge of typed field sets), and
        what Velero does. Someone may have created it since the list (a namespace's default
        ServiceAccount appears as the namespace does): the 409 is then that object existing,
        handled as ``existing`` says — skipped, or applied over."""
        try:
            await self.kube.request_json(
                "POST", api_path(entry, ns), body=obj, params=params, what=what
            )
        except Conflict as e:
            if e.reason and e.reason != "AlreadyExists":
                raise  # not "it exists": the object's failure, with the server's words
            if self.options.existing == "skip":
                return Outcome.SKIPPED
            await self._apply(entry, ns, name, obj, {**params, "force": "true"}, what)
            return Outcome.UPDATED
        return Outcome.CREATED

    async def one_type(self, entry: JSON) -> None:
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        if not entry.get("count"):
            return
        served = gr in self.served or (self.options.dry_run and gr in self.pending_crds)
        why = f"{gr} is not served by this cluster (no such API or CRD)"
        if self.halted:
            await self._send_all(entry, False, set(), self.halted)  # each object: failed, why
            return
        if gr in self.served and (gr, str(entry["version"])) not in self.versions:
            served, why = False, f"{gr} is not served at {entry['version']} by this cluster"
        existing: set[tuple[str, str]] = set()
        if served and gr in self.served:
            include = self.options.filters.include_namespaces
            mapped = {self.options.namespace_map.get(n, n) for n in include}
            try:
                existing = await self.existing(entry, mapped if len(mapped) == 1 else set())
            except ApiError as e:  # this type only: the others are still worth restoring
                served, why = False, f"cannot list {gr} to see what exists: {e.message}"
        try:
            count = await self._send_all(entry, served, existing, why)
        except BaseExceptionGroup as group:
            raise first_error(group) from None
        if count:
            self.on_event(Event("type-done", f"{gr}: {count} objects", data={"type": gr}))

    async def _send_all(
        self, entry: JSON, served: bool, existing: set[tuple[str, str]], why: str
    ) -> int:
        """Apply the type's objects, a bounded number in flight; returns how many were read."""
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        sem = asyncio.Semaphore(max(1, self.options.concurrency))
        count = 0

        async def send(ns: str, name: str, obj: JSON) -> None:
            try:
                await self.apply(entry, ns, name, obj, (ns, name) in existing)
            finally:
                sem.release()

        async with asyncio.TaskGroup() as tg:
            for ns, name, obj in self.objects(entry):
                count += 1
                if not served:
                    self.result(entry, ns, name, Outcome.FAILED, why)
                    continue
                if (ns, name) in existing and self.options.existing == "skip":
                    self.result(entry, ns, name, Outcome.SKIPPED, "already exists")
                    continue
                if gr == "namespaces" and (ns, name) not in existing:
                    self.new_namespaces.add(name)
                await sem.acquire()
                tg.create_task(send(ns, name, obj))
        return count

    async def find_new_volume_claims(self) -> None:
        """Which of the archive's volume claims this restore will create: taken by the
        filters and not in the cluster now."""
        from urllib.parse import quote

        mapping = self.options.namespace_map
        for ns, claim in sorted(self.volume_claims):
            if not self.options.filters.namespace_ok(ns):
                continue
            target = mapping.get(ns, ns)
            path = (f"/api/v1/namespaces/{quote(target, safe='')}/persistentvolumeclaims/"
                    f"{quote(claim, safe='')}")  # fmt: skip
            if (await self.kube.http.get(path)).status_code == 404:
                self.new_volume_claims.add((ns, claim))

    async def restore_volumes(self, identities: list[Any] | None) -> None:
        """Each volume in the archive into the claim this restore created for it, before
        any workload that mounts it is restored."""
        import tempfile
        from pathlib import Path

        from .volumes import helper_image, restore_volume

        filters, mapping = self.options.filters, self.options.namespace_map
        created = {
            (o.namespace, o.name): o.outcome
            for o in self.results
            if o.type == "persistentvolumeclaims"
        }
        image = self.options.helper_image or helper_image()
        # where a decrypted volume waits: beside the archive (a disk), not /tmp (often RAM)
        here = Path(self.reader.name).parent
        scratch = here if here.is_dir() else Path(tempfile.gettempdir())
        for entry in self.reader.manifest.get("volumes") or []:
            ns, claim = str(entry["namespace"]), str(entry["claim"])
            if not filters.namespace_ok(ns):
                continue
            target = mapping.get(ns, ns)
            key = f"{target}/{claim}"
            record: JSON = {"claim": key, "bytes": int(entry.get("bytes") or 0)}
            outcome = created.get((target, claim))
            if self.options.dry_run:
                new = outcome == Outcome.CREATED
                record |= {"outcome": "would restore" if new else "skipped",
                           "reason": "" if new else "its claim is not created by the restore"}  # fmt: skip
            elif outcome is None:
                record |= {"outcome": "skipped", "reason": "its claim is not restored"}
            elif outcome != Outcome.CREATED:
                record |= {
                    "outcome": "skipped",
                    "reason": "the claim already existed: its data was left as it is",
                }
            else:
                try:
                    done = await restore_volume(
                        self.kube, self.reader, entry, target, image=image,
                        identities=identities, tmpdir=scratch,
                    )  # fmt: skip
                    record |= {"outcome": "restored", "reason": "", "node": done["node"],
                               "seconds": done["seconds"]}  # fmt: skip
                except UsageError:
                    raise
                except KubecareError as e:
                    # the apiserver away included: the claim exists now, empty, and a rerun
                    # would leave it so: the workloads are halted and the message names it
                    record |= {"outcome": "failed", "reason": e.message}
            self.volumes.append(record)
            self.on_event(Event("volume", f"volume {key}: {record['outcome']}", data=record))
            if record["outcome"] == "failed" and not self.halted:
                self.halted = (
                    f"not restored: the data of claim {key} could not be restored; fix that "
                    f"(see its volume's reason), delete the claim (kubectl -n {target} delete "
                    f"pvc {claim}) and run the restore again"
                )

    async def wait_established(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.options.crd_timeout
        for name in names:
            path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
            while True:
                try:
                    crd = await self.kube.get_json(path, what=f"CRD {name}")
                except NotFound:
                    break  # failed to restore: its outcome says why
                conditions = (crd.get("status") or {}).get("conditions") or []
                if any(
                    c.get("type") == "Established" and c.get("status") == "True" for c in conditions
                ):
                    break
                if time.monotonic() > deadline:
                    raise KubecareError(
                        f"CRD {name} was restored but is not Established after "
                        f"{self.options.crd_timeout:.0f}s; check it with: kubectl describe crd {name}"
                    )
                await asyncio.sleep(0.2)


async def restore_backup(
    kube: Kube,
    reader: ArchiveReader,
    options: RestoreOptions,
    *,
    decrypt: Callable[[bytes, str], bytes] | None = None,
    identities: list[Any] | None = None,  # the age identities, for encrypted volume data
    on_event: EventSink = ignore,
) -> RestoreResult:
    started = time.monotonic()
    if options.existing not in ("skip", "update"):
        raise UsageError(f"--existing takes skip or update, not {options.existing!r}")
    report = await asyncio.to_thread(verify, reader)
    if not report.ok:
        raise ArchiveError(
            f"{reader.name} fails verification ({report.problems[0]}"
            f"{f' and {len(report.problems) - 1} more' if len(report.problems) > 1 else ''}); "
            "nothing was restored"
        )
    manifest = reader.manifest
    entries = selected_types(manifest, options.filters)
    encrypted = manifest.get("encryption", {}).get("secrets") == "age"
    if (
        decrypt is None
        and encrypted
        and any(
            e["resource"] == "secrets" and not e.get("group") and e.get("count") for e in entries
        )
    ):
        raise UsageError(
            "the archive's Secrets are encrypted; pass --identity FILE (an age identity of "
            "one of its recipients) or --exclude-resources secrets"
        )
    if (
        options.volumes
        and identities is None
        and any(v.get("encrypted") for v in manifest.get("volumes") or [])
    ):
        raise UsageError(
            "the archive's volume data is encrypted; pass --identity FILE (an age identity of "
            "one of its recipients) or --no-volumes"
        )
    if decrypt is not None:
        _check_identity(reader, entries, decrypt)
    by_name = {type_name(str(e.get("group") or ""), str(e["resource"])): e for e in entries}
    custom = {n for n, e in by_name.items() if e.get("custom")}
    run = _Restore(kube, reader, options, decrypt, on_event)
    await run.refresh()
    if run.volume_claims:
        await run.find_new_volume_claims()
    for name in restore_order(by_name, custom, options.order):
        entry = by_name[name]
        await run.one_type(entry)
        if name == "persistentvolumeclaims" and run.volume_claims:
            await run.restore_volumes(identities)
        if name == _CRDS:
            crds = [o.name for o in run.results if o.type == _CRDS and o.outcome != Outcome.FAILED]
            if options.dry_run:
                run.pending_crds = {
                    type_name(str(e.get("group") or ""), str(e["resource"]))
                    for e in entries
                    if e.get("custom")
                } - run.served
            else:
                await run.wait_established(crds)
                await run.refresh()
    return RestoreResult(
        backup=str(manifest.get("name") or reader.name),
        dry_run=options.dry_run,
        objects=run.results,
        seconds=time.monotonic() - started,
        volumes=run.volumes,
    )


def _check_identity(
    reader: ArchiveReader, entries: list[JSON], decrypt: Callable[[bytes, str], bytes]
) -> None:
    """Decrypt one Secret before anything is sent: a wrong key fails here, not half way."""
    for entry in entries:
        if entry["resource"] == "secrets" and not entry.get("group"):
            for member in reader.type_members(entry):
                if member.path.endswith(".age"):
                    decrypt(member.data, member.path)
                    return


# A path segment name (apimachinery's path.IsValidPathSegmentName): no "/" and no "%"; and
# no control characters, which no archive member may hold.
_NAME = re.compile(r"[^/%\x00-\x1f\x7f]+")


def load_object(data: bytes, archive: str, path: str) -> JSON:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ArchiveError(f"{archive}: {path} is not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        raise ArchiveError(f"{archive}: {path} is not a Kubernetes object")
    return obj


def check_identity(obj: JSON, namespace: str, name: str, namespaced: bool, path: str) -> None:
    """The object is the one its member path names, and its name can be part of a URL (a path
    segment name: no "/", no "%", not "." or "..", no spaces or control characters)."""
    meta = obj["metadata"]
    if meta.get("name") != name or (namespaced and meta.get("namespace") != namespace):
        raise ArchiveError(
            f"{path} holds {meta.get('namespace') or ''}/{meta.get('name')}, not the object its "
            "name says; the archive was altered"
        )
    for segment in (name, namespace) if namespaced else (name,):
        if not _NAME.fullmatch(segment) or segment in (".", ".."):
            raise ArchiveError(f"{path}: {segment!r} is not a valid object name")
