"""The sandbox's network: every control-plane node a machine of its own on 192.0.2.0/24.

kubeadm refuses a loopback advertise address (``unable to select an IP from lo network
interface``), and its manifests listen on fixed ports (2379, 2380, 6443, 10257, 10259) that two
nodes on one machine cannot share. So, as on real machines, each control-plane node runs in a
network namespace of its own with ``lo`` and an ``eth0`` holding its address (192.0.2.11, .12,
...; RFC 5737's TEST-NET-1, never routed anywhere), and kubeadm's manifests run unchanged.

A *switch* namespace joins them: a bridge ``br0`` with 192.0.2.10, one veth per node. In a
sandbox with several control planes, 192.0.2.10:6443 is the cluster's ``controlPlaneEndpoint``
(the load balancer in front of the apiservers, run by the static pod runner); kwok's workers,
which have no network of their own, are reached there too. Nothing in either namespace has a
route off the bridge, and the machine's own network is never touched: no interface, address or
route is added to it.

The host reaches the nodes through forwarded loopback ports, served by the runner (one per port
of each node that a client on the host needs: the apiserver, etcd's client and metrics ports,
the controller-manager's and the scheduler's), and the cluster endpoint through one more — so
kubectl, kubecare and the tests talk to ``https://127.0.0.1:PORT`` as before. The certificates
name 127.0.0.1 too, so TLS verifies through the forwards.

Each namespace lives as long as a *holder* process in it (``unshare --net sleep infinity``),
recorded in state.json and stopped by ``sandbox down``: when it and the components in the
namespace have exited, the kernel removes the namespace with its interfaces — nothing is
mounted, nothing named, nothing left behind. Creating namespaces takes root (CAP_SYS_ADMIN and
CAP_NET_ADMIN); without it ``sandbox up`` says so before starting anything.

Pure planning (:func:`switch_script`, :func:`node_script`) and a few
system calls (:func:`create`, :class:`Netns`).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kubecare.errors import SandboxError

SWITCH_IP = "192.0.2.10"
PREFIX = 24
MAX_CONTROL_PLANES = 40
#: the ports of a control-plane node a client on the host needs (kubeadm's defaults)
FORWARDED = (6443, 2379, 2381, 10257, 10259)
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def node_ip(index: int) -> str:
    """The address of the ``index``-th control-plane node (0-based)."""
    if not 0 <= index < MAX_CONTROL_PLANES:
        raise SandboxError(f"a sandbox has at most {MAX_CONTROL_PLANES} control-plane nodes")
    return f"192.0.2.{11 + index}"


def switch_script(nodes: Sequence[tuple[int, int]]) -> str:
    """``ip -batch`` for the switch namespace: the bridge and one veth per node (index, holder
    pid); each veth's other end moves into its node's namespace as ``eth0``."""
    lines = [
        "link set lo up",
        "link add br0 type bridge",
        f"addr add {SWITCH_IP}/{PREFIX} dev br0",
        "link set br0 up",
    ]
    for index, pid in nodes:
        lines += [
            f"link add veth{index} type veth peer name eth0 netns {pid}",
            f"link set veth{index} master br0",
            f"link set veth{index} up",
        ]
    return "\n".join(lines) + "\n"


def node_script(ip: str) -> str:
    """``ip -batch`` for a node's namespace. The default route goes to the switch (which routes
    nowhere): kubeadm picks a node's address from the interface of its default route."""
    return (
        "\n".join(
            [
                "link set lo up",
                f"addr add {ip}/{PREFIX} dev eth0",
                "link set eth0 up",
                f"route add default via {SWITCH_IP}",
            ]
        )
        + "\n"
    )


def check_privileges() -> None:
    """Network namespaces need root and util-linux/iproute2; say so before anything starts."""
    if os.geteuid() != 0:
        raise SandboxError(
            "kubecare sandbox up needs root: each control-plane node runs in a network "
            "namespace of its own with a 192.0.2.0/24 address (kubeadm refuses loopback); "
            "run it as root (sudo -E kubecare sandbox up)"
        )
    missing = [t for t in ("unshare", "nsenter", "ip") if shutil.which(t) is None]
    if missing:
        raise SandboxError(
            f"{', '.join(missing)} not found: install util-linux and iproute2 "
            "(apt-get install util-linux iproute2)"
        )


def holder_argv() -> list[str]:
    return [shutil.which("unshare") or "unshare", "--net", "--", "sleep", "infinity"]


def holders_in(directory: Path) -> list[int]:
    """Pids of namespace holders started in ``directory`` (a sandbox's state dir: its holders'
    cwd), found without state.json."""
    want = {str(directory), str(directory.resolve())}
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "cmdline").read_bytes() != b"sleep\0infinity\0":
                continue
            if os.readlink(proc / "cwd") in want:
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def ns_path(pid: int) -> str:
    return f"/proc/{pid}/ns/net"


def inode(pid: int) -> str:
    """``net:[4026532305]``: which namespace ``pid`` is in (gone: "")."""
    try:
        return os.readlink(ns_path(pid))
    except OSError:
        return ""


def run_script(pid: int, script: str) -> None:
    """Run ``ip -batch`` inside the namespace of ``pid``."""
    argv = ["nsenter", f"--net={ns_path(pid)}", "--", "ip", "-batch", "-"]
    try:
        done = subprocess.run(argv, input=script.encode(), capture_output=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise SandboxError("setting up the sandbox's network: `ip -batch` hung for 30s") from None
    if done.returncode != 0:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise SandboxError(
            f"setting up the sandbox's network failed: {why[-1] if why else done.returncode} "
            "(needs the kernel's veth and bridge drivers)"
        )


def wait_holder(pid: int, timeout: float = 5.0) -> None:
    """A holder is ready once it runs in a namespace other than ours (unshare has run)."""
    import time

    ours = inode(os.getpid())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine = inode(pid)
        try:
            started = Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep")
        except OSError:
            break  # it exited (unshare refused)
        if mine and mine != ours and started:
            return
        if not mine:
            break
        time.sleep(0.01)
    raise SandboxError(
        f"could not create a network namespace: `unshare --net` (pid {pid}) did not start; "
        "its output is in the sandbox's logs/network.log"
    )


def create(nodes: Sequence[tuple[int, str]], spawn: Callable[[str], int]) -> dict[str, int]:
    """The switch and one namespace per node ((index, name)); ``spawn(name)`` starts a holder and
    returns its pid. Returns the holders' pids, "switch" first."""
    pids = {"switch": spawn("switch")}
    for _, name in nodes:
        pids[name] = spawn(name)
    for pid in pids.values():
        wait_holder(pid)
    run_script(pids["switch"], switch_script([(i, pids[n]) for i, n in nodes]))
    for index, name in nodes:
        run_script(pids[name], node_script(node_ip(index)))
    return pids


_libc: Any = None


def enter(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (setns(2)). Sockets it
    makes from then on belong to that namespace; the rest of the process is unaffected."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns(fd, path)
    finally:
        os.close(fd)


def _setns(fd: int, what: str) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


def _close_late(made: asyncio.Future[socket.socket]) -> None:
    if not made.cancelled() and made.exception() is None:
        made.result().close()


class Netns:
    """Sockets made in another network namespace, for this process's asyncio loop: a small
    thread pool whose threads live in the namespace creates them (socket(2) takes the calling
    thread's namespace); connecting and reading go on in the loop. The namespace is held open
    (a file descriptor) for as long as this object lives, holder or not; :attr:`path` names it
    for child processes (``nsenter --net=PATH``)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self.path = f"/proc/{os.getpid()}/fd/{self._fd}"

        def pool(workers: int, name: str) -> ThreadPoolExecutor:
            return ThreadPoolExecutor(
                max_workers=workers,
                thread_name_prefix=name,
                initializer=_setns,
                initargs=(self._fd, path),
            )

        # Blocking calls (probes: up to their 15 s timeouts) and socket creation (an instant
        # each, on every forwarded connection) in pools of their own: slow probes never starve
        # the forwards.
        self._calls = pool(8, "netns-call")
        self._sockets = pool(1, "netns-socket")

    def close(self) -> None:
        for p in (self._calls, self._sockets):
            p.shutdown(wait=False, cancel_futures=True)
        os.close(self._fd)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread of the namespace (e.g. a blocking HTTP probe)."""
        return await asyncio.get_running_loop().run_in_executor(self._calls, fn, *args)

    async def _socket(self) -> socket.socket:
        loop = asyncio.get_running_loop()
        made = loop.run_in_executor(
            self._sockets, socket.socket, socket.AF_INET, socket.SOCK_STREAM
        )
        try:
            return await asyncio.shield(made)
        except asyncio.CancelledError:
            # the thread still makes it: close it when it comes
            made.add_done_callback(_close_late)
            raise

    async def open_connection(
        self, host: str, port: int, timeout: float = 2.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        sock = await self._socket()
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    async def listen_socket(self, host: str, port: int) -> socket.socket:
        def make() -> socket.socket:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
            s.listen(128)
            s.setblocking(False)
            return s

        return await asyncio.get_running_loop().run_in_executor(self._sockets, make)
