"""One page of a list, turned into archive bytes: parse, keep or skip each object, clean it,
serialize it, encrypt Secrets, tar and compress — the CPU work of a backup.

A pure function of picklable inputs, so ``create`` can run it in worker processes (the other
core works while this one waits on the network: Python runs one thread at a time, and parsing
and writing 50,000 objects is most of a backup's own time). Each page becomes one zstd frame;
frames concatenate, so a type's pages are one stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
from dataclasses import dataclass, field
from typing import Any

import orjson

from .archive import _padding, _tar_header, member_path
from .rules import Filters, clean, has_skip_rules, skip_reason

_LEVEL = 3
_recipients: dict[tuple[str, ...], Any] = {}


@dataclass(frozen=True)
class PageSpec:
    """What a worker needs to know about the type (everything picklable)."""

    gr: str
    group: str
    resource: str
    api_version: str
    kind: str
    namespaced: bool
    filters: Filters
    recipients: tuple[str, ...]  # age recipients for Secrets; () for none
    mtime: int


@dataclass
class PageResult:
    frame: bytes  # one zstd frame: the page's tar members
    sums: bytes  # sha256sum lines of those members
    count: int
    size: int
    skipped: dict[str, int] = field(default_factory=dict)
    resource_version: str = ""
    token: str = ""  # the continue token: the next page, if any


# A list's own metadata (ListMeta: resourceVersion, continue, remainingItemCount — flat) sits
# first in built-in lists (Go field order) and last in custom resource lists (sorted keys).
# Anchored at the document's start or end, these cannot match inside an item.
_HEAD = re.compile(rb'^\{"kind":"[A-Za-z0-9]+","apiVersion":"[^"]+","metadata":(\{[^{}]*\})')
_TAIL = re.compile(rb'\],"kind":"[A-Za-z0-9]+","metadata":(\{[^{}]*\})\}\s*$')


_MEMBER_NAME = re.compile(r"[^/\x00-\x1f\x7f]+")


def list_meta(page: bytes) -> tuple[str, str]:
    """(resourceVersion, continue) of a list page without parsing its items; falls back to a
    full parse when the page is not laid out as the apiserver writes lists."""
    m = _HEAD.match(page[:4096]) or _TAIL.search(page[-4096:])
    try:
        doc = orjson.loads(m.group(1)) if m else orjson.loads(page)
    except orjson.JSONDecodeError:
        return "", ""
    meta = (doc if m else doc.get("metadata")) if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        return "", ""
    return str(meta.get("resourceVersion") or ""), str(meta.get("continue") or "")


def worker_init(parent: int) -> None:
    """Worker initializer: Ctrl-C is the parent's to handle (no traceback per worker), and a
    worker dies with its parent — killed with -9, the parent cannot shut the pool down, and a
    forked worker holds the queue's pipe open itself, so it would wait forever."""
    import ctypes
    import os

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such call
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _encrypt(recipients: tuple[str, ...], data: bytes) -> bytes:
    import pyrage

    parsed = _recipients.get(recipients)
    if parsed is None:
        from .secrets import recipients as parse

        parsed = _recipients[recipients] = parse(recipients)
    return bytes(pyrage.encrypt(data, parsed))


def process_page(spec: PageSpec, page: bytes) -> PageResult:
    import zstandard

    from ..errors import ApiError

    try:
        doc = orjson.loads(page)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("items") or [], list):
        raise ApiError(f"list {spec.gr}: the answer is not a Kubernetes list", status=200)
    meta = doc.get("metadata") or {}
    out = PageResult(b"", b"", 0, 0)
    out.resource_version = str(meta.get("resourceVersion") or "")
    out.token = str(meta.get("continue") or "")
    parts: list[bytes] = []
    sums: list[str] = []
    encrypt = spec.gr == "secrets" and bool(spec.recipients)
    by_namespace = spec.filters.by_namespace
    ruled = spec.filters.default_excludes and has_skip_rules(spec.gr)
    for obj in doc.get("items") or []:
        if by_namespace and not spec.filters.object_ok(spec.gr, obj):
            continue
        reason = skip_reason(spec.gr, obj) if ruled else None
        if reason:
            out.skipped[reason] = out.skipped.get(reason, 0) + 1
            continue
        m = obj.get("metadata") or {}
        if not _MEMBER_NAME.fullmatch(str(m.get("name") or "")):
            # A name with control characters cannot be a file name in the archive (verify
            # refuses those): left out, and said so, rather than an archive that fails to restore.
            why = "a name no archive member can hold (control characters)"
            out.skipped[why] = out.skipped.get(why, 0) + 1
            continue
        body = {"apiVersion": spec.api_version, "kind": spec.kind}
        body.update(clean(obj))  # list items of built-in types carry neither
        body["apiVersion"], body["kind"] = spec.api_version, spec.kind
        data = orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        if encrypt:
            data = _encrypt(spec.recipients, data)
        path = member_path(
            spec.group,
            spec.resource,
            str(m.get("namespace") or "") if spec.namespaced else "",
            str(m.get("name") or ""),
            encrypted=encrypt,
        )
        parts += (_tar_header(path, len(data), spec.mtime), data, _padding(len(data)))
        sums.append(f"{hashlib.sha256(data).hexdigest()}  {path}\n")
        out.count += 1
        out.size += len(data)
    if parts:
        compressor = zstandard.ZstdCompressor(level=_LEVEL, write_checksum=True)
        out.frame = compressor.compress(b"".join(parts))
    out.sums = "".join(sums).encode()
    return out
