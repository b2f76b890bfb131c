"""What is inside an etcd snapshot file, computed offline: ``etcdutl snapshot status``'s numbers
(etcdutl/snapshot/v3_snapshot.go, Status) and what Kubernetes keeps in it.

etcdutl's numbers, exactly:

- hash: CRC-32C over every top-level bucket's name, then each of its keys and values, in bbolt
  order (sub-bucket entries contribute an empty value);
- revision: the main revision of the last entry of bucket ``key``;
- totalKey: keys alive at that revision (a tombstone removes its key; an empty value, as
  ``restore --bump-revision`` writes, counts as the key "");
- totalSize: ``meta.pgid * pageSize`` (bbolt's tx.Size(), not the file size);
- version: meta/storageVersion.

The SHA-256 trailer etcd appends is checked (etcdutl only checks it at restore), and so is the
page structure (bbolt's tx.Check(), as etcdutl does before it computes anything).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SnapshotError
from .bbolt import BUCKET_LEAF, BoltFile, has_trailer, open_bolt
from .mvcc import KEY_BUCKET, key_value_meta, parse_revision, storage_version

ENCRYPTED_PREFIX = b"k8s:enc:"
REGISTRY = "/registry/"
#: Kubernetes' storage prefixes that are not the resource's name
#: (kube-apiserver's SpecialDefaultResourcePrefixes).
SPECIAL_PREFIXES = {
    "minions": "nodes",
    "services/specs": "services",
    "services/endpoints": "endpoints",
    "controllers": "replicationcontrollers",
    "ingress": "ingresses",
}
TOP = 10


@dataclass(frozen=True)
class ObjectKey:
    """Where an etcd key lives in Kubernetes terms."""

    resource: str  # "deployments", "widgets.example.com"; "" when not a Kubernetes key
    namespace: str  # "" for cluster-scoped objects
    name: str


def object_key(key: bytes) -> ObjectKey:
    """``/registry/deployments/default/web`` -> (deployments, default, web); groups of the
    extension servers and custom resources are in the key: ``/registry/<group>/<plural>/...``."""
    text = key.decode("utf-8", "replace")
    if not text.startswith(REGISTRY):
        return ObjectKey("", "", text)
    parts = text[len(REGISTRY) :].split("/")
    for prefix, resource in SPECIAL_PREFIXES.items():
        n = prefix.count("/") + 1
        if "/".join(parts[:n]) == prefix and len(parts) > n:
            return _scoped(resource, parts[n:])
    if "." in parts[0] and len(parts) > 2:
        return _scoped(f"{parts[1]}.{parts[0]}", parts[2:])
    return _scoped(parts[0], parts[1:])


def _scoped(resource: str, rest: list[str]) -> ObjectKey:
    if len(rest) >= 2:
        return ObjectKey(resource, rest[0], "/".join(rest[1:]))
    return ObjectKey(resource, "", rest[0] if rest else "")


@dataclass(frozen=True)
class TypeCount:
    resource: str
    count: int
    bytes: int


@dataclass(frozen=True)
class Status:
    """etcdutl's five numbers, then kubecare's view of the same snapshot."""

    hash: int
    revision: int
    total_key: int
    total_size: int
    version: str
    sha256: str  # "ok", "absent" or "not checked" (a bad one raises)
    resources: list[TypeCount] = field(default_factory=list)
    namespaces: list[tuple[str, int]] = field(default_factory=list)
    largest: list[tuple[str, int]] = field(default_factory=list)
    encrypted: int = 0  # live values stored encrypted at rest (k8s:enc:...)

    def etcdutl(self) -> dict[str, object]:
        """``etcdutl -w json snapshot status``'s object, field for field."""
        return {
            "hash": self.hash,
            "revision": self.revision,
            "totalKey": self.total_key,
            "totalSize": self.total_size,
            "version": self.version,
        }


def _sha256_of(path: Path, length: int) -> bytes:
    """SHA-256 of the first ``length`` bytes, hashed straight from a mapping (no copy), window
    by window, each dropped once hashed: resident memory stays flat."""
    import mmap

    h = hashlib.sha256()
    window = 64 << 20
    with open(path, "rb") as f:
        if length == 0:
            return h.digest()
        mm = mmap.mmap(f.fileno(), length, prot=mmap.PROT_READ)
        try:
            for off in range(0, length, window):
                n = min(window, length - off)
                with memoryview(mm)[off : off + n] as view:
                    h.update(view)
                mm.madvise(mmap.MADV_DONTNEED, off, n)
        finally:
            mm.close()
    return h.digest()


def verify_trailer(path: Path) -> str:
    """ "ok" when the SHA-256 trailer matches, "absent" without one; SnapshotError otherwise."""
    size = path.stat().st_size
    if not has_trailer(size):
        return "absent"
    with open(path, "rb") as f:
        f.seek(size - 32)
        want = f.read(32)
    got = _sha256_of(path, size - 32)
    if got != want:
        raise SnapshotError(
            f"{path}: the SHA-256 trailer does not match the data (expected {want.hex()}, got "
            f"{got.hex()}): the file is corrupt; take a new snapshot"
        )
    return "ok"


class _Background:
    """One function run in a thread; ``result()`` joins it and re-raises what it raised."""

    def __init__(self, fn: Callable[[Path], str], path: Path) -> None:
        import threading

        self._result = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, path), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[Path], str], path: Path) -> None:
        try:
            self._result = fn(path)
        except BaseException as e:  # handed to result()
            self._error = e

    def wait(self) -> None:
        self._thread.join()

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _trailer_only(path: Path) -> str:
    return "not checked" if has_trailer(path.stat().st_size) else "absent"


def integrity(db: BoltFile) -> None:
    errors = db.check()
    if errors:
        raise SnapshotError(
            f"{db.name}: snapshot file integrity check failed, {len(errors)} errors found: "
            + "; ".join(errors[:3])
        )


def status(path: Path, *, check: bool = True, verify: bool = True) -> Status:
    """Compute the snapshot's status (read-only). Raises SnapshotError for a bad file.
    ``verify``: check the SHA-256 trailer too (etcdutl's status does not; its restore does)."""
    import google_crc32c

    # The trailer's SHA-256 runs in a thread while this one walks the pages (hashlib releases
    # the GIL): on two cores the two overlap.
    sha = _Background(verify_trailer if verify else _trailer_only, path)
    try:
        with open_bolt(path) as db:
            if check:
                integrity(db)
            version = storage_version(db)
            crc = 0
            revision = 0
            alive: dict[bytes, tuple[int, bool]] = {}
            for name, bucket in db.buckets():
                crc = google_crc32c.extend(crc, name)
                is_key = name == KEY_BUCKET
                for k, v, flags in db.items(bucket):
                    value = b"" if flags & BUCKET_LEAF else v
                    crc = google_crc32c.extend(crc, k)
                    crc = google_crc32c.extend(crc, value)
                    if is_key:
                        rev = parse_revision(k)
                        revision = rev.main
                        kv = key_value_meta(value)
                        if rev.tombstone:
                            alive.pop(kv.key, None)
                        else:
                            alive[kv.key] = (kv.value_size, kv.value_prefix == ENCRYPTED_PREFIX)
            total_size = db.size
    except SnapshotError as e:
        sha.wait()
        if not str(e).startswith(str(path)):
            raise SnapshotError(f"{path}: {e}") from None
        raise
    except OSError as e:
        sha.wait()
        raise SnapshotError(f"{path}: {e.strerror or e}") from None
    trailer = sha.result()
    return _summarise(
        Status(crc, revision, len(alive), total_size, version, trailer),
        alive,
    )


def _summarise(base: Status, alive: dict[bytes, tuple[int, bool]]) -> Status:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    namespaces: Counter[str] = Counter()
    encrypted = 0
    for key, (size, enc) in alive.items():
        ok = object_key(key)
        resource = ok.resource or "(not Kubernetes)"
        counts[resource] += 1
        sizes[resource] += size
        if ok.namespace:
            namespaces[ok.namespace] += 1
        encrypted += enc
    largest = sorted(alive.items(), key=lambda item: item[1][0], reverse=True)[:TOP]
    return Status(
        base.hash,
        base.revision,
        base.total_key,
        base.total_size,
        base.version,
        base.sha256,
        resources=[TypeCount(r, n, sizes[r]) for r, n in sorted(counts.items())],
        namespaces=sorted(namespaces.items(), key=lambda item: (-item[1], item[0])),
        largest=[(k.decode("utf-8", "replace"), size) for k, (size, _) in largest],
        encrypted=encrypted,
    )


def humanize_bytes(n: int) -> str:
    """go-humanize's Bytes (SI, as etcdutl prints sizes): 20480 -> "20 kB", 974848 -> "975 kB"."""
    import math

    if n < 10:
        return f"{n} B"
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"]
    e = math.floor(math.log(n) / math.log(1000))
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.1f} {units[e]}" if val < 10 else f"{val:.0f} {units[e]}"
