"""The client side of a WebSocket (RFC 6455) on a connection the apiserver upgraded: exactly what
``exec`` needs — binary messages both ways, ping/pong, close — and no more (stdlib only, like
:mod:`kubecare.kube.http`).

Client frames are masked (the RFC requires it); the mask is applied with one big-integer XOR per
frame, which runs at memory speed in CPython, so a restore's upload is not bound by it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

from kubecare.kube.http import ProtocolError

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_FRAME = 1 << 20  # what one sent frame carries (a message is split into frames of it)
MAX_MESSAGE = 64 << 20  # a message the peer may send us (the apiserver sends ~32 KiB)


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer ``key`` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


def mask(data: bytes, key: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame."""
    key = os.urandom(4)
    n = len(payload)
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    return head + key + mask(payload, key)


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.closed = False
        self.close_code: int | None = None
        self.close_reason = ""

    async def send(self, payload: bytes, opcode: int = OP_BINARY) -> None:
        """One message (split into frames of at most :data:`MAX_FRAME`); waits while the
        peer's window is full, so a slow server slows the sender instead of filling memory."""
        if self.closed or self.writer.is_closing():
            raise ProtocolError("the stream is closed")
        if len(payload) <= MAX_FRAME:
            self.writer.write(frame(opcode, payload))
        else:
            for start in range(0, len(payload), MAX_FRAME):
                chunk = payload[start : start + MAX_FRAME]
                op = opcode if start == 0 else OP_CONT
                self.writer.write(frame(op, chunk, fin=start + MAX_FRAME >= len(payload)))
                await self.writer.drain()
        await self.writer.drain()

    async def _frame(self) -> tuple[bool, int, bytes]:
        try:
            b1, b2 = await self.reader.readexactly(2)
            n = b2 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            if n > MAX_MESSAGE:
                raise ProtocolError(f"websocket frame of {n} bytes: more than a peer ever sends")
            if b2 & 0x80:
                raise ProtocolError("the server masked a frame (RFC 6455 5.1: it must not)")
            if b1 & 0x70:
                raise ProtocolError("a websocket frame with reserved bits set (no extension)")
            opcode = b1 & 0x0F
            if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
                raise ProtocolError(f"a websocket frame of unknown opcode {opcode}")
            if opcode >= OP_CLOSE and (not b1 & 0x80 or n > 125):
                raise ProtocolError("a fragmented or oversized websocket control frame")
            payload = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, OSError):  # ssl.SSLError is an OSError too
            raise ProtocolError("the connection closed in the middle of the stream") from None
        return bool(b1 & 0x80), opcode, payload

    async def recv(self) -> bytes | None:
        """The next data message; None once the peer closed (``close_code`` says how)."""
        parts: list[bytes] = []
        size = 0
        while True:
            if self.closed:
                return None
            fin, opcode, payload = await self._frame()
            if opcode == OP_PING:
                self.writer.write(frame(OP_PONG, payload))
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                self.closed = True
                if len(payload) >= 2:
                    (self.close_code,) = struct.unpack("!H", payload[:2])
                    self.close_reason = payload[2:].decode("utf-8", "replace")
                try:  # answer the close, as the RFC asks; the peer may be gone already
                    self.writer.write(frame(OP_CLOSE, payload[:2]))
                    await self.writer.drain()
                except (ConnectionError, RuntimeError):
                    pass
                return None
            if (opcode == OP_CONT) != bool(parts):
                raise ProtocolError("a websocket continuation frame out of order")
            size += len(payload)
            if size > MAX_MESSAGE:
                raise ProtocolError("websocket message larger than a peer ever sends")
            parts.append(payload)
            if fin:
                return b"".join(parts) if len(parts) > 1 else parts[0]

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.writer.write(frame(OP_CLOSE, struct.pack("!H", code)))
                await self.writer.drain()
            except (ConnectionError, RuntimeError):
                pass
        self.abort()

    def abort(self) -> None:
        self.writer.transport.abort()
