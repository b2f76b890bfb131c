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
    """The snapshot as a plain file: ``path`` itself, or a private (0600) decompressed copy of
    a zstd-compressed one, next to it (not in a RAM-backed /tmp), removed afterwards. Errors
    about the copy name ``path``."""
    if not is_zstd(path):
        yield path
        return
    import tempfile

    import zstandard

    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".db", dir=path.parent)
    except OSError:  # a read-only directory: the temp dir, then
        fd, name = tempfile.mkstemp(prefix="kubecare-snapshot-", suffix=".db")
    try:
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                zstandard.ZstdDecompressor().copy_stream(src, out)
        except zstandard.ZstdError as e:
            raise SnapshotError(f"{path}: corrupt zstd data ({e})") from None
        except OSError as e:
            raise SnapshotError(
                f"{path}: cannot decompress it next to itself ({e.strerror or e}); "
                "decompress it by hand: zstd -d"
            ) from None
        try:
            yield Path(name)
        except SnapshotError as e:
            raise SnapshotError(str(e).replace(name, str(path))) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
