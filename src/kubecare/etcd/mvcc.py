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


def _fields(buf: bytes) -> Iterator[tuple[int, int, int]]:
    """A protobuf message's fields as (number, value, -1) for varints and (number, offset,
    length) for length-delimited ones; fixed-size fields are skipped (KeyValue has none)."""
    i, end = 0, len(buf)
    while i < end:
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(buf, i)
            yield number, _signed(value), -1
        elif wire == 2:
            size, i = _varint(buf, i)
            if i + size > end:
                raise SnapshotError("cannot unmarshal a KeyValue: a field runs past the value")
            yield number, i, size
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise SnapshotError(f"cannot unmarshal a KeyValue: wire type {wire}")
    if i != end:
        raise SnapshotError("cannot unmarshal a KeyValue: truncated")


def parse_key_value(buf: bytes) -> KeyValue:
    """Decode one mvccpb.KeyValue (an empty message is a KeyValue with key "", as in Go)."""
    nums = [0] * 7
    raws = [b""] * 7
    for number, value, size in _fields(buf):
        if 0 < number < 7:
            if size < 0:
                nums[number] = value
            else:
                raws[number] = buf[value : value + size]
    return KeyValue(raws[1], nums[2], nums[3], nums[4], raws[5], nums[6])


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
    for number, value, n in _fields(buf):
        if number == 1 and n >= 0:
            key = buf[value : value + n]
        elif number == 2 and n < 0:
            created = value
        elif number == 3 and n < 0:
            modified = value
        elif number == 5 and n >= 0:
            size, prefix = n, buf[value : value + min(n, 8)]
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
