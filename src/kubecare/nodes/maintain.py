"""The OS-maintenance flow: drain → run the work → wait until the node is Ready again → uncordon.

If the work fails or the node does not come back in time, the node is left cordoned and the error
says exactly that: a half-maintained node must not receive pods. The maintenance lock is held for
the whole flow; if it is lost, the flow stops at the next safe point (never mid-command: the
command is left to finish, and the node is not uncordoned).

The command's output never reaches kubecare's stdout (which carries results, e.g. ``-o json``): it
is streamed line by line as ``command-output`` events, which the CLI prints on stderr, and its
last lines are kept in the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kubecare.errors import OperationFailed, UsageError
from kubecare.events import Event, EventSink, ignore
from kubecare.kube import JSON, Kube
from kubecare.kube.lock import MaintenanceLock, maintenance_lock
from kubecare.nodes.cordon import DryRun, set_unschedulable
from kubecare.nodes.drain import NodeReport, drain_nodes
from kubecare.nodes.drain_options import DrainOptions
from kubecare.nodes.inventory import ready_status


@dataclass(frozen=True)
class MaintainOptions:
    """What to run, where, and how long to wait for the node to come back."""

    command: tuple[str, ...]
    ssh: str | None = None  # user@host: run the command there (asyncssh) instead of locally
    expect_reboot: bool = False  # also require a new boot ID before uncordoning
    ready_timeout: float = 600.0
    command_timeout: float | None = None
    # None: ~/.ssh/known_hosts, as ssh does (host keys are always checked)
    known_hosts: str | None = None
    identity: str | None = None  # private key file; None: the agent and ~/.ssh/id_*


@dataclass
class MaintainReport:
    node: str
    drain: NodeReport | None = None
    exit_code: int | None = None
    boot_id_before: str = ""
    boot_id_after: str = ""
    seconds: float = 0.0
    uncordoned: bool = False
    # cordoned before maintain began (by someone, for a reason): left cordoned at the end
    left_cordoned: bool = False
    output_tail: list[str] = field(default_factory=list)  # the command's last lines


OUTPUT_TAIL = 50
OUTPUT_GRACE = 2.0  # seconds to read what is left once a local command has exited


def boot_id(node: JSON) -> str:
    return str(((node.get("status") or {}).get("nodeInfo") or {}).get("bootID") or "")


async def run_local(
    command: Sequence[str],
    env: dict[str, str],
    timeout: float | None,
    on_line: Callable[[str], None],
) -> int:
    """Run ``command`` here with the node's name in $NODE; each line of its output (stdout and
    stderr together) goes to ``on_line``, never to kubecare's stdout."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            env={**os.environ, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout stops its children too
        )
    except OSError as e:
        raise OperationFailed(f"cannot run {shlex.join(command)}: {e.strerror or e}") from None
    assert proc.stdout is not None
    stdout = proc.stdout

    async def pump() -> None:
        # Chunks, not readline(): a line longer than the stream's buffer must not abort it.
        pending = b""
        while chunk := await stdout.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                on_line(raw.decode(errors="replace"))
        if pending:
            on_line(pending.decode(errors="replace"))

    reader = asyncio.create_task(pump())
    finished = False
    try:
        async with asyncio.timeout(timeout):
            # Not proc.wait(): before Python 3.12 it also waits until every pipe is closed,
            # which a process left in the background may never do. The child watcher sets
            # returncode as soon as the command itself exits.
            while proc.returncode is None:  # noqa: ASYNC110 (no event to wait on, see above)
                await asyncio.sleep(0.05)
            code = proc.returncode
        finished = True
        # The command has exited; what it wrote arrives at once, unless something it started in
        # the background still holds the pipe: then stop reading instead of waiting for ever.
        try:
            await asyncio.wait_for(asyncio.shield(reader), OUTPUT_GRACE)
        except TimeoutError:
            on_line(
                "(kubecare: the command exited; a process it left in the background still holds "
                "its output, which is not read further)"
            )
        return code
    except TimeoutError:
        raise OperationFailed(
            f"command {shlex.join(command)} did not finish within {timeout:g}s"
        ) from None
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        if not finished:  # timed out or interrupted: stop the command and everything it started
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()


async def run_ssh(
    target: str,
    command: Sequence[str],
    env: dict[str, str],
    timeout: float | None,
    known_hosts: str | None = None,
    identity: str | None = None,
    expect_reboot: bool = False,
) -> tuple[int, str]:
    """Run ``command`` on ``user@host[:port]`` over SSH (keys from the agent / ~/.ssh).

    Returns the exit status and the command's output (stdout then stderr).
    """
    import asyncssh

    user, _, hostport = target.rpartition("@")
    host, _, port = hostport.partition(":")
    if not host:
        raise UsageError(f"--ssh {target!r}: expected user@host or user@host:port")
    line = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(command)
    try:
        async with (
            asyncio.timeout(timeout),
            asyncssh.connect(
                host,
                port=int(port) if port else 22,
                username=user or None,
                known_hosts=known_hosts or (),
                client_keys=[identity] if identity else (),
            ) as conn,
        ):
            result = await conn.run(line, check=False)
    except TimeoutError:
        raise OperationFailed(f"command on {target} did not finish within {timeout:g}s") from None
    except (OSError, asyncssh.Error) as e:
        raise OperationFailed(f"ssh to {target} failed: {e}") from None
    output = _text(result.stdout) + _text(result.stderr)
    if result.exit_status is None:  # killed by a signal, or the connection dropped mid-command
        if expect_reboot:
            return 0, output  # the reboot it was asked for cut the session
        by_signal = f" (signal {result.exit_signal[0]})" if result.exit_signal else ""
        raise OperationFailed(
            f"command on {target} ended without an exit status{by_signal}; if it reboots the node, "
            "pass --expect-reboot"
        )
    return int(result.exit_status), output


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


async def wait_back(
    kube: Kube, node: str, *, old_boot: str, expect_reboot: bool, timeout: float
) -> str:
    """Wait until the node is Ready (and, if asked, has a new boot ID); return the boot ID."""
    deadline = time.monotonic() + timeout
    while True:
        obj = await kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
        ready = ready_status(obj) == "True"
        current = boot_id(obj)
        if ready and (not expect_reboot or (current and current != old_boot)):
            return current
        if time.monotonic() > deadline:
            why = "is not Ready" if not ready else "did not reboot (boot ID unchanged)"
            raise OperationFailed(
                f'node "{node}" {why} after {timeout:g}s; it stays cordoned: check it, then run kubecare uncordon {node}'
            )
        await asyncio.sleep(1.0)


async def maintain(
    kube: Kube,
    node: str,
    opts: MaintainOptions,
    drain_opts: DrainOptions,
    *,
    on_event: EventSink = ignore,
    report: MaintainReport | None = None,
) -> MaintainReport:
    """Drain ``node``, run the command, wait for the node, uncordon it."""
    if not opts.command:
        raise UsageError(
            "give the maintenance command after --, e.g. kubecare maintain NODE -- ./upgrade.sh"
        )
    if drain_opts.dry_run is not DryRun.NONE:
        raise UsageError(
            "maintain does not support --dry-run; use kubecare drain NODE --plan to preview"
        )
    report = report or MaintainReport(node)
    async with contextlib.AsyncExitStack() as stack:
        # The whole flow holds the maintenance lock, not just the drain: the node is out of
        # service until it is uncordoned.
        lock = None
        if drain_opts.lock:
            lock = await stack.enter_async_context(
                maintenance_lock(
                    kube,
                    node,
                    namespace=drain_opts.lock_namespace,
                    slots=drain_opts.max_concurrent_drains,
                    ttl=drain_opts.lock_ttl,
                    timeout=drain_opts.lock_timeout,
                    on_event=on_event,
                )
            )
        return await _maintain_locked(kube, node, opts, drain_opts, on_event, report, lock)


def _check(lock: MaintenanceLock | None) -> None:
    if lock is not None and lock.lost.is_set():
        raise lock.lost_error()


async def _maintain_locked(
    kube: Kube,
    node: str,
    opts: MaintainOptions,
    drain_opts: DrainOptions,
    on_event: EventSink,
    report: MaintainReport,
    lock: MaintenanceLock | None,
) -> MaintainReport:
    t0 = time.monotonic()
    before = await kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
    report.boot_id_before = boot_id(before)
    # Someone's cordon stays (kured and kubecare upgrade do the same); a cordon of an earlier
    # maintain run that stopped short is kubecare's own, told by its annotation.
    was_cordoned = bool((before.get("spec") or {}).get("unschedulable"))
    ours = MAINTAIN_CORDON in ((before.get("metadata") or {}).get("annotations") or {})
    if not was_cordoned:
        await _mark_cordon(kube, node, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    reports: list[NodeReport] = []
    try:
        await drain_nodes(kube, [node], drain_opts, on_event=on_event, reports=reports, lock=lock)
    finally:
        report.drain = reports[0] if reports else None
    _check(lock)
    where = f"on {opts.ssh}" if opts.ssh else "locally"
    on_event(
        Event("command", f"running {shlex.join(opts.command)} {where} (NODE={node})", node=node)
    )
    env = {"NODE": node}
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL)

    def line(text: str) -> None:
        tail.append(text)
        on_event(Event("command-output", text, node=node))

    try:
        if opts.ssh:
            code, output = await run_ssh(
                opts.ssh,
                opts.command,
                env,
                opts.command_timeout,
                opts.known_hosts,
                opts.identity,
                expect_reboot=opts.expect_reboot,
            )
            for text in output.splitlines():
                line(text)
        else:
            code = await run_local(opts.command, env, opts.command_timeout, line)
    finally:
        report.output_tail = list(tail)
    report.exit_code = code
    _check(lock)
    if code != 0:
        raise OperationFailed(
            f'maintenance command exited {code}; node "{node}" stays cordoned: fix it, then run kubecare uncordon {node}'
        )
    on_event(
        Event(
            "waiting",
            f"waiting for node/{node} to be Ready"
            + (" with a new boot ID" if opts.expect_reboot else ""),
            node=node,
        )
    )
    report.boot_id_after = await wait_back(
        kube,
        node,
        old_boot=report.boot_id_before,
        expect_reboot=opts.expect_reboot,
        timeout=opts.ready_timeout,
    )
    _check(lock)
    report.seconds = time.monotonic() - t0
    if was_cordoned and not ours:
        report.left_cordoned = True
        on_event(
            Event(
                "left-cordoned",
                f"node/{node} stays cordoned: it was cordoned before maintain began "
                f"(kubecare uncordon {node} when it should take pods again)",
                node=node,
            )
        )
        return report
    await set_unschedulable(kube, node, False)
    await _mark_cordon(kube, node, None)
    report.uncordoned = True
    on_event(Event("uncordoned", f"node/{node} uncordoned", node=node))
    return report


#: On a node maintain cordoned itself, until it uncordons it: a rerun after a crash can tell
#: its own cordon from one that was there before it.
MAINTAIN_CORDON = "kubecare.io/cordoned-by-maintain"


async def _mark_cordon(kube: Kube, node: str, value: str | None) -> None:
    await kube.request_json(
        "PATCH",
        f"/api/v1/nodes/{node}",
        body={"metadata": {"annotations": {MAINTAIN_CORDON: value}}},
        content_type="application/merge-patch+json",
        what=f'node "{node}"',
    )
