"""Watches: a stream of (type, object) events that survives disconnects and expired versions.

Start from a list's resourceVersion (:meth:`Kube.list_all`). When the server says the version is
too old (410 Gone), the watch calls ``relist`` to get a fresh snapshot and continues from it, so
callers never miss a deletion: anything absent from the new snapshot is gone.

A dropped or cut connection, or a 5xx, is retried from the last version seen (with back-off, five
times in a row at most). The server ends each watch after ``ClientOptions.watch_timeout`` seconds
and a connection that stays silent for longer than that (plus slack: the server sends bookmarks)
is treated as dead and re-opened, so a half-open TCP connection cannot hang a caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from kubecare.errors import KubecareError
from kubecare.kube.client import JSON, Kube


@dataclass(frozen=True)
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, or RELISTED (a fresh snapshot after 410 Gone)
    object: JSON


Relist = Callable[[], Awaitable[tuple[list[JSON], str]]]


async def watch(
    kube: Kube,
    path: str,
    *,
    resource_version: str,
    params: dict[str, Any] | None = None,
    relist: Relist | None = None,
    what: str | None = None,
    on_connection: Callable[[bool], None] | None = None,
) -> AsyncIterator[WatchEvent]:
    """Yield events for ``path`` after ``resource_version`` until the caller stops iterating.

    ``on_connection(True)`` is called when a watch stream is open, ``on_connection(False)`` when
    it broke (before a retry or a relist): between the two the caller's view is current."""
    connected = on_connection or (lambda _: None)
    version = resource_version
    failures = 0
    while True:
        query = dict(params or {})
        server_timeout = max(1, int(kube.options.watch_timeout))
        query.update(
            {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(server_timeout)}
        )
        if version:
            query["resourceVersion"] = version
        gone = False
        try:
            with kube.mapped(what or f"watch {path}"):
                silence = server_timeout + max(5.0, server_timeout / 4)
                async with kube.http.stream(
                    "GET", path, params=query, read_timeout=silence
                ) as resp:
                    if resp.is_error:
                        await resp.aread()  # so the error mapping can read the Status body
                    resp.raise_for_status()
                    failures = 0
                    connected(True)
                    async for line in resp.aiter_lines():
                        if not line:
                            continue
                        try:
                            event = orjson.loads(line)
                            kind, obj = event.get("type"), event.get("object") or {}
                            if not isinstance(obj, dict):
                                raise TypeError(type(obj).__name__)
                        except (orjson.JSONDecodeError, AttributeError, TypeError):
                            # Not a watch event (a proxy's page, a cut line): the stream is
                            # not to be trusted from here; open it again from the last version.
                            raise KubecareError(
                                f"{what or path}: the watch sent something that is not an event"
                            ) from None
                        if kind == "ERROR":
                            gone = obj.get("code") == 410
                            if not gone:
                                raise KubecareError(
                                    f"{what or path}: watch error: {obj.get('message', obj)}"
                                )
                            break
                        version = (obj.get("metadata") or {}).get("resourceVersion", version)
                        if kind == "BOOKMARK":
                            continue
                        yield WatchEvent(kind, obj)
        except KubecareError as e:  # includes Unreachable: a dropped connection is retried
            connected(False)
            if getattr(e, "status", None) == 410:
                gone = True
            else:
                failures += 1
                if failures > 5:
                    raise
                await asyncio.sleep(min(0.2 * 2**failures, 5))
        if gone:
            connected(False)
            if relist is None:
                version = ""
                continue
            items, version = await relist()
            yield WatchEvent("RELISTED", {"items": items})
