"""Where backups live: a local directory (default ``~/.local/share/kubecare/backups``) or
S3-compatible object storage (``s3://bucket/prefix``, through obstore).

A backup is one archive, ``<name>.tar.zst``. Local archives are written beside their final name
and linked in when complete; S3 archives are built in a local temp dir and uploaded in one PUT
(or a multipart upload, which also appears only when complete). Either way no reader ever sees a
partial backup under its name, and an existing name is never overwritten.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..errors import KubecareError, UsageError
from .archive import SUFFIX, ArchiveError, ArchiveReader

DEFAULT_DIR = Path("~/.local/share/kubecare/backups")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$")
_CREATE_LIMIT = 64 << 20  # up to here an S3 upload is one conditional PUT (held in memory)
#: ``<name>.pin.json`` beside a backup: retention and ``backup delete`` leave it alone (an
#: unfinished upgrade's rollback backup); its JSON says who pinned it and why.
PIN = ".pin.json"


class StoreError(KubecareError):
    """Raised when a backup store cannot be reached, read or written."""


def check_name(name: str) -> str:
    if not _NAME.match(name) or len(name) > 200:
        raise UsageError(
            f"invalid backup name {name!r}: use lower-case letters, digits, '-', '_' and '.', "
            "starting and ending with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Info:
    name: str
    size: int
    modified: datetime.datetime


class Store(Protocol):
    url: str

    def check(self) -> None: ...
    def infos(self) -> list[Info]: ...
    def exists(self, name: str) -> bool: ...
    def reader(self, name: str) -> contextlib.AbstractContextManager[ArchiveReader]: ...
    def manifest(self, name: str) -> dict[str, Any]: ...
    def staging(self, name: str) -> contextlib.AbstractContextManager[Path]: ...
    def delete(self, name: str) -> None: ...
    def pins(self) -> dict[str, str]: ...
    def pin(self, name: str, why: str) -> None: ...
    def unpin(self, name: str) -> None: ...


def _pin_body(why: str) -> bytes:
    import json

    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"why": why, "pinned": stamp}).encode()


def _pin_why(raw: bytes) -> str:
    import json

    try:
        data = json.loads(raw)
    except ValueError:
        return "pinned (unreadable pin file)"
    return str(data.get("why") or "pinned") if isinstance(data, dict) else "pinned"


def open_store(url: str | None) -> Store:
    if url and url.startswith("s3://"):
        return S3Store(url)
    if url and "://" in url:
        raise UsageError(f"unsupported store {url!r}: give a directory or s3://bucket/prefix")
    return LocalStore(Path(url).expanduser() if url else DEFAULT_DIR.expanduser())


def _missing(name: str, url: str) -> ArchiveError:
    return ArchiveError(
        f"backup {name} is not in {url}; list the backups with: kubecare backup list --from {url}"
    )


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}{SUFFIX}"

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StoreError(f"cannot use {self.root} as a backup store: {e.strerror}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write to {self.root}: permission denied; choose --to DIR")

    def infos(self) -> list[Info]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.glob(f"*{SUFFIX}"):
            if p.name.startswith("."):
                continue
            st = p.stat()
            out.append(
                Info(
                    p.name.removesuffix(SUFFIX),
                    st.st_size,
                    datetime.datetime.fromtimestamp(st.st_mtime, datetime.UTC),
                )
            )
        return out

    def exists(self, name: str) -> bool:
        return self.path(name).exists()

    @contextlib.contextmanager
    def reader(self, name: str) -> Iterator[ArchiveReader]:
        path = self.path(name) if "/" not in name else Path(name)
        if not path.exists():
            raise _missing(name, self.url)
        with ArchiveReader.open(path) as r:
            yield r

    def manifest(self, name: str) -> dict[str, Any]:
        with self.reader(name) as r:
            return r.manifest

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """The path to write the archive to: its final path (the writer links it in)."""
        self.check()
        path = self.path(name)
        if path.exists():
            raise StoreError(f"backup {name} already exists in {self.url}; choose another name")
        yield path

    def delete(self, name: str) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise _missing(name, self.url) from None
        except OSError as e:
            raise StoreError(f"cannot delete {path}: {e.strerror}") from None

    def _pin_path(self, name: str) -> Path:
        return self.root / f"{check_name(name)}{PIN}"

    def pins(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if not self.root.is_dir():
            return out
        for p in self.root.glob(f"*{PIN}"):
            try:
                out[p.name.removesuffix(PIN)] = _pin_why(p.read_bytes())
            except OSError:
                out[p.name.removesuffix(PIN)] = "pinned (unreadable pin file)"
        return out

    def pin(self, name: str, why: str) -> None:
        from kubecare.files import write_atomic

        try:
            write_atomic(self._pin_path(name), _pin_body(why), mode=0o600)
        except OSError as e:
            raise StoreError(f"cannot pin {name} in {self.url}: {e.strerror}") from None

    def unpin(self, name: str) -> None:
        try:
            self._pin_path(name).unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot unpin {name} in {self.url}: {e.strerror}") from None


class S3Store:
    """``s3://bucket/prefix``; endpoint and credentials from the usual AWS_* variables
    (AWS_ENDPOINT_URL for MinIO, Ceph, moto ...; AWS_ALLOW_HTTP=true for a plain-HTTP one)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise UsageError(f"{url!r}: give s3://BUCKET or s3://BUCKET/PREFIX")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._store: Any = None

    @property
    def store(self) -> Any:
        if self._store is None:
            import datetime as dt

            from obstore.store import S3Store as Obstore

            options: dict[str, Any] = {}
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            if endpoint:
                options["endpoint"] = endpoint
                options["virtual_hosted_style_request"] = False
            if endpoint and endpoint.startswith("http://"):
                options["client_options"] = {"allow_http": True}
            try:
                self._store = Obstore(
                    self.bucket,
                    prefix=self.prefix or None,
                    retry_config={
                        "max_retries": 3,
                        "retry_timeout": dt.timedelta(seconds=20),
                        "backoff": {"init_backoff": dt.timedelta(milliseconds=100)},
                    },
                    **options,
                )
            except Exception as e:  # obstore raises its own tree; one line for the user
                raise StoreError(f"cannot use {self.url}: {_short(e)}") from None
        return self._store

    def key(self, name: str) -> str:
        return f"{check_name(name)}{SUFFIX}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise StoreError(f"{what} {self.url}: {_short(e)}") from None

    def check(self) -> None:
        import obstore

        self._call("cannot reach", lambda: obstore.list(self.store, chunk_size=1).collect())

    def infos(self) -> list[Info]:
        import obstore

        metas = self._call("cannot list", lambda: obstore.list(self.store).collect())
        return [
            Info(str(m["path"]).removesuffix(SUFFIX), int(m["size"]), m["last_modified"])
            for m in metas
            if str(m["path"]).endswith(SUFFIX) and "/" not in str(m["path"])
        ]

    def exists(self, name: str) -> bool:
        import obstore

        try:
            self._call("cannot read", obstore.head, self.store, self.key(name))
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def reader(self, name: str) -> Iterator[ArchiveReader]:
        """The archive downloaded to a private temp file (restore and verify read all of it)."""
        import obstore

        with tempfile.TemporaryDirectory(prefix="kubecare-backup-") as tmp:
            path = Path(tmp) / self.key(name)
            try:
                result = self._call("cannot read", obstore.get, self.store, self.key(name))
            except FileNotFoundError:
                raise _missing(name, self.url) from None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    for chunk in result.stream(min_chunk_size=8 << 20):
                        f.write(chunk)
            except OSError as e:
                raise StoreError(
                    f"cannot download {name} from {self.url} to {tmp}: {e.strerror or e}; "
                    "set TMPDIR to a directory with room"
                ) from None
            except Exception as e:  # obstore's errors, mid-stream
                raise StoreError(f"cannot read {name} from {self.url}: {_short(e)}") from None
            with ArchiveReader.open(path) as r:
                yield r

    def manifest(self, name: str) -> dict[str, Any]:
        """Two ranged reads: the footer, then the manifest frame."""
        import obstore

        key = self.key(name)
        try:
            size = int(self._call("cannot read", obstore.head, self.store, key)["size"])
        except FileNotFoundError:
            raise _missing(name, self.url) from None
        view: Any = _RangeFile(self, key, size)  # seek/read is all the reader needs
        return ArchiveReader(view, f"{self.url}/{key}").manifest

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A private temp path to write the archive to; uploaded when the writer is done."""
        import obstore

        self.check()
        if self.exists(name):
            raise StoreError(f"backup {name} already exists in {self.url}; choose another name")
        tmp = Path(tempfile.mkdtemp(prefix="kubecare-backup-"))
        try:
            path = tmp / self.key(name)
            yield path
            if self.exists(name):  # taken while the backup was being made
                raise StoreError(f"backup {name} already exists in {self.url}; choose another name")
            if path.stat().st_size <= _CREATE_LIMIT:
                try:  # one conditional PUT: never replaces an object of that name
                    self._call(
                        "cannot upload to",
                        obstore.put,
                        self.store,
                        self.key(name),
                        path.read_bytes(),
                        mode="create",
                    )
                except StoreError as e:
                    if "already exists" in str(e):
                        raise StoreError(
                            f"backup {name} already exists in {self.url}; choose another name"
                        ) from None
                    raise
            else:
                self._call("cannot upload to", obstore.put, self.store, self.key(name), path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def delete(self, name: str) -> None:
        import obstore

        if not self.exists(name):
            raise _missing(name, self.url)
        self._call("cannot delete from", obstore.delete, self.store, self.key(name))

    def pins(self) -> dict[str, str]:
        import obstore

        metas = self._call("cannot list", lambda: obstore.list(self.store).collect())
        out = {}
        for m in metas:
            path = str(m["path"])
            if path.endswith(PIN) and "/" not in path:
                raw = self._call("cannot read", obstore.get, self.store, path).bytes()
                out[path.removesuffix(PIN)] = _pin_why(bytes(raw))
        return out

    def pin(self, name: str, why: str) -> None:
        import obstore

        key = f"{check_name(name)}{PIN}"
        self._call("cannot pin in", obstore.put, self.store, key, _pin_body(why))

    def unpin(self, name: str) -> None:
        import obstore

        key = f"{check_name(name)}{PIN}"
        with contextlib.suppress(FileNotFoundError):
            self._call("cannot unpin in", obstore.delete, self.store, key)


class _RangeFile:
    """A read-only, seekable view of an S3 object by ranged GETs (enough to read the footer
    and the manifest frame)."""

    def __init__(self, store: S3Store, key: str, size: int) -> None:
        self._s, self._key, self._size, self._pos = store, key, size, 0

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, n: int = -1) -> bytes:
        import obstore

        end = self._size if n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = bytes(
            self._s._call(
                "cannot read",
                obstore.get_range,
                self._s.store,
                self._key,
                start=self._pos,
                end=end,
            )
        )
        self._pos += len(data)
        return data

    def close(self) -> None:
        pass


def _short(e: BaseException) -> str:
    """obstore's messages carry whole XML bodies: the first line, without the XML."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.split(" - Server returned", 1)[0] if "<?xml" in text else text
    code = re.search(r"<Code>([^<]+)</Code>", str(e))
    return f"{text[:300]} ({code.group(1)})" if code else text[:300]


def is_backup(store: Store, name: str) -> bool:
    """Whether ``name`` in ``store`` is a kubecare backup (a valid name, a readable manifest)."""
    if not _NAME.match(name):
        return False
    try:
        store.manifest(name)
    except KubecareError:
        return False
    return True
