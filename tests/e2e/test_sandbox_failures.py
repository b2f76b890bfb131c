"""The sandbox fails loudly and cleanly: named component, its log tail, nothing left running."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kubecare.errors import SandboxError
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions, network, process
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION

pytestmark = pytest.mark.e2e

CRASHING_SCHEDULER = f"""#!/bin/sh
case "$1" in --version) echo "Kubernetes v{DEFAULT_KUBE_VERSION}"; exit 0;; esac
echo "E1126 simulated crash: cannot load scheduler configuration" >&2
exit 1
"""


def sandbox_processes(sb: Sandbox) -> list[int]:
    """Pids of live processes whose command line mentions this sandbox's state dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(sb.dir) in cmdline and process.is_running(int(proc.name)):
            pids.append(int(proc.name))
    return pids


async def test_a_component_that_dies_on_start_is_named_with_its_log_and_nothing_is_left(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "kube-scheduler"
    fake.parent.mkdir()
    fake.write_text(CRASHING_SCHEDULER)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("KUBECARE_BIN_DIR", str(fake.parent))  # the runner inherits it
    sb = Sandbox(f"crash-{uuid.uuid4().hex[:6]}")
    try:
        with pytest.raises(SandboxError) as info:
            await sb.up(SandboxOptions(workers=1, crash_backoff=1))
        assert "kube-scheduler exited during start-up" in info.value.message
        assert "simulated crash" in info.value.message
        assert sandbox_processes(sb) == []  # the runner, etcd and kube-apiserver were stopped
        # The state that is left is reported as stale, not reused or overwritten.
        with pytest.raises(SandboxError, match="stale state"):
            await sb.up(SandboxOptions(workers=1))
    finally:
        sb.down()
    assert not sb.dir.exists()


async def test_a_taken_port_shows_as_a_crash_loop_with_the_reason(sandbox: Sandbox) -> None:
    await asyncio.to_thread(sandbox.stop_component, "kube-scheduler")
    state = sandbox.load()
    port = state.control_planes[0]["ports"]["scheduler"]
    netns = sandbox.netns(state, "control-plane")
    assert netns is not None

    def squat() -> socket.socket:
        # in the node's own network, where the scheduler binds 127.0.0.1:10259
        network.enter(netns)
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        return s

    try:
        with ThreadPoolExecutor(1) as pool, pool.submit(squat).result():
            with pytest.raises(SandboxError, match="kube-scheduler did not start") as info:
                await sandbox.start_component("kube-scheduler", timeout=8)
            assert "exited with code" in info.value.message
            status = {c.name: c for c in sandbox.status()[1]}["kube-scheduler-control-plane"]
            assert not status.running and status.reason == "CrashLoopBackOff"
            assert "address already in use" in sandbox.logs("kube-scheduler", 40)
    finally:
        await sandbox.start_component("kube-scheduler", timeout=120)  # the port is free again
    assert {c.name: c.healthy for c in sandbox.status()[1]}["kube-scheduler-control-plane"]


async def test_a_second_sandbox_runs_beside_the_first_and_stops_cleanly(sandbox: Sandbox) -> None:
    other = Sandbox(f"second-{uuid.uuid4().hex[:6]}")
    try:
        await other.up(SandboxOptions(workers=1))
        assert other.load().apiserver != sandbox.load().apiserver
        async with Kube(ClientOptions(kubeconfig=str(other.kubeconfig))) as kube:
            nodes = [n["metadata"]["name"] async for n in kube.list_items("/api/v1/nodes")]
        assert sorted(nodes) == ["control-plane", "worker-1"]
        # Both at kubeadm's addresses and ports, each in a network of its own: no clash.
        state, first = other.load(), sandbox.load()
        assert state.control_planes[0]["ip"] == first.control_planes[0]["ip"] == "192.0.2.11"
        holders = [c.pid for n, c in state.components.items() if n.startswith("netns-")]
        namespaces = {network.inode(pid) for pid in holders if pid}
        assert len(namespaces) == 2 and network.inode(os.getpid()) not in namespaces
        mine = {network.inode(c.pid) for n, c in first.components.items() if n.startswith("netns-") and c.pid}  # fmt: skip
        assert not namespaces & mine
    finally:
        stopped = other.down()
    assert "runner" in stopped and "kwok" in stopped
    assert sandbox_processes(other) == []
    # no process is left in its network namespaces: the kernel has removed them
    left = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and network.inode(int(p.name)) in namespaces
    ]
    assert left == []  # fmt: skip
    assert all(c.healthy for c in sandbox.status()[1])  # the first one is untouched


def test_status_of_a_missing_sandbox_says_how_to_start_one(sandbox_state_dir: Path) -> None:
    from kubecare.errors import NotFound

    with pytest.raises(NotFound, match="kubecare sandbox up --name nope"):
        Sandbox("nope").status()


@pytest.mark.parametrize("bad", ["UPPER", "a/b", "", "x" * 41])
def test_bad_sandbox_names_are_usage_errors(bad: str) -> None:
    from kubecare.errors import UsageError

    with pytest.raises(UsageError):
        Sandbox(bad)


def test_etcd_requires_client_certificates(sandbox: Sandbox) -> None:
    port = sandbox.load().control_planes[0]["forward"]["2379"]  # the host's way to 2379
    import urllib.error
    import urllib.request

    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(
            f"https://127.0.0.1:{port}/health",
            context=ssl.create_default_context(cafile=str(sandbox.pki.etcd_ca.cert)),
            timeout=5,
        )
