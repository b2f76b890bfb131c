"""Snapshot files as kubecare writes them: plain, or zstd-compressed (``save --compress zstd``).
Readers take either; this module is all they import for it (no asyncio, no grpc)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import SnapshotError

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def is_zstd(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ZSTD_MAGIC
    except OSError:
        return False


@contextlib.contextmanager
def plain(path: Path) -> Iterator[Path]:
    """The snapshot as a plain file: ``path`` itself, or a private decompressed copy of a
    zstd-compressed one (removed afterwards)."""
    if not is_zstd(path):
        yield path
        return
    import tempfile

    import zstandard

    fd, name = tempfile.mkstemp(prefix="kubecare-snapshot-", suffix=".db")
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            try:
                zstandard.ZstdDecompressor().copy_stream(src, out)
            except zstandard.ZstdError as e:
                raise SnapshotError(f"{path}: corrupt zstd data ({e})") from None
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
