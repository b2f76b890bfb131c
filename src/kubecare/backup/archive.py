"""The backup archive: a tar of one JSON file per object, compressed with zstd, readable with
standard tools and by kubecare at random access per resource type.

Layout (format version 1, docs/backup-format.md has the reference)::

    [zstd frames] tar members of one resource type (a frame per page of its list):
                      resources/<group|core>/<resource>/<namespace|_cluster>/<name>.json[.age]
                      checksums/<group|core>/<resource>.sha256   (sha256sum format, last)
    [zstd frames] ... one such section per resource type that has objects
    [zstd frame]  manifest.json, then the tar end-of-archive blocks
    [skippable]   footer: where the manifest frame starts and how long it is

Concatenated zstd frames are one zstd stream and concatenated tar fragments one tar, so
``tar --zstd -xf NAME.tar.zst`` extracts the whole backup (zstd ignores the skippable footer).
kubecare reads the footer, then the manifest, then only the frames it needs: ``describe`` of a
backup of any size reads a few kilobytes, ``restore`` reads each type when its turn comes.

Every type is written to a spool file of its own while it is listed, and appended to the archive
when its list is complete; a list that has to start over (expired continue token) truncates its
spool, so the archive never holds two versions of a type.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import struct
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import KubecareError

FORMAT = "kubecare-backup"
FORMAT_VERSION = 1
SUFFIX = ".tar.zst"
MANIFEST = "manifest.json"
CLUSTER_SCOPE = "_cluster"  # not a valid namespace name (DNS labels cannot start with "_")
_SKIPPABLE_MAGIC = 0x184D2A50
_FOOTER_TAG = b"kubecare"
_FOOTER = struct.Struct("<II8sQQ")  # magic, payload size, tag, manifest offset, manifest length
FOOTER_SIZE = _FOOTER.size
_BLOCK = 512
_LEVEL = 3


class ArchiveError(KubecareError):
    """Raised when a backup archive cannot be read or does not check out: not a kubecare backup,
    a newer format, truncated, a checksum that does not match, a member name that escapes."""


def group_dir(group: str) -> str:
    return group or "core"


def member_path(group: str, resource: str, namespace: str, name: str, *, encrypted: bool) -> str:
    suffix = ".json.age" if encrypted else ".json"
    return f"resources/{group_dir(group)}/{resource}/{namespace or CLUSTER_SCOPE}/{name}{suffix}"


def checksums_path(group: str, resource: str) -> str:
    return f"checksums/{group_dir(group)}/{resource}.sha256"


def parse_member_path(path: str) -> tuple[str, str, str, str, bool]:
    """``resources/...`` -> (group, resource, namespace, name, encrypted); refuses anything that
    could escape the directory it is extracted to."""
    check_member_name(path)
    parts = path.split("/")
    if len(parts) != 5 or parts[0] != "resources":
        raise ArchiveError(f"unexpected member {path!r} in the archive")
    _, group, resource, namespace, leaf = parts
    encrypted = leaf.endswith(".json.age")
    name = leaf.removesuffix(".age").removesuffix(".json")
    if not name or name == leaf:
        raise ArchiveError(f"unexpected member {path!r} in the archive")
    return (
        "" if group == "core" else group,
        resource,
        "" if namespace == CLUSTER_SCOPE else namespace,
        name,
        encrypted,
    )


def check_member_name(path: str) -> None:
    """Refuse absolute paths, ``..``, empty segments and control characters (path traversal)."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or any(ord(c) < 32 for c in path)
    ):
        raise ArchiveError(f"refusing archive member {path!r}: its name could escape the backup")


def _tar_header(path: str, size: int, mtime: int) -> bytes:
    """The tar header of a member: a ustar header built directly (tarfile's own takes ~40 µs,
    most of a backup's time per object), byte for byte what ``tarfile`` writes in USTAR format;
    names ustar cannot hold go through tarfile's PAX path."""
    raw = path.encode("utf-8", "surrogateescape")
    prefix = b""
    if len(raw) > 100:
        # tarfile's _posix_split_name: the shortest prefix that leaves a name of <= 100 bytes
        cut = raw.find(b"/")
        while cut > 0 and len(raw) - cut - 1 > 100:
            cut = raw.find(b"/", cut + 1)
        if cut <= 0 or cut > 155:
            return _pax_header(path, size, mtime)
        prefix, raw = raw[:cut], raw[cut + 1 :]
    if size >= 8**11 or mtime >= 8**11:
        return _pax_header(path, size, mtime)
    sized = b"%011o\0" % size
    timed = b"%011o\0" % mtime
    checksum = _USTAR_SUM + sum(raw) + sum(prefix) + sum(sized) + sum(timed)
    return b"".join(
        (
            raw.ljust(100, b"\0"),
            _USTAR_MODE,
            sized,
            timed,
            b"%06o\0 " % checksum,
            _USTAR_TAIL,
            prefix.ljust(155, b"\0"),
            b"\0" * 12,
        )
    )


_USTAR_MODE = b"0000600\0" + b"0000000\0" * 2  # mode, uid, gid
_USTAR_TAIL = (  # typeflag, linkname, magic, version, uname, gname, devmajor, devminor
    b"0" + b"\0" * 100 + b"ustar\x0000" + b"kubecare".ljust(32, b"\0") * 2 + b"\0" * 16
)
# Every byte of a header but name, size, mtime and prefix, the checksum field counted as spaces.
_USTAR_SUM = sum(_USTAR_MODE) + sum(b" " * 8) + sum(_USTAR_TAIL)


def _pax_header(path: str, size: int, mtime: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = 0o600
    info.mtime = mtime
    info.uname = info.gname = "kubecare"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


# -- writing -------------------------------------------------------------------------------


@dataclass
class TypeFrame:
    """The tar members of one resource type, compressed into one zstd frame in a spool file.
    The checksum lines go to a temp file of their own until the frame is finished: memory stays
    the same for a type of ten objects or a million."""

    spool: IO[bytes]
    mtime: int
    tmpdir: str | None = None  # where the checksum lines wait (default: the temp dir)
    count: int = 0
    size: int = 0  # uncompressed bytes of the objects

    def __post_init__(self) -> None:
        import tempfile

        self._restart_frame()
        self._sums = tempfile.TemporaryFile(dir=self.tmpdir)  # noqa: SIM115 (closed in finish/reset)

    def _restart_frame(self) -> None:
        import zstandard

        self._zstd = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True).compressobj()
        self._open = False  # a frame add() started and has not flushed

    def add(self, path: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        self._write(_tar_header(path, len(data), self.mtime) + data + _padding(len(data)))
        self._sums.write(f"{digest}  {path}\n".encode())
        self.count += 1
        self.size += len(data)

    def add_frame(self, frame: bytes, sums: bytes, count: int, size: int) -> None:
        """A page's members, already tarred and compressed into a frame of their own."""
        if self._open:
            self.spool.write(self._zstd.flush())  # close the frame add() was writing
            self._restart_frame()
        self.spool.write(frame)
        self._sums.write(sums)
        self.count += count
        self.size += size

    def _write(self, raw: bytes) -> None:
        self._open = True
        out = self._zstd.compress(raw)
        if out:
            self.spool.write(out)

    def close(self) -> None:
        """Drop the checksum lines (the type failed; finish() closes them otherwise)."""
        self._sums.close()

    def reset(self) -> None:
        """Forget everything written (the list starts over)."""
        self._sums.close()
        self.spool.seek(0)
        self.spool.truncate()
        self.count = self.size = 0
        self.__post_init__()

    def finish(self, checksums: str, *, sums: bytes | None = None) -> str:
        """Close the frame with the type's checksums member (``sums`` replaces the computed
        lines: tests forge archives with it); returns that member's sha256."""
        size = self._sums.tell() if sums is None else len(sums)
        self._sums.seek(0)
        digest = hashlib.sha256()
        self._write(_tar_header(checksums, size, self.mtime))
        chunks = iter([sums]) if sums is not None else iter(lambda: self._sums.read(1 << 20), b"")
        for chunk in chunks:
            digest.update(chunk)
            self._write(chunk)
        self._sums.close()
        self._write(_padding(size))
        self.spool.write(self._zstd.flush())
        self.spool.flush()
        return digest.hexdigest()


class ArchiveWriter:
    """Appends finished type frames to a temp file beside ``final``; :meth:`commit` adds the
    manifest and footer and links the file in under its final name (never over an existing
    one). A crash at any point leaves no file under the final name."""

    def __init__(self, final: Path) -> None:
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self._fd, tmp = _mkstemp(final)
        self.tmp = Path(tmp)
        self._file = os.fdopen(self._fd, "wb")
        self.offset = 0

    def append(self, spool: IO[bytes]) -> tuple[int, int, str]:
        """Copy a finished spool in; returns (offset, length, sha256 of the compressed frame)."""
        spool.seek(0)
        start, digest = self.offset, hashlib.sha256()
        while chunk := spool.read(1 << 20):
            digest.update(chunk)
            self._file.write(chunk)
            self.offset += len(chunk)
        return start, self.offset - start, digest.hexdigest()

    def write_raw(self, data: bytes) -> None:
        """Append bytes as they are (a volume's frames, written as its stream arrives)."""
        self._file.write(data)
        self.offset += len(data)

    def patch(self, offset: int, data: bytes) -> None:
        """Overwrite bytes written before (a volume's header, known once its stream ended)."""
        if offset + len(data) > self.offset:
            raise ValueError("patch past the end of the archive")
        self._file.flush()
        self._file.seek(offset)
        self._file.write(data)
        self._file.flush()
        self._file.seek(self.offset)

    def commit(self, manifest: dict[str, Any], mtime: int) -> None:
        import zstandard

        body = orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        tar = _tar_header(MANIFEST, len(body), mtime) + body + _padding(len(body)) + b"\0" * 1024
        frame = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True).compress(tar)
        start = self.offset
        self._file.write(frame)
        payload = _FOOTER.pack(_SKIPPABLE_MAGIC, _FOOTER.size - 8, _FOOTER_TAG, start, len(frame))
        self._file.write(payload)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        try:
            os.link(self.tmp, self.final)  # fails if the name exists: nothing is overwritten
        except FileExistsError:
            self.tmp.unlink(missing_ok=True)
            raise ArchiveError(
                f"{self.final} already exists; choose another backup name or delete that one"
            ) from None
        except OSError:
            # No hard links here (vfat/exFAT, some network filesystems): a rename, checked
            # first, is the next best thing (a name taken in between would be replaced).
            if self.final.exists():
                self.tmp.unlink(missing_ok=True)
                raise ArchiveError(f"{self.final} already exists; choose another name") from None
            os.rename(self.tmp, self.final)
        self.tmp.unlink(missing_ok=True)
        from ..files import fsync_dir

        fsync_dir(self.final.parent)

    def abort(self) -> None:
        """Remove the temp file; never raises (it runs while another error is on its way)."""
        if not self._file.closed:
            # the buffered tail may not be writable (a full disk): it is dropped
            with contextlib.suppress(OSError):
                self._file.close()
        self.tmp.unlink(missing_ok=True)


def _mkstemp(final: Path) -> tuple[int, str]:
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.fchmod(fd, 0o600)
    return fd, tmp


# -- reading -------------------------------------------------------------------------------


class _Window(io.RawIOBase):
    """``length`` bytes of ``f`` from ``offset``: one frame, read without loading it whole."""

    def __init__(self, f: IO[bytes], offset: int, length: int) -> None:
        self._f, self._pos, self._end = f, offset, offset + length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._end - self._pos)
        if n <= 0:
            return 0
        try:
            # pread: no shared file position, so windows read from several threads (a volume
            # sent in a worker thread, types read in the loop) cannot disturb each other
            data = os.pread(self._f.fileno(), n, self._pos)
        except (AttributeError, OSError, io.UnsupportedOperation):
            self._f.seek(self._pos)
            data = self._f.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


@dataclass(frozen=True)
class Member:
    path: str
    data: bytes


def _read_exact(stream: Any, n: int, what: str) -> bytes:
    # in bounded reads: a damaged size field (gigabytes) must end as "truncated" when the
    # stream does, not as one allocation of that size (the fuzz test's MemoryError)
    chunks, left = [], n
    while left:
        chunk = stream.read(min(left, 1 << 20))
        if not chunk:
            raise ArchiveError(f"{what} is truncated")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _octal(field_: bytes, what: str) -> int:
    text = field_.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise ArchiveError(f"{what}: a tar header is corrupt") from None


def iter_tar(stream: Any, what: str) -> Iterator[Member]:
    """The regular-file members of a tar stream (PAX path records honoured); stops at the end
    of the stream or the end-of-archive blocks."""
    pax_path: str | None = None
    while True:
        head = stream.read(_BLOCK)
        while head and len(head) < _BLOCK:  # a stream reader may return short reads
            more = stream.read(_BLOCK - len(head))
            if not more:
                break
            head += more
        if not head or head == b"\0" * _BLOCK:
            return
        if len(head) < _BLOCK:
            raise ArchiveError(f"{what} is truncated")
        size = _octal(head[124:136], what)
        kind = head[156:157]
        data = _read_exact(stream, size, what)
        _read_exact(stream, -size % _BLOCK, what)
        if kind == b"x":
            pax_path = _pax_path(data, what)
            continue
        if kind not in (b"0", b"\0"):
            raise ArchiveError(f"{what}: unexpected tar entry type {kind!r} (only files)")
        name = head[0:100].split(b"\0", 1)[0]
        prefix = head[345:500].split(b"\0", 1)[0]
        path = pax_path or (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
        pax_path = None
        check_member_name(path)
        yield Member(path, data)


def _pax_path(data: bytes, what: str) -> str | None:
    path = None
    rest = data
    while rest:
        length_text, sep, _ = rest.partition(b" ")
        try:
            length = int(length_text)
        except ValueError:
            raise ArchiveError(f"{what}: a tar PAX header is corrupt") from None
        record, rest = rest[:length], rest[length:]
        key, _, value = record.partition(b" ")[2].partition(b"=")
        if key == b"path":
            path = value.rstrip(b"\n").decode("utf-8", "surrogateescape")
        if not sep or length <= 0:
            raise ArchiveError(f"{what}: a tar PAX header is corrupt")
    return path


class ArchiveReader:
    """Random access to a backup archive on a seekable file."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        self.f, self.name = f, name
        self.manifest = self._manifest()

    @classmethod
    def open(cls, path: Path) -> ArchiveReader:
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise ArchiveError(f"backup archive {path} does not exist") from None
        except PermissionError:
            raise ArchiveError(f"cannot read {path}: permission denied") from None
        try:
            return cls(f, str(path))
        except BaseException:
            f.close()
            raise

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _manifest(self) -> dict[str, Any]:
        end = self.f.seek(0, os.SEEK_END)
        if end < _FOOTER.size:
            raise ArchiveError(f"{self.name} is not a kubecare backup (too short)")
        self.f.seek(end - _FOOTER.size)
        magic, size, tag, offset, length = _FOOTER.unpack(self.f.read(_FOOTER.size))
        if magic != _SKIPPABLE_MAGIC or tag != _FOOTER_TAG or size != _FOOTER.size - 8:
            raise ArchiveError(
                f"{self.name} is not a kubecare backup, or it is truncated (no footer)"
            )
        if offset + length > end - _FOOTER.size:
            raise ArchiveError(f"{self.name} is truncated (the manifest is past its end)")
        self.manifest_offset, self.manifest_length = offset, length
        members = list(self.frame_members(offset, length, "the manifest"))
        if len(members) != 1 or members[0].path != MANIFEST:
            raise ArchiveError(f"{self.name}: the manifest frame is corrupt")
        try:
            manifest = orjson.loads(members[0].data)
        except orjson.JSONDecodeError:
            raise ArchiveError(f"{self.name}: the manifest is not valid JSON") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ArchiveError(f"{self.name} is not a kubecare backup (no kubecare manifest)")
        version = manifest.get("formatVersion")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise ArchiveError(
                f"{self.name} was written in backup format version {version} (by kubecare "
                f"{manifest.get('kubecareVersion')}); this kubecare reads format "
                f"{FORMAT_VERSION}: upgrade kubecare to read it"
            )
        check_manifest(manifest, self.name)
        return dict(manifest)

    def frame_members(self, offset: int, length: int, what: str) -> Iterator[Member]:
        import zstandard

        window = io.BufferedReader(_Window(self.f, offset, length), 1 << 20)
        reader = zstandard.ZstdDecompressor().stream_reader(window, read_across_frames=True)
        try:
            yield from iter_tar(reader, f"{self.name} ({what})")
        except zstandard.ZstdError as e:
            raise ArchiveError(f"{self.name} ({what}) is corrupt: {e}") from None

    def type_members(self, entry: dict[str, Any]) -> Iterator[Member]:
        """The members of one type's frame, checksums file included (last)."""
        frame = entry.get("frame")
        if not frame:
            return
        what = f"{entry.get('resource')}.{entry.get('group')}".rstrip(".")
        yield from self.frame_members(int(frame["offset"]), int(frame["length"]), what)


_GROUP = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")
_VERSION = re.compile(r"^[a-z0-9]+$")
_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


def check_manifest(m: dict[str, Any], name: str) -> None:
    """The manifest's shape, before anything uses it: a malformed one is an ArchiveError, never
    a traceback, and nothing from it reaches a URL unchecked (group, version, resource)."""

    def bad(why: str) -> ArchiveError:
        return ArchiveError(f"{name}: the manifest is malformed ({why})")

    types = m.get("types")
    if not isinstance(types, list):
        raise bad("no list of types")
    for key, kind in (("encryption", dict), ("filters", dict), ("warnings", list)):
        if key in m and not isinstance(m[key], kind):
            raise bad(f"{key} is not a {kind.__name__}")
    for t in types:
        if not isinstance(t, dict):
            raise bad("a type entry is not an object")
        group, version, resource = t.get("group", ""), t.get("version"), t.get("resource")
        if not (
            isinstance(group, str) and _GROUP.match(group)
            and isinstance(version, str) and _VERSION.match(version)
            and isinstance(resource, str) and _RESOURCE.match(resource)
        ):  # fmt: skip
            raise bad(f"type {group!r}/{version!r}/{resource!r}")
        count = t.get("count", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < -1:
            raise bad(f"count of {resource}")
        frame = t.get("frame")
        if frame is None:
            continue
        sums = t.get("checksums")
        if not (
            isinstance(frame, dict)
            and all(isinstance(frame.get(k), int) and frame[k] >= 0 for k in ("offset", "length"))
            and isinstance(frame.get("sha256"), str) and _SHA.match(frame["sha256"])
            and isinstance(sums, dict)
            and sums.get("path") == checksums_path(group, resource)
            and isinstance(sums.get("sha256"), str) and _SHA.match(sums["sha256"])
        ):  # fmt: skip
            raise bad(f"the frame of {resource}")
    if "volumes" in m:
        from .volumes import check_volume_entries

        check_volume_entries(m, name)
