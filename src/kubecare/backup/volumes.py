"""Persistent volume data in a backup: a file-system copy of each claim, taken through a
short-lived helper pod on the volume's node that mounts the claim read-only, and put back through
one that mounts the new claim and unpacks it (``kubectl cp``'s way: ``tar`` over ``exec``).

Backup, per claim in scope (bound, file-system mode):

1. the node is found (the volume's node affinity, else a running pod that mounts the claim) and
   must be Ready; the helper pod is made there (``nodeName``, every taint tolerated, no service
   account token, a deadline so a crashed kubecare cannot leave it running);
2. ``du`` says how much data there is; more than the backup's directory has free is refused
   before a byte is written;
3. the pre-backup hooks of the pods mounting the claim run (``exec``, Velero's annotations
   under kubecare's name: ``pre.hook.backup.kubecare.io/command`` (a JSON list or one
   string), ``/container``, ``/on-error`` (Fail or Continue), ``/timeout``); then
   ``tar -c -C /volume .`` streams into the archive as the member ``volumes/<ns>/<claim>.tar``
   (``.tar.age`` when the backup encrypts: one age stream, as Secrets are), checksummed, never
   held in memory whole; then the post hooks (``post.hook.backup.kubecare.io/...``), even if
   the copy failed;
4. the helper pod is deleted, whatever happened.

In the archive a volume is one section of its own, like a type: a zstd frame with the member's
tar header, then the frames of its data, so ``tar --zstd -xf`` extracts it as a file and
``backup verify`` checks it against the manifest's sha256.

Restore, per volume in the archive whose claim the restore has just created (never into a claim
that existed: its data is not overwritten): the helper pod mounts the claim (it is the claim's
first consumer, so a WaitForFirstConsumer class provisions it now, on the node the backup came
from when that node still exists), and ``tar -x`` reads the member from stdin; then the workloads
are restored and find their data.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import KubecareError, NotFound, OperationFailed, Unreachable, UsageError
from ..events import Event, EventSink, ignore
from ..kube.client import JSON, Kube
from ..kube.objects import volume_node
from .archive import _BLOCK, _LEVEL, ArchiveError, _padding, _tar_header, _Window

MOUNT = "/volume"
HELPER_LABEL = "kubecare.io/volume-helper"
DEFAULT_IMAGE = "docker.io/library/busybox:1.37"
IMAGE_ENV = "KUBECARE_HELPER_IMAGE"
HELPER_DEADLINE = 6 * 3600  # seconds a helper pod may live at most (activeDeadlineSeconds)
START_TIMEOUT = 120.0
FREE_MARGIN = 64 << 20  # bytes kept free beside the archive
HOOK_PREFIX = {"pre": "pre.hook.backup.kubecare.io/", "post": "post.hook.backup.kubecare.io/"}
_BAD_WAITING = {
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


class VolumeError(KubecareError):
    """A claim's data could not be backed up or restored (named in the message)."""


def helper_image() -> str:
    return os.environ.get(IMAGE_ENV) or DEFAULT_IMAGE


def member_path(namespace: str, claim: str, *, encrypted: bool) -> str:
    return f"volumes/{namespace}/{claim}.tar" + (".age" if encrypted else "")


# -- planning (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hook:
    pod: str
    container: str
    command: tuple[str, ...]
    on_error: str = "Fail"  # Fail | Continue (Velero's default is Fail)
    timeout: float = 30.0


@dataclass
class VolumePlan:
    namespace: str
    claim: str
    node: str | None  # None: wherever the scheduler puts the helper (a network volume)
    volume: str = ""
    storage_class: str = ""
    capacity: str = ""
    access_modes: tuple[str, ...] = ()
    skip: str = ""  # why it is not backed up ("" : it is)
    pods: tuple[str, ...] = ()  # running pods that mount it
    pre: tuple[Hook, ...] = ()
    post: tuple[Hook, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.claim}"


def _hooks(pod: JSON, phase: str) -> tuple[Hook, ...]:
    ann = (pod.get("metadata") or {}).get("annotations") or {}
    prefix = HOOK_PREFIX[phase]
    raw = ann.get(prefix + "command")
    if not raw:
        return ()
    name = pod["metadata"]["name"]
    try:
        parsed = orjson.loads(raw) if raw.lstrip().startswith("[") else [raw]
    except orjson.JSONDecodeError:
        raise UsageError(
            f'pod "{pod["metadata"]["namespace"]}/{name}": {prefix}command is not a JSON list '
            'of strings (write it as ["sh", "-c", "..."])'
        ) from None
    if not isinstance(parsed, list) or not parsed or not all(isinstance(a, str) for a in parsed):
        raise UsageError(
            f'pod "{pod["metadata"]["namespace"]}/{name}": {prefix}command must be a non-empty '
            "list of strings"
        )
    containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    container = ann.get(prefix + "container") or (containers[0] if containers else "")
    on_error = ann.get(prefix + "on-error", "Fail")
    if on_error not in ("Fail", "Continue"):
        raise UsageError(
            f'pod "{pod["metadata"]["namespace"]}/{name}": {prefix}on-error is Fail or Continue, '
            f"not {on_error!r}"
        )
    from ..durations import parse_duration

    timeout = parse_duration(ann.get(prefix + "timeout"), f'pod "{name}": {prefix}timeout')
    return (Hook(name, str(container), tuple(parsed), on_error, float(timeout or 30)),)


def plan_volumes(
    claims: list[JSON],
    volumes: list[JSON],
    pods: list[JSON],
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[VolumePlan]:
    """Which claims are copied, from where, with which hooks; and why the others are not."""
    by_pv = {v["metadata"]["name"]: v for v in volumes}
    users: dict[str, list[JSON]] = {}
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        ns = pod["metadata"]["namespace"]
        for v in (pod.get("spec") or {}).get("volumes") or []:
            claim = (v.get("persistentVolumeClaim") or {}).get("claimName")
            if claim:
                users.setdefault(f"{ns}/{claim}", []).append(pod)
    out = []
    for c in sorted(claims, key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"])):
        meta, spec = c["metadata"], c.get("spec") or {}
        key = f"{meta['namespace']}/{meta['name']}"
        pv = by_pv.get(spec.get("volumeName") or "")
        using = users.get(key, [])
        node = volume_node(pv) if pv else None
        if node is None and using:
            node = using[0].get("spec", {}).get("nodeName")
        p = VolumePlan(
            meta["namespace"],
            meta["name"],
            node,
            volume=spec.get("volumeName") or "",
            storage_class=spec.get("storageClassName") or "",
            capacity=str(((c.get("status") or {}).get("capacity") or {}).get("storage") or
                         ((spec.get("resources") or {}).get("requests") or {}).get("storage") or ""),
            access_modes=tuple(spec.get("accessModes") or ()),
            pods=tuple(p["metadata"]["name"] for p in using),
        )  # fmt: skip
        if key in exclude:
            p.skip = "excluded (--exclude-volume)"
        elif (c.get("status") or {}).get("phase") != "Bound" or pv is None:
            p.skip = "not bound: it holds no data yet"
        elif spec.get("volumeMode", "Filesystem") != "Filesystem":
            p.skip = "a block volume: only file-system volumes are copied"
        elif "ReadWriteOncePod" in p.access_modes and using:
            p.skip = f"ReadWriteOncePod and mounted by pod {using[0]['metadata']['name']}"
        else:
            p.pre = tuple(h for pod in using for h in _hooks(pod, "pre"))
            p.post = tuple(h for pod in using for h in _hooks(pod, "post"))
        out.append(p)
    return out


def helper_pod(
    namespace: str,
    claim: str,
    image: str,
    *,
    node: str | None,
    read_only: bool,
    purpose: str,
    on_node: str | None = None,
) -> JSON:
    """The helper pod: one container that sleeps until kubecare has exec'd what it needs."""
    short = re.sub(r"[^a-z0-9-]", "-", claim.lower())[:40].strip("-") or "claim"
    spec: JSON = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": HELPER_DEADLINE,
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "tolerations": [{"operator": "Exists"}],
        "containers": [
            {
                "name": "helper",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", str(HELPER_DEADLINE)],
                "volumeMounts": [{"name": "data", "mountPath": MOUNT, "readOnly": read_only}],
            }
        ],
        "volumes": [
            {
                "name": "data",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
            }
        ],
    }
    if node:
        spec["nodeName"] = node
    elif on_node:
        # Not nodeName: a claim of a WaitForFirstConsumer class is provisioned only for a pod
        # the scheduler places, so the node is a requirement the scheduler honours.
        term = {"key": "kubernetes.io/hostname", "operator": "In", "values": [on_node]}
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [term]}]
                }
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"kubecare-{purpose}-{short}-{secrets.token_hex(3)}",
            "namespace": namespace,
            "labels": {HELPER_LABEL: purpose, "app.kubernetes.io/managed-by": "kubecare"},
        },
        "spec": spec,
    }


# -- the helper pod -----------------------------------------------------------------------------


def _pod_path(namespace: str, name: str = "") -> str:
    from urllib.parse import quote

    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods" + (
        f"/{quote(name, safe='')}" if name else ""
    )


def _stuck(pod: JSON) -> str | None:
    """Why a pod will not start by itself, or None while it may still."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"it ended ({status.get('phase')}: {status.get('reason') or status.get('message')})"
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _BAD_WAITING:
            return f"{waiting['reason']}: {waiting.get('message') or cs.get('image')}"
    return None


class Helper:
    """A helper pod's life: made, waited for, exec'd in, deleted."""

    def __init__(self, kube: Kube, pod: JSON, claim: str) -> None:
        self.kube, self.pod, self.claim = kube, pod, claim
        self.namespace = pod["metadata"]["namespace"]
        self.name = pod["metadata"]["name"]
        self.node: str | None = pod["spec"].get("nodeName")

    async def __aenter__(self) -> Helper:
        try:
            # inside the try: an answer lost (or a cancellation) after the server made the pod
            # must still delete it (a 404 for a pod never made is fine)
            await self.kube.request_json(
                "POST", _pod_path(self.namespace), body=self.pod,
                what=f"the helper pod for claim {self.claim}",
            )  # fmt: skip
            await self._running()
        except BaseException:
            await self.delete()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.delete()

    async def delete(self) -> None:
        """Delete the pod, even while this task is being cancelled (Ctrl-C, another part of
        the backup failing): the request is given 10 s before the cancellation goes on. Gone
        already, or the apiserver away: its activeDeadlineSeconds ends it."""
        request = asyncio.ensure_future(
            self.kube.request_json(
                "DELETE",
                _pod_path(self.namespace, self.name),
                body={"gracePeriodSeconds": 0},
                what=f"helper pod {self.name}",
            )
        )
        try:
            await asyncio.shield(request)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(request, 10)
            raise
        except KubecareError:
            pass

    async def _running(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last = "it was not scheduled"
        while time.monotonic() < deadline:
            pod = await self.kube.get_json(
                _pod_path(self.namespace, self.name), what=f"helper pod {self.name}"
            )
            self.node = pod.get("spec", {}).get("nodeName") or self.node
            status = pod.get("status") or {}
            if status.get("phase") == "Running" and all(
                cs.get("ready") for cs in status.get("containerStatuses") or [{}]
            ):
                return
            why = _stuck(pod)
            if why:
                raise VolumeError(
                    f"claim {self.claim}: the helper pod {self.name} on node {self.node} cannot "
                    f"start ({why}); the image is {helper_image_of(self.pod)} — give one the "
                    f"node has with --volume-helper-image (or ${IMAGE_ENV})"
                )
            for cond in status.get("conditions") or []:
                if cond.get("status") == "False" and cond.get("message"):
                    last = f"{cond.get('reason')}: {cond['message']}"
            await asyncio.sleep(0.25)
        raise VolumeError(
            f"claim {self.claim}: the helper pod {self.name} did not start within "
            f"{START_TIMEOUT:.0f}s ({last}); see: kubectl -n {self.namespace} describe pod "
            f"{self.name}"
        )

    async def run(self, command: list[str], *, what: str, **kw: Any) -> Any:
        from ..kube.podexec import exec_stream

        try:
            result = await exec_stream(self.kube, self.namespace, self.name, command, **kw)
        except (Unreachable, OperationFailed) as e:  # the stream, not the apiserver's answer
            raise VolumeError(f"claim {self.claim}: {what} failed: {e}") from None
        if not result.ok:
            tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
            raise VolumeError(
                f"claim {self.claim}: {what} failed in the helper pod on node {self.node} "
                f"(exit {result.exit_code}: {' / '.join(tail) or result.message})"
            )
        return result


def helper_image_of(pod: JSON) -> str:
    return str(pod["spec"]["containers"][0]["image"])


async def run_hooks(
    kube: Kube, plan: VolumePlan, phase: str, done: list[JSON] | None = None
) -> list[JSON]:
    """Run the claim's pods' hooks for ``phase``, each recorded in ``done``; a failing Fail
    hook raises (a pre hook at once; a post hook after the others ran: an unfreeze must not be
    skipped because another failed)."""
    from ..kube.podexec import exec_stream

    done = [] if done is None else done
    failure: VolumeError | None = None
    for hook in plan.pre if phase == "pre" else plan.post:
        started = time.monotonic()
        try:
            async with asyncio.timeout(hook.timeout):
                result = await exec_stream(
                    kube, plan.namespace, hook.pod, list(hook.command), container=hook.container,
                    idle_timeout=hook.timeout + 5,
                )  # fmt: skip
            ok, why = result.ok, result.stderr.decode("utf-8", "replace").strip()[-200:]
            why = why or result.message
        except TimeoutError:
            ok, why = False, f"timed out after {hook.timeout:g}s"
        except KubecareError as e:  # the pod gone, exec forbidden, the stream cut
            ok, why = False, str(e)
        done.append(
            {
                "phase": phase,
                "pod": hook.pod,
                "container": hook.container,
                "command": list(hook.command),
                "ok": ok,
                "seconds": round(time.monotonic() - started, 3),
                **({"error": why} if not ok else {}),
            }
        )
        if not ok and hook.on_error == "Fail" and failure is None:
            failure = VolumeError(
                f"claim {plan.key}: the {phase}-backup hook in pod {plan.namespace}/{hook.pod} "
                f"failed ({why}); the volume was not backed up"
            )
            if phase == "pre":
                break
    if failure is not None:
        raise failure
    return done


# -- writing the member -------------------------------------------------------------------------


HEADER_ROOM = 4096  # bytes kept for a volume member's header frame (a PAX header fits)
_PAD_MAGIC = 0x184D2A51  # a zstd skippable frame: padding after the header frame


def raw_frame(block: bytes) -> bytes:
    """One zstd frame holding ``block`` (256 to 65,791 bytes) as a raw block: its size is
    known before the block's contents are, so the header can be written once the stream ends
    into the room kept for it."""
    n = len(block)
    fcs = struct.pack("<H", n - 256)  # Single_Segment, Frame_Content_Size of 2 bytes
    return b"\x28\xb5\x2f\xfd" + bytes([0x60]) + fcs + (n << 3 | 1).to_bytes(3, "little") + block


def header_region(header: bytes) -> bytes:
    frame = raw_frame(header)
    pad = HEADER_ROOM - len(frame) - 8
    if pad < 0:
        raise ArchiveError(f"a volume member's header of {len(header)} bytes does not fit")
    return frame + struct.pack("<II", _PAD_MAGIC, pad) + b"\0" * pad


class MemberWriter:
    """A volume's tar stream written into the archive as it arrives: room for the member's tar
    header first (its size is known only at the end), then the data compressed into frames
    straight after it; :meth:`finish` writes the header into its room. The archive's lock is
    the caller's for the whole copy. Encrypted: the stream goes to a plain spool first and into
    the archive through one age stream at the end."""

    def __init__(self, writer: Any, directory: Path, recipients: list[Any] | None) -> None:
        import zstandard

        self.writer, self.recipients = writer, recipients
        self.header_at = writer.offset
        writer.write_raw(b"\0" * HEADER_ROOM)  # a crash before finish leaves a temp file only
        self.data_at = writer.offset
        self._plain: IO[bytes] | None = (
            tempfile.TemporaryFile(dir=directory, prefix=".kubecare-volume-")  # noqa: SIM115
            if recipients
            else None
        )
        self._zstd = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True).compressobj()
        self.size = 0  # bytes of the member as stored
        self.tar_bytes = 0  # bytes of the tar stream (before encryption)
        self._sha = hashlib.sha256()  # of the member
        self._frames_sha = hashlib.sha256()  # of the compressed data, as stored
        self._tail = b""

    @property
    def complete(self) -> bool:
        """Whether the stream is a whole tar: whole blocks, ending in the two zero blocks
        every tar writes last (a stream that stopped early, however cleanly, does not)."""
        return self.tar_bytes % _BLOCK == 0 and self._tail == b"\0" * 1024

    def write(self, data: bytes) -> None:
        self.tar_bytes += len(data)
        self._tail = (self._tail + data)[-1024:]
        if self._plain is not None:
            self._plain.write(data)
            return
        self._add(data)

    def _add(self, data: bytes) -> None:
        self._sha.update(data)
        self.size += len(data)
        self._out(self._zstd.compress(data))

    def _out(self, compressed: bytes) -> None:
        if compressed:
            self._frames_sha.update(compressed)
            self.writer.write_raw(compressed)

    def finish(self, path: str, mtime: int) -> JSON:
        """Close the member; returns its record's ``sha256``, ``header`` and ``frame``.
        Blocking (encryption, the header's write): run it in a thread."""
        if self._plain is not None:
            import pyrage

            self._plain.seek(0)
            pyrage.encrypt_io(self._plain, _Sink(self._add), self.recipients or [])
            self._plain.close()
        self._out(self._zstd.compress(_padding(self.size)) + self._zstd.flush())
        region = header_region(_tar_header(path, self.size, mtime))
        self.writer.patch(self.header_at, region)
        return {
            "sha256": self._sha.hexdigest(),
            "header": {"offset": self.header_at, "length": HEADER_ROOM,
                       "sha256": hashlib.sha256(region).hexdigest()},
            "frame": {"offset": self.data_at, "length": self.writer.offset - self.data_at,
                      "sha256": self._frames_sha.hexdigest()},
        }  # fmt: skip

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()


class _Sink:
    """A writable file object that hands what is written to a function (pyrage's output)."""

    def __init__(self, take: Callable[[bytes], None]) -> None:
        self.take = take

    def write(self, data: bytes) -> int:
        self.take(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


@dataclass
class VolumeResult:
    plan: VolumePlan
    method: str  # "fs" | "skipped"
    node: str | None = None
    bytes: int = 0  # the tar stream's
    seconds: float = 0.0
    hooks: list[JSON] = field(default_factory=list)
    entry: JSON = field(default_factory=dict)  # the manifest's record


async def list_claims(kube: Kube, filters: Any) -> tuple[list[JSON], list[JSON], list[JSON]]:
    """The claims in the backup's scope, every volume, and the pods that could mount them."""
    params = {"labelSelector": filters.selector} if filters.selector else None
    ns = filters.include_namespaces[0] if len(filters.include_namespaces) == 1 else None
    base = f"/api/v1/namespaces/{ns}" if ns else "/api/v1"
    claims, volumes, pods = await asyncio.gather(
        kube.list_objects(f"{base}/persistentvolumeclaims", params=params, what="list PVCs"),
        kube.list_objects("/api/v1/persistentvolumes", what="list PVs"),
        kube.list_objects(f"{base}/pods", what="list pods"),
    )
    claims = [c for c in claims if filters.namespace_ok(c["metadata"]["namespace"])]
    return claims, volumes, pods


class _NodeGone(VolumeError):
    pass


async def _node_ready(kube: Kube, node: str, claim: str, *, restore: bool = False) -> None:
    try:
        from urllib.parse import quote

        obj = await kube.get_json(f"/api/v1/nodes/{quote(node, safe='')}", what=f'node "{node}"')
    except NotFound:
        raise _NodeGone(
            f'claim {claim}: its volume is on node "{node}", which no longer exists; its data '
            "cannot be read (leave it out with --exclude-volume " + claim + ")"
        ) from None
    ready: JSON = next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
        {},
    )
    # The kubelet's own words (e.g. "PLEG is not healthy") say why better than the reason alone
    why = ready.get("reason") or "no status"
    if ready.get("message"):
        why += f": {str(ready['message']).rstrip('.')}"
    if ready.get("status") != "True" and restore:
        raise VolumeError(
            f'claim {claim}: its data came from node "{node}", which is not Ready '
            f"({why}): bring the node back, or delete the node "
            "object to restore the data onto another node"
        )
    if ready.get("status") != "True":
        raise VolumeError(
            f'claim {claim}: its volume is on node "{node}", which is not Ready '
            f"({why}): bring the node back (kubecare sandbox "
            f"node-up {node}, on a sandbox), or leave the claim out with --exclude-volume {claim}"
        )


async def back_up_volume(
    kube: Kube,
    plan: VolumePlan,
    spool_dir: Path,
    mtime: int,
    *,
    image: str,
    recipients: list[Any] | None,
    on_event: EventSink = ignore,
    writer: Any,
    lock: asyncio.Lock,
) -> VolumeResult:
    """Copy one claim's data into the archive ``writer`` (holding ``lock`` while it writes).
    Raises :class:`VolumeError` naming the claim for anything that stops it; the archive is
    then to be abandoned (its temp file holds part of the copy)."""
    started = time.monotonic()
    if plan.node:
        await _node_ready(kube, plan.node, plan.key)
    pod = helper_pod(
        plan.namespace, plan.claim, image, node=plan.node, read_only=True, purpose="backup"
    )
    result = VolumeResult(plan, "fs", plan.node)
    spool: MemberWriter | None = None
    try:
        async with Helper(kube, pod, plan.key) as helper:
            result.node = helper.node
            out = bytearray()
            # du says nothing until it is done (millions of files, slow storage): a long wait
            await helper.run(["du", "-sk", MOUNT], what="measuring the volume (du)",
                             on_stdout=out.extend, idle_timeout=3600)  # fmt: skip
            try:
                used = int(out.split()[0]) * 1024
            except (ValueError, IndexError):
                raise VolumeError(f"claim {plan.key}: du printed {bytes(out[:80])!r}") from None
            free = free_bytes(spool_dir)
            # the archive holds it (zstd can add a little), a plain spool too when encrypting
            need = used * (2 if recipients else 1) + FREE_MARGIN
            if need > free:
                raise VolumeError(
                    f"claim {plan.key} holds {used / 2**20:.1f} MiB and {spool_dir} has "
                    f"{free / 2**20:.1f} MiB free (needs {need / 2**20:.1f} MiB): free some "
                    "space or back up to another --to; nothing was written"
                )
            on_event(Event("volume-start", f"volume {plan.key}: {used / 2**20:.1f} MiB on "
                           f"{helper.node}", data={"claim": plan.key, "bytes": used}))  # fmt: skip
            path = member_path(plan.namespace, plan.claim, encrypted=bool(recipients))
            posted = False

            async def post() -> None:
                nonlocal posted
                posted = True
                await run_hooks(kube, plan, "post", result.hooks)

            try:
                await run_hooks(kube, plan, "pre", result.hooks)
                # the archive is this copy's from its first byte to its header (the sections
                # must not interleave); the post hooks run inside, right after the stream
                async with lock:
                    spool = MemberWriter(writer, spool_dir, recipients)
                    try:
                        await helper.run(
                            ["tar", "-c", "-f", "-", "-C", MOUNT, "."],
                            what="reading the volume (tar)",
                            on_stdout=spool.write,
                            idle_timeout=120,
                        )
                    finally:
                        await post()
                    if not spool.complete:
                        raise VolumeError(
                            f"claim {plan.key}: the copy ended before tar's end of archive "
                            f"({spool.tar_bytes} bytes); run the backup again"
                        )
                    spans = await asyncio.to_thread(spool.finish, path, mtime)
            finally:
                if not posted:  # a pre hook failed, or the wait for the archive was cut short
                    await post()
    finally:
        if spool is not None:
            spool.close()
    result.bytes = spool.tar_bytes
    result.seconds = time.monotonic() - started
    result.entry = {
        "namespace": plan.namespace,
        "claim": plan.claim,
        "method": "fs",
        "node": result.node,
        "storageClass": plan.storage_class,
        "capacity": plan.capacity,
        "accessModes": list(plan.access_modes),
        "path": path,
        "encrypted": bool(recipients),
        "bytes": spool.tar_bytes,
        "size": spool.size,
        **spans,
        "hooks": result.hooks,
        "seconds": round(result.seconds, 3),  # helper pod start to the end of the copy
    }
    return result


# -- reading the member back --------------------------------------------------------------------


def volume_chunks(reader: Any, entry: JSON, chunk: int = 1 << 20) -> Any:
    """The member's stored bytes, chunk by chunk (a generator over the archive's frame),
    checked against the manifest's sha256 at the end (raises ArchiveError if changed)."""
    import zstandard

    start = int(entry["header"]["offset"])
    end = int(entry["frame"]["offset"]) + int(entry["frame"]["length"])
    window = _Window(reader.f, start, end - start)
    import io

    stream = zstandard.ZstdDecompressor().stream_reader(
        io.BufferedReader(window, 1 << 20), read_across_frames=True
    )
    what = f"{reader.name} (volume {entry.get('namespace')}/{entry.get('claim')})"
    try:
        name, size = _member_header(stream, what)
        if name != entry.get("path") or size != int(entry.get("size") or 0):
            raise ArchiveError(f"{what}: the member is not the one the manifest names")
        digest, left = hashlib.sha256(), size
        while left:
            data = stream.read(min(chunk, left))
            if not data:
                raise ArchiveError(f"{what} is truncated")
            digest.update(data)
            left -= len(data)
            yield data
        if digest.hexdigest() != entry.get("sha256"):
            raise ArchiveError(f"{what} does not match its sha256 (changed)")
    except zstandard.ZstdError as e:
        raise ArchiveError(f"{what} is corrupt: {e}") from None
    except ValueError:
        raise ArchiveError(f"{what}: its tar header is corrupt") from None


def _member_header(stream: Any, what: str) -> tuple[str, int]:
    """The name and size of the one member a volume section holds (a PAX header first for a
    long name or a size past ustar's 8 GiB, as archive._tar_header writes them)."""

    def block() -> bytes:
        data = stream.read(_BLOCK)
        if len(data) != _BLOCK:
            raise ArchiveError(f"{what} is truncated")
        return bytes(data)

    def octal(field_: bytes) -> int:
        return int(field_.rstrip(b"\0 ").lstrip(b" ") or b"0", 8)

    pax: dict[str, str] = {}
    head = block()
    if head[156:157] == b"x":
        n = octal(head[124:136])
        raw = b"".join(block() for _ in range(-(-n // _BLOCK)))[:n]
        while raw:
            length = int(raw.split(b" ", 1)[0])
            key, _, value = raw[:length].partition(b" ")[2].partition(b"=")
            pax[key.decode()] = value.rstrip(b"\n").decode("utf-8", "surrogateescape")
            raw = raw[length:]
        head = block()
    if head[156:157] not in (b"0", b"\0"):
        raise ArchiveError(f"{what}: the member is not a file")
    name = head[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    prefix = head[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
    name = pax.get("path") or (f"{prefix}/{name}" if prefix else name)
    return name, int(pax["size"]) if "size" in pax else octal(head[124:136])


def decrypted(reader: Any, entry: JSON, identities: list[Any] | None, tmpdir: Path) -> IO[bytes]:
    """An encrypted volume's tar, decrypted into a temp file in ``tmpdir`` (age is one stream;
    blocking: run it in a thread, before the exec starts)."""
    claim = f"{entry.get('namespace')}/{entry.get('claim')}"
    if not identities:
        raise UsageError(
            f"volume {claim} is encrypted; pass --identity FILE (an age identity of one of its "
            "recipients) or --no-volumes"
        )
    need = int(entry.get("bytes") or 0) + FREE_MARGIN
    if free_bytes(tmpdir) < need:
        raise VolumeError(
            f"volume {claim}: decrypting it needs {need / 2**20:.1f} MiB in {tmpdir}, which has "
            f"{free_bytes(tmpdir) / 2**20:.1f} MiB free; free some space there"
        )
    import pyrage

    plain = tempfile.TemporaryFile(dir=tmpdir, prefix=".kubecare-volume-")  # noqa: SIM115
    try:
        pyrage.decrypt_io(_Joined(volume_chunks(reader, entry)), plain, identities)
    except pyrage.DecryptError as e:
        plain.close()
        raise ArchiveError(f"volume {claim} cannot be decrypted with that identity ({e})") from None
    except BaseException:
        plain.close()
        raise
    plain.seek(0)
    return plain


async def _stdin_from(reader: Any, entry: JSON, plain: IO[bytes] | None) -> AsyncIterator[bytes]:
    """The tar stream to send: the decrypted file, or the member read from the archive (in a
    thread, chunk by chunk)."""
    if plain is not None:
        while data := await asyncio.to_thread(plain.read, 1 << 20):
            yield data
        return
    chunks = volume_chunks(reader, entry)
    while chunk := await asyncio.to_thread(next, chunks, b""):
        yield chunk


class _Joined:
    """A read()able file over a generator of byte chunks (pyrage's input)."""

    def __init__(self, chunks: Any) -> None:
        self._chunks, self._buf = chunks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            more = next(self._chunks, None)
            if more is None:
                break
            self._buf += more
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


async def restore_volume(
    kube: Kube,
    reader: Any,
    entry: JSON,
    namespace: str,
    *,
    image: str,
    identities: list[Any] | None,
    tmpdir: Path,
) -> JSON:
    """Unpack one volume into the (new) claim ``namespace/entry.claim``."""
    started = time.monotonic()
    claim = f"{namespace}/{entry['claim']}"
    # Back on the node it came from while that node exists (a local volume's data is where its
    # pod will run; it must be Ready), else wherever the scheduler provisions it.
    on_node = str(entry.get("node") or "") or None
    if on_node:
        try:
            await _node_ready(kube, on_node, claim, restore=True)
        except _NodeGone:
            on_node = None
    pod = helper_pod(namespace, str(entry["claim"]), image, node=None, read_only=False,
                     purpose="restore", on_node=on_node)  # fmt: skip
    plain = None
    if entry.get("encrypted"):
        plain = await asyncio.to_thread(decrypted, reader, entry, identities, tmpdir)
    try:
        async with Helper(kube, pod, claim) as helper:
            await helper.run(
                ["tar", "-x", "-f", "-", "-C", MOUNT],
                what="unpacking the volume (tar -x)",
                stdin=_stdin_from(reader, entry, plain),
                idle_timeout=120,
            )
            node = helper.node
    finally:
        if plain is not None:
            plain.close()
    return {
        "claim": claim,
        "node": node,
        "bytes": int(entry.get("bytes") or 0),
        "seconds": round(time.monotonic() - started, 3),
    }


def check_volume_entries(manifest: JSON, name: str) -> None:
    """The manifest's volume records, before anything uses them."""
    vols = manifest.get("volumes", [])
    if not isinstance(vols, list):
        raise ArchiveError(f"{name}: the manifest is malformed (volumes is not a list)")
    dns = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    for v in vols:
        if not (
            isinstance(v, dict)
            and isinstance(v.get("namespace"), str) and dns.match(v["namespace"])
            and isinstance(v.get("claim"), str) and dns.match(v["claim"])
            and v.get("path") == member_path(v["namespace"], v["claim"],
                                             encrypted=bool(v.get("encrypted")))
            and isinstance(v.get("size"), int) and v["size"] >= 0
            and isinstance(v.get("sha256"), str) and re.match(r"^[0-9a-f]{64}$", v["sha256"])
            and all(
                isinstance(v.get(span), dict)
                and all(isinstance(v[span].get(k), int) and v[span][k] >= 0
                        for k in ("offset", "length"))
                and isinstance(v[span].get("sha256"), str)
                for span in ("header", "frame")
            )
            and v["frame"]["offset"] == v["header"]["offset"] + v["header"]["length"]
            and (not v.get("node") or (isinstance(v["node"], str) and dns.match(v["node"])))
        ):  # fmt: skip
            raise ArchiveError(f"{name}: the manifest is malformed (a volume record)")
    skipped = manifest.get("volumesSkipped", [])
    if not isinstance(skipped, list) or not all(
        isinstance(v, dict) and isinstance(v.get("claim"), str) and isinstance(v.get("reason"), str)
        for v in skipped
    ):
        raise ArchiveError(f"{name}: the manifest is malformed (volumesSkipped)")


__all__ = [
    "DEFAULT_IMAGE",
    "IMAGE_ENV",
    "VolumeError",
    "VolumePlan",
    "back_up_volume",
    "helper_image",
    "list_claims",
    "plan_volumes",
    "restore_volume",
]
