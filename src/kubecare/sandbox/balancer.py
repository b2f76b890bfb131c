"""A small TCP load balancer for an HA sandbox's apiservers (what kube-vip or HAProxy is on a real
kubeadm HA cluster): clients connect to one address; each connection goes to the next apiserver
that accepts it. TLS passes through untouched — every apiserver's certificate is valid for
127.0.0.1 — so clients still authenticate to a real kube-apiserver. It runs inside the sandbox's
runner process (a few lines of asyncio; no dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Sequence


class Balancer:
    """Round-robin over ``backends`` (ports on 127.0.0.1), skipping those that refuse."""

    def __init__(self, port: int, backends: Callable[[], Sequence[int]]) -> None:
        self.port = port
        self.backends = backends
        self._server: asyncio.Server | None = None
        self._turn = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        ports = list(self.backends())
        if not ports:
            return None
        start = next(self._turn) % len(ports)
        for port in ports[start:] + ports[:start]:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(2):
                    return await asyncio.open_connection("127.0.0.1", port)
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
