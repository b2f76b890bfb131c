"""``exec`` in a pod's container over the apiserver, the way ``kubectl exec`` does it since
Kubernetes 1.30: a WebSocket speaking ``v5.channel.k8s.io`` (client-go's
tools/remotecommand/websocket.go), which the apiserver translates to the kubelet's stream.

Each message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the error channel (a
metav1.Status once the command ended: Success, or NonZeroExitCode with the code in its
causes), 255 a close of one stream (v5's addition: how stdin reaches EOF, so ``tar -x`` ends).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

import orjson

from kubecare.errors import ApiError, OperationFailed, Unreachable
from kubecare.kube.client import Kube
from kubecare.kube.websocket import WebSocket, accept_for, new_key

PROTOCOL = "v5.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
STDERR_KEPT = 64 << 10  # the tail of stderr kept for the error message
# stdin is sent in messages of this size: the apiserver closes the stream on a message of 1 MiB
# (seen on 1.37), and 32 KiB is what client-go's own copy loop sends
STDIN_MESSAGE = 32 << 10


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stderr: bytes
    message: str = ""  # the error channel's message when the command failed

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def exit_status(raw: bytes) -> tuple[int, str]:
    """The exit code and message of the error channel's Status (client-go's errorDecoderV4)."""
    try:
        status = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return -1, raw.decode("utf-8", "replace").strip()
    if not isinstance(status, dict):
        return -1, raw.decode("utf-8", "replace").strip()[:200] or "the command failed"
    if status.get("status") == "Success":
        return 0, ""
    message = str(status.get("message") or "")
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or []:
            if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message", "")), message
                except ValueError:
                    break
    return -1, message or "the command failed"


def exec_path(namespace: str, pod: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"


async def exec_stream(
    kube: Kube,
    namespace: str,
    pod: str,
    command: Sequence[str],
    *,
    container: str | None = None,
    stdin: AsyncIterator[bytes] | None = None,
    on_stdout: Callable[[bytes], Awaitable[None] | None] | None = None,
    idle_timeout: float = 60.0,
) -> ExecResult:
    """Run ``command`` in the pod; stdout goes to ``on_stdout`` as it arrives (it may be a
    coroutine: the stream waits for it, so a slow consumer slows the pod's writes instead of
    filling memory), stdin is sent from ``stdin`` and then closed. The command's failure is the
    result's exit code; the exec itself failing (no such pod, forbidden, a cut stream) raises."""
    what = f'exec in pod "{namespace}/{pod}"'
    params: list[tuple[str, str]] = [("command", c) for c in command]
    params += [("stdout", "true"), ("stderr", "true"), ("stdin", "true" if stdin else "false")]
    if container:
        params.append(("container", container))
    from urllib.parse import urlencode

    key = new_key()
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Protocol": PROTOCOL,
        "Accept": "*/*",  # the default application/json gets 406 from the exec handler
    }
    path = exec_path(namespace, pod) + "?" + urlencode(params)
    with kube.mapped(what):
        response, reader, writer = await kube.http.upgrade(path, headers=headers)
        if reader is None or writer is None:
            response.raise_for_status()
            raise ApiError(f"{what}: the apiserver did not switch to a stream", status=200)
    ws = WebSocket(reader, writer)
    accept = response.headers.get("sec-websocket-accept", "")
    chosen = response.headers.get("sec-websocket-protocol", "")
    if accept != accept_for(key) or chosen != PROTOCOL:
        ws.abort()
        raise ApiError(
            f"{what}: the apiserver answered the stream with protocol {chosen or 'none'!r}; "
            f"kubecare needs {PROTOCOL} (Kubernetes 1.30 or newer)",
            status=101,
        )
    try:
        return await _run(ws, what, stdin, on_stdout, idle_timeout)
    finally:
        ws.abort()


async def _run(
    ws: WebSocket,
    what: str,
    stdin: AsyncIterator[bytes] | None,
    on_stdout: Callable[[bytes], Awaitable[None] | None] | None,
    idle_timeout: float,
) -> ExecResult:
    """The stream, until the error channel's status; ``idle_timeout`` is the longest either
    direction may go without progress (a restore's upload gets no output back)."""
    import time

    from kubecare.kube.http import TransportError

    stderr = bytearray()
    status: tuple[int, str] | None = None
    sender: asyncio.Task[None] | None = None
    progress = time.monotonic()
    sent_all = stdin is None

    async def send() -> None:
        nonlocal progress, sent_all
        assert stdin is not None
        try:
            async for chunk in stdin:
                view = memoryview(chunk)
                for start in range(0, len(view), STDIN_MESSAGE):
                    await ws.send(b"\0" + view[start : start + STDIN_MESSAGE])
                    progress = time.monotonic()
            await ws.send(bytes([CLOSE, STDIN]))
        except OSError as e:  # a reset or broken pipe under drain(): the stream's failure
            raise TransportError(f"sending failed ({e})") from None
        sent_all = True

    if stdin is not None:
        sender = asyncio.create_task(send())
    receiving: asyncio.Task[bytes | None] | None = None
    try:
        while True:
            if sender is None or sender.done():
                failed = sender.exception() if sender is not None else None
                if failed is not None:
                    if isinstance(failed, TransportError) and status is not None:
                        break  # the command ended (and said how) before its input was all sent
                    # stdin's own failure (reading the archive) stops the stream, named as is
                    raise failed
                # nothing to send (any more): wait for the next message itself, no task per
                # message (a backup's stream is tens of thousands of them)
                try:
                    async with asyncio.timeout(idle_timeout):
                        if receiving is None:
                            message = await ws.recv()
                        else:  # the one the sender's last wait started
                            message = await receiving
                            receiving = None
                except TimeoutError:
                    raise OperationFailed(
                        f"{what}: nothing came for {idle_timeout:g}s; the command or the node "
                        "is stuck"
                    ) from None
            else:
                receiving = receiving or asyncio.create_task(ws.recv())
                await asyncio.wait({receiving, sender}, timeout=1.0,
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                if not receiving.done():
                    if time.monotonic() - progress > idle_timeout:
                        raise OperationFailed(
                            f"{what}: no progress for {idle_timeout:g}s; the command or the "
                            "node is stuck"
                        )
                    continue
                message, receiving = receiving.result(), None
            progress = time.monotonic()
            if message is None:
                break
            if not message:
                continue
            channel, data = message[0], message[1:]
            if channel == STDOUT and data and on_stdout is not None:
                done = on_stdout(data)
                if done is not None:
                    await done
            elif channel == STDERR:
                stderr += data
                del stderr[:-STDERR_KEPT]
            elif channel == ERROR and data:
                status = exit_status(data)
    except (TransportError, OSError) as e:
        raise Unreachable(f"{what}: the stream was cut ({e}); run it again") from None
    finally:
        for task in (receiving, sender):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    if status is None:
        # The kubelet ends every v4/v5 stream with a Status on the error channel; a stream
        # that closed without one (however cleanly) was cut, and what came is not all of it.
        raise Unreachable(
            f"{what}: the stream closed ({ws.close_code or 'no close code'}) before the command's "
            "exit status came; run it again"
        )
    if not sent_all and status[0] == 0:
        raise Unreachable(f"{what}: the command ended before all of its input was sent")
    return ExecResult(status[0], bytes(stderr), status[1])
