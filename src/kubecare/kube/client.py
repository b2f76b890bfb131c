"""The one way kubecare talks to an apiserver.

:class:`Kube` is a thin JSON layer on one authenticated HTTP client (:mod:`kubecare.kube.http`,
built by :mod:`kubecare.kube.auth` from the kubeconfig): requests with plain dicts decoded by orjson, bulk
lists paged with ``limit``/``continue``. Discovery and watches build on it
(:mod:`~kubecare.kube.discovery`, :mod:`~kubecare.kube.watch`). Every request goes through
:func:`kubecare.kube.errors.mapped`, so callers only ever see :mod:`kubecare.errors`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, cast

import orjson

from kubecare.errors import ApiError, Conflict
from kubecare.kube.auth import build_client
from kubecare.kube.config import ClientOptions, Connection, load_connection
from kubecare.kube.errors import mapped
from kubecare.kube.http import HttpClient

JSON = dict[str, Any]
#: A list of metadata only (no spec, no status): the apiserver's own slim answer.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


class Kube:
    """An authenticated connection to one cluster (one kubeconfig context)."""

    def __init__(self, options: ClientOptions | None = None) -> None:
        self.options = options or ClientOptions()
        self.connection: Connection = load_connection(self.options)
        self.http: HttpClient = build_client(
            self.connection,
            connect_timeout=self.options.connect_timeout,
            request_timeout=self.options.request_timeout,
        )
        self.requests = 0  # every HTTP request sent (benchmarks compare it with kubectl's)
        self.http.hooks.append(self._count)

    def _count(self, _method: str, _target: str) -> None:
        self.requests += 1

    @property
    def server(self) -> str:
        """The apiserver URL of the selected context."""
        return self.connection.server

    @property
    def namespace(self) -> str:
        """The namespace from -n, else the context's, else ``default``."""
        return self.connection.namespace

    def mapped(self, what: str) -> Any:
        """Context manager: client failures inside become kubecare errors naming ``what``."""
        return mapped(what, self.server)

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.http.aclose()

    async def get_json(
        self,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        what: str | None = None,
        accept: str = "application/json",
    ) -> JSON:
        """GET ``path`` and decode the JSON body."""
        with self.mapped(what or path):
            resp = await self.http.get(path, params=params, headers={"Accept": accept})
            resp.raise_for_status()
            return self._decode(resp.content, what or path)

    async def get_with_warnings(
        self, path: str, *, params: dict[str, Any] | None = None, what: str | None = None
    ) -> tuple[JSON, list[str]]:
        """GET ``path``; the decoded body and the texts of the apiserver's ``Warning`` headers
        (deprecated APIs are answered with one)."""
        from kubecare.versions.deprecations import parse_warnings

        with self.mapped(what or path):
            resp = await self.http.get(path, params=params, headers={"Accept": "application/json"})
            resp.raise_for_status()
            warnings = parse_warnings((resp.headers.get("warning") or "").split("\n"))
            return self._decode(resp.content, what or path), warnings

    def at(self, endpoint: str) -> Kube:
        """A client for one apiserver instance (``host:port``) with this client's credentials:
        each instance of an HA control plane has its own version and its own metrics."""
        import dataclasses

        endpoint = dict(self.options.addresses).get(endpoint, endpoint)
        other = Kube.__new__(Kube)
        other.options = self.options
        other.connection = dataclasses.replace(self.connection, server=f"https://{endpoint}")
        other.http = build_client(
            other.connection,
            connect_timeout=self.options.connect_timeout,
            request_timeout=self.options.request_timeout,
        )
        other.requests = 0
        other.http.hooks.append(other._count)
        return other

    async def get_text(self, path: str, *, what: str | None = None) -> str:
        """GET a plain-text endpoint (``/metrics``)."""
        with self.mapped(what or path):
            resp = await self.http.get(path, headers={"Accept": "text/plain"})
            resp.raise_for_status()
            return resp.text

    async def get_bytes(
        self, path: str, *, params: dict[str, Any] | None = None, what: str | None = None
    ) -> bytes:
        """GET ``path`` and return the body undecoded (for callers that decode elsewhere)."""
        with self.mapped(what or path):
            resp = await self.http.get(path, params=params, headers={"Accept": "application/json"})
            resp.raise_for_status()
            return resp.content

    async def request_json(
        self,
        method: str,
        path: str,
        *,
        body: JSON | None = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
        what: str | None = None,
    ) -> JSON:
        """Send ``body`` with ``method`` (POST, PUT, PATCH, DELETE) and decode the JSON answer."""
        with self.mapped(what or path):
            resp = await self.http.request(
                method,
                path,
                params=params,
                content=orjson.dumps(body) if body is not None else None,
                headers={"Content-Type": content_type},
            )
            resp.raise_for_status()
            return self._decode(resp.content, what or path) if resp.content else {}

    def _decode(self, content: bytes, what: str) -> JSON:
        try:
            doc = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise ApiError(
                f"{what}: the server at {self.server} answered with something that is not the "
                "Kubernetes API (not JSON); check the kubeconfig server address and any proxy",
                status=200,
            ) from None
        if not isinstance(doc, dict):
            raise ApiError(
                f"{what}: unexpected answer from {self.server} (not a JSON object)", status=200
            )
        return cast(JSON, doc)

    async def version(self) -> JSON:
        """The server's ``/version`` (gitVersion, major, minor, ...)."""
        return await self.get_json("/version", what="apiserver /version")

    async def _pages(
        self, path: str, params: dict[str, Any] | None, chunk_size: int, what: str | None
    ) -> AsyncIterator[tuple[JSON, bool]]:
        """Pages of a list, ``chunk_size`` items per request, each with a flag that is True when
        the list started over (its continue token expired: 410 Gone), so callers can reset."""
        token: str | None = None
        restarts = 0
        fresh = False
        while True:
            query = dict(params or {})
            if chunk_size > 0:
                query["limit"] = chunk_size
            if token:
                query["continue"] = token
            try:
                page = await self.get_json(path, params=query, what=what or path)
            except Conflict as e:
                if e.status != 410 or not token or restarts >= 3:
                    raise
                restarts, token, fresh = restarts + 1, None, True
                continue
            yield page, fresh
            fresh = False
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return

    async def list_all(
        self,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        chunk_size: int = 500,
        what: str | None = None,
    ) -> tuple[list[JSON], str]:
        """Every item of a list and the list's resourceVersion (to start a watch from).

        Pages of one list share the first page's snapshot, so its resourceVersion covers them all.
        """
        items: list[JSON] = []
        version = ""
        async for page, fresh in self._pages(path, params, chunk_size, what):
            if fresh:
                items, version = [], ""
            version = version or (page.get("metadata") or {}).get("resourceVersion", "")
            items.extend(page.get("items") or [])
        return items, version

    async def list_objects(
        self, path: str, *, params: dict[str, Any] | None = None, what: str | None = None
    ) -> list[JSON]:
        """Every item of a list (paged), when the list's resourceVersion is not needed."""
        return (await self.list_all(path, params=params, what=what))[0]

    async def list_items(
        self,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        chunk_size: int = 500,
        what: str | None = None,
    ) -> AsyncIterator[JSON]:
        """Yield every item of a list as pages arrive (memory stays flat).

        If the list starts over mid-way (410 Gone), items already yielded are skipped by UID, so
        callers see each object once.
        """
        seen: set[str] = set()
        async for page, _ in self._pages(path, params, chunk_size, what):
            for item in page.get("items") or []:
                uid = (item.get("metadata") or {}).get("uid")
                if uid:
                    if uid in seen:
                        continue
                    seen.add(uid)
                yield item

    async def list_metadata(
        self, path: str, *, chunk_size: int = 1000, what: str | None = None
    ) -> AsyncIterator[JSON]:
        """Yield the ``metadata`` of every item of a list, paged, without their bodies."""
        token: str | None = None
        while True:
            query: dict[str, Any] = {"limit": chunk_size}
            if token:
                query["continue"] = token
            page = await self.get_json(path, params=query, accept=METADATA_LIST, what=what)
            for item in page.get("items") or []:
                yield item.get("metadata") or {}
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return
