"""A fault-injecting reverse proxy in front of the sandbox's real kube-apiserver (tests only).

It terminates TLS with the apiserver's own serving certificate (valid for 127.0.0.1), forwards
every request to the real apiserver over TLS as the sandbox admin, and streams the answer back
(watches included). By rule it can instead answer chosen requests with an error status, delay
them, cut the connection before answering, cut a streamed answer half-way, hold a stream open
without sending anything (a half-open connection), or rewrite a response body.

    async with FaultProxy(sandbox) as proxy:
        proxy.add(Rule("POST", r"/eviction$", status=409, times=3))
        kube = Kube(ClientOptions(kubeconfig=str(proxy.kubeconfig)))

The client side is parsed with h11 (a test dependency); the upstream side is kubecare's own HTTP
client, which streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import yaml

from kubecare.kube.http import HttpClient
from kubecare.sandbox import Sandbox

Transform = Callable[[bytes], bytes]


@dataclass
class Rule:
    """What to do with requests whose method and path (with query) match.

    Exactly one of: ``status`` (answer it, never forwarded), ``cut`` (close the connection without
    answering), ``cut_after`` (forward, stream that many body bytes back, then close), ``hang``
    (forward, send the headers, then stay silent with the connection open), ``drop_answer``
    (forward, let the server finish — a write is committed — then close without sending a byte
    of its answer: what a client sees when the apiserver dies between commit and reply),
    ``transform`` (forward, rewrite the whole body), or only ``delay`` (forward after sleeping).
    """

    method: str | None
    path: str
    status: int | None = None
    message: str = "injected by the fault proxy"
    reason: str = ""
    retry_after: float | None = None
    delay: float = 0.0
    cut: bool = False
    cut_after: int | None = None
    hang: bool = False
    drop_answer: bool = False
    transform: Transform | None = None
    times: int | None = None  # how many matching requests to act on; None: all
    when: Callable[[str, str], bool] | None = None  # extra condition on (method, target)
    hits: int = 0
    seen: list[float] = field(default_factory=list)  # monotonic time of every hit

    def matches(self, method: str, target: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method != method:
            return False
        if not re.search(self.path, target):
            return False
        return self.when is None or self.when(method, target)


@dataclass(frozen=True)
class Logged:
    method: str
    target: str
    status: int
    at: float
    user_agent: str


class FaultProxy:
    """The proxy; ``kubeconfig`` points a client at it (same CA, admin user)."""

    def __init__(self, sandbox: Sandbox, host: str = "127.0.0.1") -> None:
        self.sandbox = sandbox
        self.host = host  # another loopback address (127.0.0.2) is not in the certificate
        self.upstream = sandbox.load().apiserver
        self.rules: list[Rule] = []
        self.log: list[Logged] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._client: HttpClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.kubeconfig = sandbox.dir / f"proxy-{id(self)}.kubeconfig"

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        pki = self.sandbox.pki
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving = pki.pair("apiserver")
        server_ctx.load_cert_chain(str(serving.cert), str(serving.key))
        server_ctx.set_alpn_protocols(["http/1.1"])
        admin = pki.pair("admin")
        upstream_ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
        upstream_ctx.load_cert_chain(str(admin.cert), str(admin.key))
        self._client = HttpClient(self.upstream, ssl_context=upstream_ctx, read_timeout=30)
        self._server = await asyncio.start_server(self._connection, self.host, 0, ssl=server_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        doc = yaml.safe_load(self.sandbox.kubeconfig.read_text())
        doc["clusters"][0]["cluster"]["server"] = f"https://{self.host}:{self.port}"
        self.kubeconfig.write_text(yaml.safe_dump(doc))
        self.kubeconfig.chmod(0o600)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(BaseException):
                await t
        if self._client:
            await self._client.aclose()
            self._client = None  # stopped once by a test, and again by its fixture
        self.kubeconfig.unlink(missing_ok=True)

    def count(self, method: str | None, path: str) -> int:
        """Requests seen (answered or not) whose method and target match."""
        return sum(
            1
            for r in self.log
            if (method is None or r.method == method) and re.search(path, r.target)
        )

    # -- serving ----------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                if any(k.lower() == b"upgrade" for k, _ in request.headers):
                    await self._switch(conn, reader, writer, request)
                    return
                keep = await self._handle(conn, writer, request, body)
                if not keep or conn.our_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        body = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _handle(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> bool:
        method, target = request.method.decode(), request.target.decode()
        headers = [(k.decode(), v.decode()) for k, v in request.headers]
        agent = next((v for k, v in headers if k.lower() == "user-agent"), "")
        rule = next((r for r in self.rules if r.matches(method, target)), None)
        if rule is not None:
            rule.hits += 1
            rule.seen.append(time.monotonic())
            if rule.delay:
                await asyncio.sleep(rule.delay)
            if rule.cut:
                self.log.append(Logged(method, target, 0, time.monotonic(), agent))
                writer.transport.abort()
                return False
            if rule.status is not None:
                self.log.append(Logged(method, target, rule.status, time.monotonic(), agent))
                await self._answer(conn, writer, rule)
                return True
        assert self._client is not None
        forward = {
            k: v
            for k, v in headers
            if k.lower() not in ("host", "authorization", "content-length", "connection")
        }
        async with self._client.stream(
            method, target, headers=forward, content=body, read_timeout=None
        ) as response:
            self.log.append(Logged(method, target, response.status_code, time.monotonic(), agent))
            if rule is not None and rule.drop_answer:
                await response.aread()  # the server's work is done
                writer.transport.abort()
                return False
            return await self._relay(conn, writer, rule, response)

    async def _switch(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> None:
        """A protocol switch (exec's WebSocket): upgraded upstream too, then bytes piped both
        ways; a ``cut_after`` rule closes both sides after that many bytes from the server."""
        method, target = request.method.decode(), request.target.decode()
        headers = {k.decode(): v.decode() for k, v in request.headers}
        agent = headers.get("user-agent", headers.get("User-Agent", ""))
        rule = next((r for r in self.rules if r.matches(method, target)), None)
        if rule is not None:
            rule.hits += 1
            rule.seen.append(time.monotonic())
            if rule.cut:
                self.log.append(Logged(method, target, 0, time.monotonic(), agent))
                writer.transport.abort()
                return
        forward = {k: v for k, v in headers.items() if k.lower() not in ("host", "authorization")}
        assert self._client is not None
        response, up_reader, up_writer = await self._client.upgrade(target, headers=forward)
        self.log.append(Logged(method, target, response.status_code, time.monotonic(), agent))
        if up_reader is None or up_writer is None:
            head = [(k, v) for k, v in response.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")]  # fmt: skip
            head.append(("Content-Length", str(len(response.content))))
            await self._send(writer, conn, h11.Response(status_code=response.status_code,
                                                        headers=head))  # fmt: skip
            await self._send(writer, conn, h11.Data(data=response.content))
            await self._send(writer, conn, h11.EndOfMessage())
            return
        lines = ["HTTP/1.1 101 Switching Protocols"]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        early = conn.trailing_data[0]

        async def up() -> None:
            if early:
                up_writer.write(early)
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def down() -> None:
            sent = 0
            while data := await up_reader.read(65536):
                cut = rule.cut_after if rule is not None else None
                if cut is not None and sent + len(data) > cut:
                    writer.write(data[: max(0, cut - sent)])
                    return
                sent += len(data)
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            up_writer.transport.abort()
            writer.transport.abort()

    async def _relay(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, rule: Rule | None, response: Any
    ) -> bool:
        out_headers = [
            (k, v)
            for k, v in response.headers.items()
            if k.lower()
            not in ("content-length", "transfer-encoding", "connection", "content-encoding")
        ]
        if rule is not None and rule.transform is not None:
            data = rule.transform(await response.aread())
            out_headers.append(("Content-Length", str(len(data))))
            await self._send(
                writer,
                conn,
                h11.Response(status_code=response.status_code, headers=out_headers),
            )
            await self._send(writer, conn, h11.Data(data=data))
            await self._send(writer, conn, h11.EndOfMessage())
            return True
        await self._send(
            writer, conn, h11.Response(status_code=response.status_code, headers=out_headers)
        )
        if rule is not None and rule.hang:
            await asyncio.Event().wait()  # half-open: silent until the proxy stops
        sent = 0
        async for chunk in response.aiter_raw():
            if (
                rule is not None
                and rule.cut_after is not None
                and sent + len(chunk) > rule.cut_after
            ):
                head = chunk[: max(0, rule.cut_after - sent)]
                if head:
                    await self._send(writer, conn, h11.Data(data=head))
                writer.transport.abort()
                return False
            sent += len(chunk)
            await self._send(writer, conn, h11.Data(data=chunk))
        await self._send(writer, conn, h11.EndOfMessage())
        return True

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, rule: Rule) -> None:
        status = rule.status or 500
        reasons = {409: "Conflict", 429: "TooManyRequests", 404: "NotFound", 403: "Forbidden"}
        doc: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": rule.message,
            "reason": rule.reason or reasons.get(status, "InternalError"),
            "code": status,
        }
        data = json.dumps(doc).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        if rule.retry_after is not None:
            headers.append(("Retry-After", f"{rule.retry_after:g}"))
        await self._send(writer, conn, h11.Response(status_code=status, headers=headers))
        await self._send(writer, conn, h11.Data(data=data))
        await self._send(writer, conn, h11.EndOfMessage())

    async def _send(self, writer: asyncio.StreamWriter, conn: h11.Connection, event: Any) -> None:
        data = conn.send(event)
        if data:
            writer.write(data)
            await writer.drain()


def strip_eviction(body: bytes) -> bytes:
    """A discovery answer (aggregated or legacy) without the pods/eviction subresource."""
    doc = json.loads(body)
    for group in doc.get("items") or []:
        for version in group.get("versions") or []:
            for res in version.get("resources") or []:
                res["subresources"] = [
                    s for s in res.get("subresources") or [] if s.get("subresource") != "eviction"
                ]
    if "resources" in doc:
        doc["resources"] = [r for r in doc["resources"] if r.get("name") != "pods/eviction"]
    return json.dumps(doc).encode()
