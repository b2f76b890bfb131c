"""``fleet run``: one kubecare command per cluster, as kubectl-foreach runs kubectl.

Each cluster's command is the real ``kubecare`` in a child process, given that cluster's own
``--kubeconfig`` and ``--context`` (nothing is changed in the user's kubeconfig); ``{context}``
in its arguments becomes the cluster's name. At most ``parallel`` run at once; with
``fail_fast`` no new one starts after a failure (those running finish). Each line the children
print reaches ``on_line`` with its cluster, as it comes.
"""

from __future__ import annotations

import asyncio
import atexit
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import UsageError
from .fleetfile import FleetCluster

OnLine = Callable[[str, str, str], None]  # (cluster, "out" | "err", line without newline)

#: Commands that never change a cluster (the first words of the command line). Anything else
#: asks before it runs on more than one cluster. `backup create` and `etcd snapshot save` only
#: read the cluster (without --volumes: that starts helper pods on the nodes).
READ_ONLY: tuple[tuple[str, ...], ...] = (
    ("version",),
    ("nodes",),
    ("outage",),
    ("risk",),
    ("versions",),
    ("completion",),
    ("etcd", "status"),
    ("etcd", "members"),
    ("etcd", "health"),
    ("etcd", "alarm", "list"),
    ("etcd", "snapshot", "status"),
    ("etcd", "snapshot", "save"),
    ("etcd", "snapshot", "ls"),
    ("etcd", "snapshot", "get"),
    ("etcd", "snapshot", "diff"),
    ("certs", "check"),
    ("backup", "create"),
    ("backup", "list"),
    ("backup", "describe"),
    ("backup", "verify"),
    ("backup", "diff"),
    ("backup", "schedule"),
    ("upgrade", "plan"),
    ("upgrade", "status"),
)

#: Flags that would aim a cluster's command somewhere else than that cluster: the command's
#: own value would win over the one fleet run gives it.
TARGET_FLAGS = ("--context", "--kubeconfig", "--sandbox", "--server", "--endpoints")

#: Flags that make a read-only command change something.
WRITING_FLAGS = ("--volumes", "--apply")


def is_read_only(command: Sequence[str]) -> bool:
    """Whether the command line only reads: a read-only command, or one asked for its plan
    (``--plan``; ``--dry-run``, bare or ``client``/``server``: kubectl's ``none`` is a real
    run). Only kubecare's own arguments count, not a command line after its ``--``."""
    own = list(command[: command.index("--")] if "--" in command else command)
    flags = [a.split("=", 1)[0] for a in own if a.startswith("-")]
    if any(f in WRITING_FLAGS for f in flags):
        return False
    words = tuple(a for a in own if not a.startswith("-"))
    if any(words[: len(ro)] == ro for ro in READ_ONLY):
        return True
    if "--plan" in own:
        return True
    for i, a in enumerate(own):
        if a.startswith("--dry-run="):
            return a.split("=", 1)[1] in ("client", "server")
        if a == "--dry-run":
            value = own[i + 1] if i + 1 < len(own) else ""
            return value in ("client", "server") or value.startswith("-") or value == ""
    return False


def check_command(command: Sequence[str]) -> None:
    """Refuse what would not run on each cluster as that cluster."""
    own = command[: list(command).index("--")] if "--" in command else command
    for a in own:
        flag = a.split("=", 1)[0]
        if flag in TARGET_FLAGS:
            raise UsageError(
                f"{flag} in the command would send every cluster's run to the same place; "
                "fleet run gives each cluster its own --kubeconfig and --context (choose the "
                "clusters with patterns, --fleet or -l)"
            )


@dataclass
class RunResult:
    context: str
    code: int | None  # None: not started (fail-fast)
    seconds: float = 0.0
    error: str = ""  # the last line the command wrote to stderr, when it failed
    stdout: str = ""  # kept only when asked (merged structured output)

    @property
    def ok(self) -> bool:
        return self.code == 0


def argv_for(cluster: FleetCluster, command: Sequence[str]) -> list[str]:
    argv = [sys.executable, "-m", "kubecare.cli.app"]
    if cluster.kubeconfig:
        argv += ["--kubeconfig", cluster.kubeconfig]
    argv += ["--context", cluster.context]
    return argv + [a.replace("{context}", cluster.name) for a in command]


async def _pump(
    stream: asyncio.StreamReader, name: str, which: str, on_line: OnLine, keep: list[str]
) -> None:
    """Every line the child writes, as it comes; by chunks, so a line of any length (a big
    JSON document on one line) is whole, never an overrun."""
    pending = b""
    while True:
        chunk = await stream.read(1 << 16)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace")
            keep.append(line)
            on_line(name, which, line)
    if pending:
        line = pending.decode(errors="replace")
        keep.append(line)
        on_line(name, which, line)


#: After Ctrl-C (or any reason the parent stops) each child gets one SIGINT and this long to
#: stop as it does on an interrupt (a drain says what it did and leaves the node cordoned)
#: before SIGTERM. The children run in their own sessions, so the terminal's Ctrl-C reaches
#: only the parent, and each child gets exactly one SIGINT (a second one stops its own
#: clean-up at once).
INTERRUPT_GRACE = 30.0


async def _stop(proc: asyncio.subprocess.Process) -> None:
    import contextlib
    import signal

    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(proc.wait(), INTERRUPT_GRACE)
        return
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


#: Children still running. A second Ctrl-C ends the event loop during the grace above, with
#: the stops still pending; the children, in their own sessions, would run on unwatched. At
#: exit each one left gets SIGTERM, as the second Ctrl-C would have stopped it at once.
_LIVE: set[int] = set()


def _stop_left() -> None:
    import contextlib
    import os
    import signal

    for pid in list(_LIVE):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    _LIVE.clear()


atexit.register(_stop_left)


def _quiet(_cluster: str, _which: str, _line: str) -> None:
    """Lines not shown as they come (the merged output is printed at the end)."""


async def run_one(
    cluster: FleetCluster, command: Sequence[str], on_line: OnLine, *, keep_stdout: bool
) -> RunResult:
    """``kubecare COMMAND`` on ``cluster``; a child that cannot start is exit code 127."""
    t0 = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv_for(cluster, command),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:
        return RunResult(cluster.name, 127, 0.0, f"could not start kubecare: {e}")
    _LIVE.add(proc.pid)
    out: list[str] = []
    err: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    try:
        await asyncio.gather(
            _pump(proc.stdout, cluster.name, "out", _quiet if keep_stdout else on_line, out),
            _pump(proc.stderr, cluster.name, "err", on_line, err),
        )
        code = await proc.wait()
    except BaseException:
        await asyncio.shield(_stop(proc))
        raise
    finally:
        if proc.returncode is not None:  # else the exit hook still has it to stop
            _LIVE.discard(proc.pid)
    error = next((line for line in reversed(err) if line.strip()), "") if code else ""
    return RunResult(
        cluster.name,
        code,
        time.monotonic() - t0,
        error.removeprefix("error: "),
        "\n".join(out) if keep_stdout else "",
    )


async def run_fleet(
    clusters: Sequence[FleetCluster],
    command: Sequence[str],
    on_line: OnLine,
    *,
    parallel: int = 5,
    fail_fast: bool = False,
    keep_stdout: bool = False,
) -> list[RunResult]:
    """Run ``command`` on every cluster; the results in the fleet's order."""
    slots = asyncio.Semaphore(max(1, parallel))
    failed = asyncio.Event()

    async def one(c: FleetCluster) -> RunResult:
        async with slots:
            if fail_fast and failed.is_set():
                return RunResult(c.name, None, 0.0, "not run: an earlier cluster failed")
            res = await run_one(c, command, on_line, keep_stdout=keep_stdout)
            if not res.ok:
                failed.set()
            return res

    return list(await asyncio.gather(*(one(c) for c in clusters)))
