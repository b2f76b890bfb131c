"""A small asyncio HTTP/1.1 client: exactly what talking to an apiserver needs, and no more.

Why not httpx: a one-shot command (``kubecare nodes``) spent about 0.12 s importing httpx2 and its
stack (httpcore2, h11, h2, anyio, http.cookiejar, email, ...) before sending a byte — a third of
its run time (docs/decisions.md has the measurement). An apiserver client needs far less: TLS
with a given context and server name, keep-alive connections, ``Content-Length`` and chunked
bodies, a streamed body for watches, an HTTP ``CONNECT`` tunnel for ``proxy-url``, timeouts, and a
credential hook that can retry once on 401. That is this module (stdlib only).

Errors: :class:`ConnectError` (refused, DNS, TLS handshake — the ``ssl`` error is chained),
:class:`TimeoutError_` subclasses for connect and read timeouts, :class:`ProtocolError` for a
response that is not HTTP or a connection cut mid-body; :class:`StatusError` from
:meth:`Response.raise_for_status`. :mod:`kubecare.kube.errors` maps them onto kubecare's tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

CRLF = b"\r\n"


class TransportError(Exception):
    """The request could not be completed on the wire."""


class ConnectError(TransportError):
    """No connection: refused, unresolvable, the proxy said no, or the TLS handshake failed."""


class ProtocolError(TransportError):
    """The peer broke HTTP: a malformed answer, or the connection closed mid-response."""


class TimeoutError_(TransportError):
    """An operation took longer than its timeout."""


class ConnectTimeout(TimeoutError_):
    """Connecting (TCP, proxy tunnel or TLS handshake) took longer than the connect timeout."""


class ReadTimeout(TimeoutError_):
    """The server stayed silent for longer than the read timeout."""


class StatusError(Exception):
    """Raised by :meth:`Response.raise_for_status` for a 4xx/5xx answer."""

    def __init__(self, response: Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass
class Response:
    """A complete answer."""

    status_code: int
    headers: dict[str, str]  # names lower-cased
    content: bytes = b""

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.content)

    def raise_for_status(self) -> None:
        if self.is_error:
            raise StatusError(self)


Hook = Callable[[str, str], Awaitable[None] | None]


class Credentials:
    """How requests are authenticated; :mod:`kubecare.kube.auth` provides the real one."""

    async def headers(self, *, refused: Mapping[str, str] | None = None) -> dict[str, str]:
        """The headers to send; ``refused``: the ones the server just answered 401 to (fetch a
        new credential unless another request already did)."""
        return {}

    def can_refresh(self) -> bool:
        return False


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    context: ssl.SSLContext | None = None  # the TLS material it was opened with

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


@dataclass
class StreamResponse:
    """An answer whose body is read as it arrives (watches)."""

    status_code: int
    headers: dict[str, str]
    _body: AsyncIterator[bytes]
    content: bytes = b""
    _buffer: bytearray = field(default_factory=bytearray)

    @property
    def is_error(self) -> bool:
        return self.status_code >= 400

    async def aread(self) -> bytes:
        """The whole (rest of the) body."""
        self.content = b"".join([bytes(self._buffer)] + [c async for c in self._body])
        self._buffer.clear()
        return self.content

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.content)

    def raise_for_status(self) -> None:
        if self.is_error:
            raise StatusError(Response(self.status_code, self.headers, self.content))

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            yield chunk

    async def aiter_lines(self) -> AsyncIterator[str]:
        """Lines of the body as they complete (watch events are one JSON document per line)."""
        async for chunk in self._body:
            self._buffer += chunk
            while (i := self._buffer.find(b"\n")) >= 0:
                line = bytes(self._buffer[:i])
                del self._buffer[: i + 1]
                yield line.decode()
        if self._buffer:
            yield bytes(self._buffer).decode()
            self._buffer.clear()


class HttpClient:
    """Keep-alive HTTP/1.1 to one origin (the apiserver), optionally through a CONNECT proxy."""

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        proxy: str | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        credentials: Credentials | None = None,
        max_connections: int = 100,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self.ssl_context = ssl_context if url.scheme == "https" else None
        if self.ssl_context is None and url.scheme == "https":
            self.ssl_context = ssl.create_default_context()
        self.server_hostname = server_hostname or self.host
        self.proxy = urlsplit(proxy) if proxy else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers: dict[str, str] = dict(headers or {})
        self.credentials = credentials or Credentials()
        self.hooks: list[Hook] = []  # called with (method, target) before every request sent
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    # -- connections ----------------------------------------------------------------------------
    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    async def _open(self) -> _Conn:
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.proxy is not None:
                    reader, writer = await self._tunnel()
                    if self.ssl_context is not None:
                        await writer.start_tls(
                            self.ssl_context, server_hostname=self.server_hostname
                        )
                else:
                    reader, writer = await asyncio.open_connection(
                        self.host,
                        self.port,
                        ssl=self.ssl_context,
                        server_hostname=self.server_hostname if self.ssl_context else None,
                        limit=1 << 20,
                    )
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {self.authority} timed out") from None
        except ssl.SSLError as e:
            raise ConnectError(f"TLS handshake with {self.authority} failed: {e}") from e
        except OSError as e:
            raise ConnectError(f"cannot connect to {self.authority}: {e.strerror or e}") from e
        return _Conn(reader, writer, context=self.ssl_context)

    async def _tunnel(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self.proxy is not None and self.proxy.hostname
        if self.proxy.scheme != "http":
            raise ConnectError(
                f"proxy-url {self.proxy.geturl()!r}: only http:// proxies are supported"
            )
        reader, writer = await asyncio.open_connection(
            self.proxy.hostname, self.proxy.port or 80, limit=1 << 20
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        target = f"{host}:{self.port}"
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await writer.drain()
        status, _ = await _read_head(reader)
        if status != 200:
            writer.close()
            raise ConnectError(
                f"proxy {self.proxy.geturl()} refused the tunnel to {target} (HTTP {status})"
            )
        return reader, writer

    async def _connection(self, *, fresh: bool = False) -> _Conn:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing() and not _readable(conn):
                conn.reused = True
                return conn
            conn.close()
        return await self._open()

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """New TLS material (a rotated client certificate): new connections use it."""
        self.ssl_context = context
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    def _release(self, conn: _Conn, reusable: bool) -> None:
        # A connection opened before a certificate rotation is not pooled again: the server
        # checks the client certificate of the connection, and the old one may have expired.
        if reusable and not self._closed and conn.context is self.ssl_context:
            self._idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    # -- requests -------------------------------------------------------------------------------
    def _target(self, path: str, params: Mapping[str, Any] | None) -> str:
        if any(c <= " " or c == "\x7f" for c in path):
            # A name from a file (an archive, a manifest) must never add a header or a second
            # request to the wire: refuse, rather than send, a path with spaces or controls.
            raise ValueError(f"refusing to request {path[:80]!r}: spaces or control characters")
        target = self.prefix + path
        if params:
            query = urlencode({k: v for k, v in params.items() if v is not None})
            target += ("&" if "?" in target else "?") + query
        return target

    def _head(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.authority}"]
        merged = {**self.headers, **headers}
        merged.setdefault("Accept", "application/json")
        for name, value in merged.items():
            lines.append(f"{name}: {value}")
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _exchange(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeout: float | None,
    ) -> tuple[_Conn, int, dict[str, str]]:
        """Send one request and read the answer's head, on a pooled or new connection."""
        for hook in self.hooks:
            result = hook(method, target)
            if result is not None:
                await result
        for attempt in (1, 2):
            # The retry is on a new connection: after a server restart every pooled one is dead.
            conn = await self._connection(fresh=attempt == 2)
            try:
                conn.writer.write(self._head(method, target, headers, body) + (body or b""))
                await conn.writer.drain()
                async with asyncio.timeout(timeout):
                    status, response_headers = await _read_head(conn.reader)
                return conn, status, response_headers
            except TimeoutError:
                conn.close()
                raise ReadTimeout(f"{method} {target}: no answer within {timeout:g}s") from None
            except (ProtocolError, OSError) as e:
                conn.close()
                # A kept-alive connection the server had already closed: one fresh retry (the
                # request never reached it). A new connection failing is a real error. Only a
                # read is retried so (as Go's transport replays only idempotent requests): a
                # write the server processed before the connection died would be sent twice,
                # and its second answer (409, AlreadyExists) would hide that the first landed.
                if conn.reused and attempt == 1 and _never_answered(e) and method in _REPLAYABLE:
                    continue
                if isinstance(e, ProtocolError):
                    raise
                raise ProtocolError(f"{method} {target}: connection lost ({e})") from e
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Response:
        """Send a request and read the whole answer (one retry with fresh credentials on 401)."""
        target = self._target(path, params)
        timeout = self.read_timeout if timeout is None else timeout
        refused: dict[str, str] | None = None
        async with self._slots:
            while True:
                auth = await self.credentials.headers(refused=refused)
                conn, status, response_headers = await self._exchange(
                    method, target, {**(headers or {}), **auth}, content, timeout
                )
                try:
                    async with asyncio.timeout(timeout):
                        data = b"".join(
                            [c async for c in _body(conn.reader, method, status, response_headers)]
                        )
                except TimeoutError:
                    conn.close()
                    raise ReadTimeout(
                        f"{method} {target}: body not complete within {timeout:g}s"
                    ) from None
                except BaseException:
                    conn.close()
                    raise
                self._release(conn, _keep_alive(response_headers))
                if status == 401 and refused is None and self.credentials.can_refresh():
                    refused = auth  # the credential expired early: a new one, once
                    continue
                return Response(status, response_headers, data)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
        read_timeout: float | None = None,
    ) -> AsyncIterator[StreamResponse]:
        """Send a request and hand its answer over as it arrives; every read waits at most
        ``read_timeout`` (None: forever)."""
        target = self._target(path, params)
        # A stream (a watch) lives for a minute: it must not hold one of the request slots, or
        # enough watches would stall every request behind them (lock renewals included).
        auth = await self.credentials.headers()
        conn, status, response_headers = await self._exchange(
            method, target, {**(headers or {}), **auth}, content, read_timeout or self.read_timeout
        )
        if status == 401 and self.credentials.can_refresh():
            # As for plain requests: an expired credential is fetched again, once.
            try:
                async with asyncio.timeout(self.read_timeout):
                    async for _ in _body(conn.reader, method, status, response_headers):
                        pass
            except BaseException:
                conn.close()
                raise
            self._release(conn, _keep_alive(response_headers))
            auth = await self.credentials.headers(refused=auth)
            conn, status, response_headers = await self._exchange(
                method,
                target,
                {**(headers or {}), **auth},
                content,
                read_timeout or self.read_timeout,
            )
        done = False

        async def body() -> AsyncIterator[bytes]:
            nonlocal done
            chunks = _body(conn.reader, method, status, response_headers)
            while True:
                try:
                    async with asyncio.timeout(read_timeout):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    raise ReadTimeout(f"{method} {target}: silent for {read_timeout:g}s") from None
                if chunk is None:
                    done = True
                    return
                yield chunk

        try:
            yield StreamResponse(status, response_headers, body())
        finally:
            self._release(conn, done and _keep_alive(response_headers))

    async def upgrade(
        self,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str],
        timeout: float | None = None,
    ) -> tuple[Response, asyncio.StreamReader | None, asyncio.StreamWriter | None]:
        """Ask for a protocol switch (a WebSocket, for exec). On 101 the connection is the
        caller's from then on (never pooled again): ``(response, reader, writer)``; any other
        answer is read whole and returned as ``(response, None, None)``."""
        target = self._target(path, params)
        timeout = self.read_timeout if timeout is None else timeout
        refused: dict[str, str] | None = None
        while True:
            auth = await self.credentials.headers(refused=refused)
            conn, status, response_headers = await self._exchange(
                "GET", target, {**headers, **auth}, None, timeout
            )
            if status == 101:
                return Response(status, response_headers, b""), conn.reader, conn.writer
            try:
                async with asyncio.timeout(timeout):
                    data = b"".join(
                        [c async for c in _body(conn.reader, "GET", status, response_headers)]
                    )
            except TimeoutError:
                conn.close()
                raise ReadTimeout(f"GET {target}: body not complete within {timeout:g}s") from None
            except BaseException:
                conn.close()
                raise
            self._release(conn, _keep_alive(response_headers))
            if status == 401 and refused is None and self.credentials.can_refresh():
                refused = auth  # as request(): an expired credential is fetched again, once
                continue
            return Response(status, response_headers, data), None, None


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        raise ProtocolError(
            "the server closed the connection without answering"
            if not e.partial
            else "truncated response head"
        ) from None
    except asyncio.LimitOverrunError:
        raise ProtocolError("response head too large") from None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.1 answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key == "warning" and key in headers:
            # The apiserver sends one Warning header per warning (never folded): keep them all,
            # a newline apart (a header value cannot contain one).
            headers[key] += "\n" + value.strip()
        else:
            headers[key] = value.strip()
    return int(parts[1]), headers


async def _body(
    reader: asyncio.StreamReader, method: str, status: int, headers: Mapping[str, str]
) -> AsyncIterator[bytes]:
    """The body's bytes, de-chunked, as they arrive."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return
    try:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await reader.readuntil(CRLF)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await reader.readuntil(CRLF)) != CRLF:  # trailers
                        pass
                    return
                yield await reader.readexactly(size)
                await reader.readexactly(2)
        elif "content-length" in headers:
            remaining = int(headers["content-length"])
            while remaining > 0:
                chunk = await reader.read(min(remaining, 1 << 20))
                if not chunk:
                    raise ProtocolError("the connection closed before the body was complete")
                remaining -= len(chunk)
                yield chunk
        else:
            while chunk := await reader.read(1 << 20):
                yield chunk
    except (asyncio.IncompleteReadError, ConnectionError) as e:
        raise ProtocolError(f"the connection closed mid-response ({type(e).__name__})") from None
    except ValueError:
        raise ProtocolError("malformed chunked body") from None


def _keep_alive(headers: Mapping[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"


_REPLAYABLE = frozenset({"GET", "HEAD", "OPTIONS"})


def _readable(conn: _Conn) -> bool:
    """Whether an idle connection has something to read: the server's FIN or TLS close_notify
    (nothing else arrives on an idle HTTP/1.1 connection). The event loop notices that on its
    own, but only once it runs: a caller that kept it busy (a blocking call in a coroutine) would
    otherwise send a write down a connection the server closed long ago, and a write is not
    replayed. Go's transport checks the same before reusing a connection."""
    import select

    sock = conn.writer.get_extra_info("socket")
    if sock is None:
        return False
    try:
        poller = select.poll()  # not select(): it cannot take descriptors past 1023
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


def _never_answered(e: BaseException) -> bool:
    """Whether a failure on a reused connection means the server never saw the request."""
    if isinstance(e, ProtocolError):
        return "without answering" in str(e)
    return isinstance(e, ConnectionError)
