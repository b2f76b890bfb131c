"""``etcd snapshot save``: stream Maintenance.Snapshot into a file, safely.

The file is exactly what ``etcdctl snapshot save`` writes (client/v3/snapshot/v3_snapshot.go):
the blobs of every message concatenated, the last one being the SHA-256 of all before it, so
``etcdutl snapshot restore`` accepts it without --skip-hash-check. Like etcdctl, the trailer's
presence is checked; with ``verify`` (``--verify``) its SHA-256 is checked too, in a second
thread (about 1.5 s of CPU per GB here; ``snapshot status`` and ``restore`` always check it).
kubecare writes mode 0600 to a temporary file in the target's directory, fsyncs it and the
directory, and never replaces an existing file unless asked.
With ``compress="zstd"`` the same bytes are written zstd-compressed (``FILE.zst``; kubecare's
status and restore read it directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import Any

from ..errors import EtcdError, SnapshotError, UsageError
from ..files import fsync_dir
from .grpc import SnapshotStream
from .members import Endpoint

Progress = Callable[[int, int | None], None]  # (bytes so far, data bytes in total or None)


@dataclass(frozen=True)
class Saved:
    path: Path
    endpoint: str
    bytes: int  # snapshot bytes received, SHA-256 trailer included
    written: int  # bytes on disk (smaller when compressed)
    version: str  # etcd's storage version, as etcdctl prints "Server version"
    seconds: float


def check_target(dest: Path, *, overwrite: bool) -> None:
    """Fail before connecting when the file cannot (or must not) be written."""
    if dest.is_dir():
        raise UsageError(f"{dest} is a directory; give a file name, e.g. {dest}/snapshot.db")
    if dest.exists() and not overwrite:
        raise UsageError(f"{dest} exists; choose another name or add --overwrite to replace it")
    parent = dest.parent
    if not parent.is_dir():
        raise UsageError(f"directory {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {parent}: permission denied")


async def save(
    endpoint: Endpoint,
    dest: Path,
    *,
    overwrite: bool = False,
    compress: str | None = None,
    progress: Progress | None = None,
    timeout: float | None = None,
    verify: bool = False,
) -> Saved:
    """Take a snapshot from ``endpoint`` into ``dest``. Nothing is left behind on failure."""
    check_target(dest, overwrite=overwrite)
    if compress not in (None, "zstd"):
        raise UsageError(f"--compress {compress!r}: only zstd is supported")
    t0 = time.monotonic()
    tmp = dest.parent / f".{dest.name}.{os.getpid()}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    stream = SnapshotStream(endpoint)
    done = False
    try:
        try:
            received, written, tail, digest = await asyncio.to_thread(
                _receive, stream, fd, compress, progress, timeout, verify
            )
        except asyncio.CancelledError:
            stream.cancel()
            raise
        except OSError as e:  # the disk: full, read-only, an I/O error
            raise SnapshotError(
                f"cannot write {dest}: {e.strerror or e}; the snapshot was not saved"
            ) from None
        if stream.total is None:
            raise EtcdError(f"etcd at {endpoint.url} sent an empty snapshot stream")
        if received % 512 != 32 or len(tail) != 32:
            raise SnapshotError(
                f"the snapshot from {endpoint.url} has no SHA-256 checksum ({received} bytes); "
                "it was not saved"
            )
        if verify and digest != tail:
            raise SnapshotError(
                f"the snapshot from {endpoint.url} does not match its SHA-256; it was not saved "
                "(try again)"
            )
        if overwrite:
            os.replace(tmp, dest)
        else:
            try:  # link, not rename: an existing file is never replaced, even by a race
                os.link(tmp, dest)
                os.unlink(tmp)
            except FileExistsError:
                raise UsageError(
                    f"{dest} appeared while saving; choose another name or add --overwrite"
                ) from None
            except OSError:  # no hard links here (vfat, some network shares): check, rename
                if os.path.exists(dest):  # noqa: ASYNC240 (one local stat)
                    raise UsageError(
                        f"{dest} appeared while saving; choose another name or add --overwrite"
                    ) from None
                os.rename(tmp, dest)
        fsync_dir(dest.parent)
        done = True
    finally:
        if not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return Saved(dest, endpoint.url, received, written, stream.version, time.monotonic() - t0)


def _receive(
    stream: SnapshotStream,
    fd: int,
    compress: str | None,
    progress: Progress | None,
    timeout: float | None,
    verify: bool,
) -> tuple[int, int, bytes, bytes]:
    """In a thread: stream into ``fd``; returns (bytes received, bytes written, the trailer,
    the SHA-256 of the data when ``verify``). The hash runs in a second thread (hashlib
    releases the GIL)."""
    hasher = hashlib.sha256()
    queue: SimpleQueue[bytes | None] = SimpleQueue()

    def hash_all() -> None:
        while (chunk := queue.get()) is not None:
            hasher.update(chunk)

    worker = threading.Thread(target=hash_all, name="snapshot-sha256", daemon=True)
    if verify:
        worker.start()
    received = 0
    tail = bytearray()  # everything after the data: the SHA-256 trailer
    try:
        # Unbuffered: the 32 KiB chunks go straight to the file, no copy through a buffer.
        with os.fdopen(fd, "wb", buffering=0) as raw:
            compressor = None
            if compress == "zstd":
                import zstandard

                compressor = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(
                    raw, closefd=False
                )
            for blob in stream.chunks(timeout=timeout):
                data_left = max(0, (stream.total or 0) - received)
                if data_left and verify:
                    queue.put(blob[:data_left] if len(blob) > data_left else blob)
                if len(blob) > data_left:
                    tail += blob[data_left:]
                received += len(blob)
                if compressor is not None:
                    compressor.write(blob)
                else:
                    _write_all(raw, blob)
                if progress:
                    progress(received, stream.total)
            if compressor is not None:
                compressor.close()  # type: ignore[no-untyped-call]
            os.fsync(raw.fileno())
            written = raw.tell()
    finally:
        if verify:
            queue.put(None)
            worker.join()
    return received, written, bytes(tail), hasher.digest()


def _write_all(f: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]
