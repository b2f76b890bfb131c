"""End-to-end fixtures: one real sandbox per test session, a fresh namespace per test.

The sandbox is started once (fast outage knobs, three workers) and always torn down. If it cannot
start, every e2e test errors: nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kubecare.kube import ClientOptions, Kube
from kubecare.nodes.cordon import set_unschedulable
from kubecare.sandbox import Sandbox, SandboxOptions

if TYPE_CHECKING:
    from .workloads import Pool

# Fast node-outage timing so NotReady tests finish in seconds, not minutes.
GRACE_SECONDS = 10
EVICTION_SECONDS = 15


@pytest.fixture(scope="session")
def sandbox_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("sandboxes")
    old = os.environ.get("KUBECARE_STATE_DIR")
    os.environ["KUBECARE_STATE_DIR"] = str(d)
    yield d
    if old is None:
        os.environ.pop("KUBECARE_STATE_DIR", None)
    else:
        os.environ["KUBECARE_STATE_DIR"] = old


@pytest.fixture(scope="session")
async def sandbox(sandbox_state_dir: Path) -> AsyncIterator[Sandbox]:
    sb = Sandbox(f"e2e-{uuid.uuid4().hex[:6]}")
    try:
        await sb.up(
            SandboxOptions(
                workers=3,
                pod_eviction_timeout=EVICTION_SECONDS,
                node_monitor_grace_period=GRACE_SECONDS,
            )
        )
        yield sb
    finally:
        if sb.dir.exists():
            sb.down()


@contextlib.asynccontextmanager
async def own_sandbox(prefix: str, opts: SandboxOptions) -> AsyncIterator[Sandbox]:
    """A sandbox for one test module whose tests change the control plane itself (restores,
    manifest edits); always taken down."""
    sb = Sandbox(f"{prefix}-{uuid.uuid4().hex[:6]}")
    try:
        await sb.up(opts)
        yield sb
    finally:
        if sb.dir.exists():
            sb.down()


@pytest.fixture
async def kube(sandbox: Sandbox) -> AsyncIterator[Kube]:
    async with Kube(ClientOptions(kubeconfig=str(sandbox.kubeconfig))) as k:
        yield k


def cli_argv(*args: str, kubeconfig: Path | None = None) -> list[str]:
    """The command line of the real `kubecare` entry point (for run_cli, or a Popen)."""
    argv = [sys.executable, "-m", "kubecare.cli.app"]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    return [*argv, *args]


def run_cli(
    *args: str, kubeconfig: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `kubecare` entry point in a subprocess."""
    return subprocess.run(
        cli_argv(*args, kubeconfig=kubeconfig),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
async def make_pool(sandbox: Sandbox, kube: Kube) -> AsyncIterator[Callable[[], Awaitable[Pool]]]:
    """Factory of pools: two fresh nodes only the calling test's pods can use. Node ``a`` is
    schedulable, ``b`` cordoned at first (so everything lands on ``a``; uncordon ``b`` to give
    evicted pods somewhere to go). Every node made is removed afterwards."""
    from .workloads import POOL_KEY, Pool, wait_system_pods

    made: list[str] = []

    async def factory() -> Pool:
        pid = uuid.uuid4().hex[:6]
        names = (f"p{pid}-a", f"p{pid}-b")
        taint = [{"key": POOL_KEY, "value": pid, "effect": "NoSchedule"}]
        for n in names:
            await sandbox.add_node(n, labels={POOL_KEY: pid}, taints=taint)
            made.append(n)
        await set_unschedulable(kube, names[1], True)
        for n in names:  # as on a real node, drains meet kubeadm's kube-proxy DaemonSet pod
            await wait_system_pods(kube, n)
        return Pool(pid, names)

    try:
        yield factory
    finally:
        for n in made:
            await sandbox.remove_node(n)


@pytest.fixture
async def pool(make_pool: Callable[[], Awaitable[Pool]]) -> Pool:
    return await make_pool()


@pytest.fixture
async def make_namespace(kube: Kube) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory of fresh namespaces (deleted afterwards)."""
    made: list[str] = []

    async def factory() -> str:
        name = f"t-{uuid.uuid4().hex[:8]}"
        await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})
        made.append(name)
        for _ in range(200):
            r = await kube.http.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        return name

    try:
        yield factory
    finally:
        for n in made:
            await kube.http.delete(f"/api/v1/namespaces/{n}")


@pytest.fixture
async def namespace(make_namespace: Callable[[], Awaitable[str]]) -> str:
    """A fresh namespace (unique name) whose default service account exists; deleted afterwards."""
    return await make_namespace()
