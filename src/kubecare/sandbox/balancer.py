"""A small TCP forwarder and load balancer, inside the sandbox's runner process.

It serves the host's forwarded loopback ports (each to one port of one node, see
:mod:`kubecare.sandbox.network`) and, with several control planes, the cluster endpoint: what
kube-vip or HAProxy is on a real kubeadm HA cluster — clients connect to one address; each
connection goes to the next apiserver that accepts it. TLS passes through untouched (every
certificate names 127.0.0.1 and the node's address), so clients still authenticate to a real
kube-apiserver. A few lines of asyncio; no dependency."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Awaitable, Callable, Sequence

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Dial = Callable[[], Awaitable[Streams]]


class Balancer:
    """Round-robin over ``backends`` (ways to connect), skipping those that refuse."""

    def __init__(self, backends: Callable[[], Sequence[Dial]]) -> None:
        self.backends = backends
        self._servers: list[asyncio.Server] = []
        self._turn = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sock: socket.socket) -> None:
        """Accept on ``sock`` (bound and listening, in whatever namespace it was made in)."""
        self._servers.append(await asyncio.start_server(self._client, sock=sock))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self) -> Streams | None:
        dials = list(self.backends())
        if not dials:
            return None
        start = next(self._turn) % len(dials)
        for dial in dials[start:] + dials[:start]:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2):
                    return await dial()
        return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                return
            up_reader, up_writer = upstream

            async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                    if w.can_write_eof():  # pass the half-close on; the other way may go on
                        w.write_eof()

            try:
                await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            finally:
                with contextlib.suppress(Exception):
                    up_writer.close()
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


def loopback_socket(port: int) -> socket.socket:
    """A listening socket on the host's 127.0.0.1:``port``."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(128)
    s.setblocking(False)
    return s
