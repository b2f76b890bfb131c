"""etcd's MVCC layout inside its bbolt file (server/storage/mvcc, api/mvccpb/kv.proto).

Bucket ``key`` maps revisions to ``mvccpb.KeyValue`` messages: the bucket key is the revision,
8-byte big-endian main, ``_``, 8-byte big-endian sub, and a trailing ``t`` when the revision is
a deletion (tombstone). The ``meta`` bucket holds ``storageVersion`` ("3.6.0"), the consistent
index and the term.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import SnapshotError
from .bbolt import BoltFile

KEY_BUCKET = b"key"
META_BUCKET = b"meta"
_REV = struct.Struct(">Qc Q")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$"
)


@dataclass(frozen=True)
class Revision:
    main: int
    sub: int
    tombstone: bool


@dataclass(frozen=True)
class KeyValue:
    """mvccpb.KeyValue: 1 key, 2 create_revision, 3 mod_revision, 4 version, 5 value, 6 lease."""

    key: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    value: bytes = b""
    lease: int = 0


def parse_revision(raw: bytes) -> Revision:
    """mvcc.BytesToBucketKey with etcdutl's checks (invalid length, separator, negative)."""
    if len(raw) not in (17, 18):
        raise SnapshotError(f"cannot parse revision key: invalid revision length: {len(raw)}")
    main, sep, sub = _REV.unpack_from(raw, 0)
    if sep != b"_":
        raise SnapshotError("cannot parse revision key: invalid separator in bucket key")
    if main >= 1 << 63 or sub >= 1 << 63:  # int64 in Go: the top bit set is negative
        raise SnapshotError(
            f"cannot parse revision key: negative revision: main={_signed(main)} sub={_signed(sub)}"
        )
    return Revision(main, sub, len(raw) == 18 and raw[17:] == b"t")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise SnapshotError("cannot unmarshal a KeyValue: truncated varint")
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            return n, i
        shift += 7


def parse_key_value(buf: bytes) -> KeyValue:
    """Decode one mvccpb.KeyValue (an empty message is a KeyValue with key "", as in Go)."""
    fields: dict[int, object] = {}
    i, end = 0, len(buf)
    while i < end:
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
            fields[number] = _signed(value)
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > end:
                raise SnapshotError("cannot unmarshal a KeyValue: a field runs past the value")
            fields[number] = buf[i : i + size]
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise SnapshotError(f"cannot unmarshal a KeyValue: wire type {wire}")
    if i != end:
        raise SnapshotError("cannot unmarshal a KeyValue: truncated")

    def num(n: int) -> int:
        v = fields.get(n, 0)
        return v if isinstance(v, int) else 0

    def raw(n: int) -> bytes:
        v = fields.get(n, b"")
        return v if isinstance(v, bytes) else b""

    return KeyValue(raw(1), num(2), num(3), num(4), raw(5), num(6))


@dataclass(frozen=True)
class KeyValueMeta:
    """A KeyValue without its value copied: what listings and counts need."""

    key: bytes
    create_revision: int
    mod_revision: int
    value_size: int
    value_prefix: bytes  # the first 8 bytes: how the value is stored


def key_value_meta(buf: bytes) -> KeyValueMeta:
    """Like :func:`parse_key_value`, but the value is only measured (a 1 GB snapshot is not
    copied again to be counted)."""
    key, created, modified, size, prefix = b"", 0, 0, 0, b""
    i, end = 0, len(buf)
    while i < end:
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
            if number == 2:
                created = _signed(value)
            elif number == 3:
                modified = _signed(value)
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise SnapshotError("cannot unmarshal a KeyValue: a field runs past the value")
            if number == 1:
                key = buf[i : i + n]
            elif number == 5:
                size, prefix = n, buf[i : i + min(n, 8)]
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise SnapshotError(f"cannot unmarshal a KeyValue: wire type {wire}")
    if i != end:
        raise SnapshotError("cannot unmarshal a KeyValue: truncated")
    return KeyValueMeta(key, created, modified, size, prefix)


def revisions(db: BoltFile) -> Iterator[tuple[Revision, bytes, bytes]]:
    """(revision, raw bucket key, raw value) for every entry of the ``key`` bucket, in order."""
    bucket = db.bucket(KEY_BUCKET)
    if bucket is None:
        return
    for k, v, _ in db.items(bucket):
        yield parse_revision(k), k, v


def storage_version(db: BoltFile) -> str:
    """meta/storageVersion as etcdutl prints it: "" when missing or not a semantic version."""
    meta = db.bucket(META_BUCKET)
    if meta is None:
        raise SnapshotError(f"{db.name} has no meta bucket: not an etcd database")
    raw = db.get(meta, b"storageVersion")
    text = raw.decode("utf-8", "replace") if raw else ""
    return text if _SEMVER.match(text) else ""


def live(db: BoltFile) -> dict[bytes, KeyValue]:
    """The keys alive at the snapshot's latest revision, with their latest KeyValue."""
    out: dict[bytes, KeyValue] = {}
    for rev, _, value in revisions(db):
        kv = parse_key_value(value)
        if rev.tombstone:
            out.pop(kv.key, None)
        else:
            out[kv.key] = kv
    return out
