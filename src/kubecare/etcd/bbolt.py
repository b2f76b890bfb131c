"""A read-only reader for bbolt files: etcd's backend database and the snapshots taken of it.

The layout is bbolt v1.4's (go.etcd.io/bbolt, the version etcd 3.6 pins): pages of
``meta.pageSize`` bytes, page ``n`` at offset ``n * pageSize``, a 16-byte page header
(id u64, flags u16, count u16, overflow u32), two meta pages (0 and 1; the valid one with the
higher txid wins), branch and leaf pages of 16-byte elements whose ``pos`` is relative to the
element itself, buckets as leaf values (16-byte root/sequence header; root 0 = an inline page
inside the value). Everything is little-endian, as bbolt writes it on amd64/arm64.

The file is memory-mapped; every access is bounds-checked, so a truncated or garbled file gives
a :class:`SnapshotError` naming the page, never a crash or a hang (bbolt itself panics on most
of these). :meth:`BoltFile.check` is bbolt's ``tx.Check()`` (tx_check.go): page reachability,
double references, freed pages still in use, key order.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import SnapshotError

MAGIC = 0xED0CDAED
VERSION = 2
NO_FREELIST = 0xFFFFFFFFFFFFFFFF  # meta.freelist when the freelist is not synced (etcd on Linux)

BRANCH, LEAF, META, FREELIST = 0x01, 0x02, 0x04, 0x10
BUCKET_LEAF = 0x01  # leaf element flag: the value is a bucket

_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
_META = struct.Struct("<IIIIQQQQQQ")  # magic version pageSize flags root seq freelist pgid txid sum
_LEAF = struct.Struct("<IIII")  # flags, pos, ksize, vsize
_BRANCH = struct.Struct("<IIQ")  # pos, ksize, pgid
_BUCKET = struct.Struct("<QQ")  # root, sequence

#: Drop the mapping's resident pages after this many bytes were touched: the walk stays at a
#: flat resident size however large the file (the pages stay in the page cache).
_RELEASE_EVERY = 64 << 20

_FNV_OFFSET, _FNV_PRIME, _U64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def fnv64a(data: bytes) -> int:
    """FNV-1a 64, bbolt's meta page checksum."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _U64
    return h


def has_trailer(size: int) -> bool:
    """etcd's snapshot files end in a 32-byte SHA-256; bbolt sizes are multiples of 512."""
    return size % 512 == 32


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    pgid: int  # high-water mark: pages in use
    txid: int


@dataclass(frozen=True)
class Bucket:
    """Where a bucket's entries are: a page tree (root > 0) or an inline page (root == 0)."""

    root: int
    inline: bytes = b""


def _meta_at(buf: bytes | mmap.mmap, off: int) -> Meta | None:
    if off + 16 + _META.size > len(buf):
        return None
    magic, version, page_size, _, root, _, freelist, pgid, txid, checksum = _META.unpack_from(
        buf, off + 16
    )
    if magic != MAGIC or version != VERSION:
        return None
    if checksum != fnv64a(bytes(buf[off + 16 : off + 16 + 56])):
        return None
    return Meta(page_size, root, freelist, pgid, txid)


class BoltFile:
    """An open bbolt file. Use :func:`open_bolt`; every reading method may raise SnapshotError."""

    def __init__(self, buf: bytes | mmap.mmap, name: str, *, length: int | None = None) -> None:
        self._buf = buf
        self.name = name
        self.length = len(buf) if length is None else length  # without a snapshot's trailer
        self._touched = 0
        self.meta = self._read_meta()
        self.page_size = self.meta.page_size
        self.size = self.meta.pgid * self.page_size  # tx.Size(): what etcdutl calls totalSize
        if self.size > self.length:
            raise SnapshotError(
                f"{name} is truncated: its meta page says {self.size} bytes, the file has "
                f"{self.length}"
            )
        if not 2 <= self.meta.root < self.meta.pgid:
            raise SnapshotError(f"{name}: the root bucket's page {self.meta.root} is out of range")

    def _read_meta(self) -> Meta:
        buf = self._buf
        first = _meta_at(buf, 0)
        page_size = first.page_size if first else None
        if page_size is None:  # bbolt's getPageSize: look for meta 1 at 1 KiB, 2 KiB, ... 16 MiB
            for i in range(15):
                pos = 1024 << i
                if pos >= self.length - 1024:
                    break
                second = _meta_at(buf, pos)
                if second is not None and second.page_size == pos:
                    page_size = pos
                    break
        if page_size is None or not 512 <= page_size <= 1 << 24:
            raise SnapshotError(
                f"{self.name} is not a bbolt database (no valid meta page): not an etcd snapshot "
                "or data file"
            )
        if self.length < 2 * page_size:
            raise SnapshotError(f"{self.name} is truncated: shorter than its two meta pages")
        m0, m1 = _meta_at(buf, 0), _meta_at(buf, page_size)
        # db.meta(): meta 1 only when its txid is strictly higher; the other if that one fails.
        a, b = (m1, m0) if m1 and m0 and m1.txid > m0.txid else (m0, m1)
        meta = a or b
        if meta is None:
            raise SnapshotError(f"{self.name}: both meta pages fail their checksum")
        return meta

    # -- pages ---------------------------------------------------------------------------------
    def page(self, pgid: int) -> tuple[int, int, int, int]:
        """(offset, flags, count, overflow) of page ``pgid``, checked like bbolt's tx.page()."""
        if not 0 <= pgid < self.meta.pgid:
            raise SnapshotError(
                f"{self.name}: page {pgid} is out of bounds (the file has {self.meta.pgid} pages)"
            )
        off = pgid * self.page_size
        pid, flags, count, overflow = _HEADER.unpack_from(self._buf, off)
        if pid != pgid:
            raise SnapshotError(
                f"{self.name}: page {pgid} identifies itself as page {pid} (corrupt or truncated)"
            )
        if flags not in (BRANCH, LEAF, META, FREELIST):
            raise SnapshotError(f"{self.name}: page {pgid} has an invalid type {flags:#x}")
        if pgid + overflow >= self.meta.pgid:
            raise SnapshotError(
                f"{self.name}: page {pgid} overflows past the end ({overflow} extra pages)"
            )
        self._touched += (overflow + 1) * self.page_size
        if self._touched >= _RELEASE_EVERY and isinstance(self._buf, mmap.mmap):
            self._touched = 0
            self._buf.madvise(mmap.MADV_DONTNEED)
        return off, flags, count, overflow

    def _leaf(
        self,
        buf: bytes | mmap.mmap,
        off: int,
        count: int,
        end: int,
        pgid: int,
        values: bool = True,
    ) -> list[tuple[bytes, bytes, int]]:
        """(key, value, flags) of a leaf page's elements; without ``values`` only sub-bucket
        values are copied (the consistency check needs keys, not megabytes of data)."""
        out = []
        if off + 16 + count * 16 > end:
            raise SnapshotError(f"{self.name}: page {pgid}: {count} elements do not fit the page")
        for i in range(count):
            elem = off + 16 + 16 * i
            flags, pos, ksize, vsize = _LEAF.unpack_from(buf, elem)
            k = elem + pos
            v = k + ksize
            if v + vsize > end:
                raise SnapshotError(f"{self.name}: page {pgid}: element {i} runs past the page")
            value = bytes(buf[v : v + vsize]) if values or flags & BUCKET_LEAF else b""
            out.append((bytes(buf[k:v]), value, flags))
        return out

    def _branch(self, off: int, count: int, end: int, pgid: int) -> list[tuple[bytes, int]]:
        out = []
        buf = self._buf
        if off + 16 + count * 16 > end:
            raise SnapshotError(f"{self.name}: page {pgid}: {count} elements do not fit the page")
        for i in range(count):
            elem = off + 16 + 16 * i
            pos, ksize, child = _BRANCH.unpack_from(buf, elem)
            k = elem + pos
            if k + ksize > end:
                raise SnapshotError(f"{self.name}: page {pgid}: element {i} runs past the page")
            out.append((bytes(buf[k : k + ksize]), child))
        return out

    def _inline(self, bucket: Bucket) -> list[tuple[bytes, bytes, int]]:
        data = bucket.inline
        if len(data) < 16:
            raise SnapshotError(f"{self.name}: an inline bucket is shorter than its page header")
        _, flags, count, _ = _HEADER.unpack_from(data, 0)
        if flags != LEAF:
            raise SnapshotError(f"{self.name}: an inline bucket's page is not a leaf")
        return self._leaf(data, 0, count, len(data), 0)

    # -- buckets -------------------------------------------------------------------------------
    def bucket_of(self, value: bytes) -> Bucket:
        if len(value) < _BUCKET.size:
            raise SnapshotError(f"{self.name}: a bucket value is shorter than its header")
        root, _ = _BUCKET.unpack_from(value, 0)
        return Bucket(root, value[16:] if root == 0 else b"")

    def items(self, bucket: Bucket) -> Iterator[tuple[bytes, bytes, int]]:
        """(key, value, flags) of a bucket's entries in key order; a sub-bucket's value is its
        raw bucket header (bbolt's cursor returns nil for it)."""
        if bucket.root == 0:
            yield from self._inline(bucket)
            return
        seen: set[int] = set()
        stack = [bucket.root]
        while stack:
            pgid = stack.pop()
            if pgid in seen:
                raise SnapshotError(f"{self.name}: page {pgid} is referenced twice (a loop)")
            seen.add(pgid)
            off, flags, count, overflow = self.page(pgid)
            end = off + (overflow + 1) * self.page_size
            if flags == LEAF:
                yield from self._leaf(self._buf, off, count, end, pgid)
            elif flags == BRANCH:
                stack.extend(child for _, child in reversed(self._branch(off, count, end, pgid)))
            else:
                raise SnapshotError(f"{self.name}: page {pgid} in a bucket is not a branch or leaf")

    @property
    def root(self) -> Bucket:
        return Bucket(self.meta.root)

    def buckets(self) -> Iterator[tuple[bytes, Bucket]]:
        """The top-level buckets, in name order (etcd keeps all its data in these)."""
        for name, value, flags in self.items(self.root):
            if not flags & BUCKET_LEAF:
                raise SnapshotError(f"{self.name}: nil bucket: {name!r} (a key at top level)")
            yield name, self.bucket_of(value)

    def bucket(self, name: bytes) -> Bucket | None:
        for n, b in self.buckets():
            if n == name:
                return b
        return None

    def get(self, bucket: Bucket, key: bytes) -> bytes | None:
        for k, v, _ in self.items(bucket):
            if k == key:
                return v
        return None

    # -- consistency ---------------------------------------------------------------------------
    def check(self, limit: int = 20) -> list[str]:
        """bbolt's tx.Check(): every problem found (at most ``limit``), empty when consistent."""
        errors: list[str] = []
        freed: set[int] = set()
        reachable: set[int] = {0, 1}
        persisted = self.meta.freelist != NO_FREELIST
        try:
            if persisted:
                off, flags, count, overflow = self.page(self.meta.freelist)
                if flags != FREELIST:
                    return [f"page {self.meta.freelist}: the freelist page has type {flags:#x}"]
                first = 0
                if count == 0xFFFF:
                    (count,) = struct.unpack_from("<Q", self._buf, off + 16)
                    first = 1
                end = off + (overflow + 1) * self.page_size
                if off + 16 + (first + count) * 8 > end:
                    return [f"page {self.meta.freelist}: the freelist does not fit its page"]
                for i in range(first, first + count):
                    (pid,) = struct.unpack_from("<Q", self._buf, off + 16 + 8 * i)
                    if pid in freed:
                        errors.append(f"page {pid}: already freed")
                    freed.add(pid)
                reachable.update(range(self.meta.freelist, self.meta.freelist + overflow + 1))
            buckets = [self.root]
            while buckets and len(errors) < limit:
                bucket = buckets.pop()
                if bucket.root == 0:  # inline buckets are not checked (and hold no sub-buckets)
                    continue
                self._check_tree(bucket.root, reachable, freed, errors, buckets, limit)
            if persisted:
                for pid in range(self.meta.pgid):
                    if pid not in reachable and pid not in freed and len(errors) < limit:
                        errors.append(f"page {pid}: unreachable unfreed")
        except SnapshotError as e:
            errors.append(str(e).removeprefix(f"{self.name}: "))
        return errors[:limit]

    def _check_tree(
        self,
        root: int,
        reachable: set[int],
        freed: set[int],
        errors: list[str],
        buckets: list[Bucket],
        limit: int,
    ) -> None:
        # (page, min key closed, max key open, stack) — depth first, like recursivelyCheckPageKeyOrder
        todo: list[tuple[int, bytes | None, bytes | None, tuple[int, ...]]] = [
            (root, None, None, ())
        ]
        while todo and len(errors) < limit:
            pgid, low, high, stack = todo.pop()
            stack = (*stack, pgid)
            if pgid > self.meta.pgid:
                errors.append(
                    f"page {pgid}: out of bounds: {self.meta.pgid} (stack: {list(stack)})"
                )
                continue
            off, flags, count, overflow = self.page(pgid)
            twice = False
            for i in range(overflow + 1):
                if pgid + i in reachable:
                    errors.append(f"page {pgid + i}: multiple references (stack: {list(stack)})")
                    twice = True
                reachable.add(pgid + i)
            if pgid in freed:
                errors.append(f"page {pgid}: reachable freed")
            if twice:
                continue  # never walk the same subtree twice: a loop must not hang the check
            end = off + (overflow + 1) * self.page_size
            if flags == LEAF:
                keys = self._leaf(self._buf, off, count, end, pgid, values=False)
                self._check_order([k for k, _, _ in keys], low, high, pgid, "leaf", errors)
                for _, value, f in keys:
                    if f & BUCKET_LEAF:
                        buckets.append(self.bucket_of(value))
            elif flags == BRANCH:
                elems = self._branch(off, count, end, pgid)
                self._check_order([k for k, _ in elems], low, high, pgid, "branch", errors)
                for i in reversed(range(len(elems))):
                    key, child = elems[i]
                    upper = elems[i + 1][0] if i + 1 < len(elems) else high
                    todo.append((child, key, upper, stack))
            else:
                errors.append(f"page {pgid}: invalid type: {flags:#x} (stack: {list(stack)})")

    @staticmethod
    def _check_order(
        keys: list[bytes],
        low: bytes | None,
        high: bytes | None,
        pgid: int,
        kind: str,
        errors: list[str],
    ) -> None:
        prev = low
        for i, key in enumerate(keys):
            if i == 0 and prev is not None and prev > key:
                errors.append(
                    f"the first key[{i}]={key.hex()} on {kind} page({pgid}) needs to be >= the "
                    f"key in the ancestor ({prev.hex()})"
                )
            elif i > 0 and prev is not None and prev >= key:
                rel = "<" if prev > key else "="
                errors.append(
                    f"key[{i}]={key.hex()} on {kind} page({pgid}) needs to be > (found {rel}) than "
                    f"previous element {prev.hex()}"
                )
            if high is not None and key >= high:
                errors.append(
                    f"key[{i}]={key.hex()} on {kind} page({pgid}) needs to be < than key of the "
                    f"next element in ancestor {high.hex()}"
                )
            prev = key


class _Opened:
    """Context manager for :func:`open_bolt`: maps the file, closes it afterwards."""

    def __init__(self, path: Path, *, snapshot: bool) -> None:
        self.path = path
        self.snapshot = snapshot
        self._fd = -1
        self._map: mmap.mmap | None = None

    def __enter__(self) -> BoltFile:
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
            size = os.fstat(self._fd).st_size
        except FileNotFoundError:
            raise SnapshotError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise SnapshotError(f"{self.path} is a directory, not a snapshot file") from None
        except PermissionError:
            raise SnapshotError(
                f"{self.path}: permission denied (run as a user who can read it, e.g. root)"
            ) from None
        if size < 1024:
            self.__exit__()
            raise SnapshotError(f"{self.path} is not a bbolt database ({size} bytes): too short")
        self._map = mmap.mmap(self._fd, size, prot=mmap.PROT_READ)
        length = size - 32 if self.snapshot and has_trailer(size) else size
        try:
            return BoltFile(self._map, str(self.path), length=length)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_bolt(path: Path, *, snapshot: bool = True) -> _Opened:
    """``with open_bolt(path) as db:`` — read-only; a snapshot's 32-byte trailer is left aside."""
    return _Opened(path, snapshot=snapshot)
