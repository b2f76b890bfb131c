"""The ``sandbox`` upgrade executor: on each node of a kubecare sandbox, the steps an operator runs
on a real kubeadm node, done by the real kubeadm in the node's own view (``sandbox exec``).

For each node, as the ssh/job executors' default steps do it on a real one (kubernetes.io
"Upgrading kubeadm clusters"):

1. the package manager installs kubeadm at the target (``sandbox install NODE kubeadm V``);
2. the binary is asked its version (``kubeadm version -o short``): the target of every later
   step, etcd's included, is what *that* kubeadm pins, so a node whose kubeadm is not the
   target stops here, before kubeadm touches anything;
3. ``kubeadm upgrade apply vV --yes`` on the first control plane, ``kubeadm upgrade node``
   everywhere else — kubeadm rewrites the static pod manifests, waits for the runner (the
   sandbox's kubelet) to restart each component, renews certificates, uploads its config and
   upgrades the addons; when it fails, it rolls back itself and its own words end the error;
4. the kubelet package at the target, and ``systemctl daemon-reload && systemctl restart
   kubelet`` (kwok's node then reports the new version).

On a machine with cgroup v1, kubeadm's SystemVerification fails for every kubelet from v1.35
("You must also explicitly skip this validation"), so the kubeadm line skips that one check
there, as an operator of such a node must; the flag is in the journal's output.

kubecare's upgrade code takes this executor as a parameter; only the CLI builds it from
``--sandbox NAME``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kubecare.errors import OperationFailed, UsageError
from kubecare.kube import Kube
from kubecare.sandbox.lifecycle import Sandbox
from kubecare.sandbox.nodeshell import NodeView
from kubecare.upgrade.plan import FIRST_CONTROL_PLANE, NodeStep
from kubecare.versions.semver import Version

Line = Callable[[str], None]
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def cgroup_v1(root: Path = Path("/sys/fs/cgroup")) -> bool:
    """Whether the machine runs cgroup v1 (or the hybrid layout): no unified hierarchy at the
    cgroup root, as kubeadm's validator (system-validators) decides it."""
    return not (root / "cgroup.controllers").exists()


def kubeadm_line(step: NodeStep, version: str, *, v1: bool) -> list[str]:
    """The kubeadm command of ``step``'s node (pure)."""
    if step.role == FIRST_CONTROL_PLANE:
        argv = ["kubeadm", "upgrade", "apply", f"v{version}", "--yes"]
    else:
        argv = ["kubeadm", "upgrade", "node"]
    if v1:
        argv.append("--ignore-preflight-errors=SystemVerification")
    return argv


def failure(output: list[str], code: int) -> str:
    """kubeadm's own account of a failure: the preflight errors it lists (``[ERROR Name]: why``),
    its error line, and what it says it rolled back."""
    said = [
        ln.strip()
        for ln in output
        if ln.lstrip().startswith("[ERROR ")
        or ln.startswith(("error", "[upgrade/apply] FATAL"))
        or "rolled back" in ln.lower()
        or "recover" in ln.lower()
    ]
    return "; ".join(dict.fromkeys(said)) or (output[-1] if output else f"exit code {code}")


def check_kubeadm(said: list[str], version: str, node: str, sandbox: str) -> None:
    """The node's kubeadm must be the target's: its targets (etcd's tag, the addons) are what
    upgrade the node. Raises before kubeadm runs."""
    if said != [f"v{version}"]:
        raise OperationFailed(
            f"kubeadm on {node} says {' '.join(said) or 'nothing'}, not v{version}; nothing was "
            f"changed on it; install it: kubecare sandbox install --name {sandbox} {node} "
            f"kubeadm {version}"
        )


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """The whole process group (its own session: kubeadm and whatever it started)."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class SandboxExecutor:
    """What an operator does on each node, done by the real kubeadm on a kubecare sandbox."""

    name = "sandbox"
    supports_surge = True

    def __init__(self, kube: Kube, sandbox: str, *, step_timeout: float = 600) -> None:
        self.kube = kube
        self.sandbox = Sandbox(sandbox)
        if not self.sandbox.exists():
            raise UsageError(f'no sandbox "{sandbox}"; see kubecare sandbox list')
        self.step_timeout = step_timeout
        self.v1 = cgroup_v1()

    async def check(self, steps: Sequence[NodeStep], target: Version) -> None:
        from kubecare.sandbox.binaries import KUBE_VERSIONS, find_toolset

        version = f"{target.major}.{target.minor}.{target.patch}"
        if target.pre or version not in KUBE_VERSIONS:
            raise UsageError(
                f"the sandbox runs only the versions it builds ({', '.join('v' + v for v in KUBE_VERSIONS)}), not {target}"
            )
        _, missing = find_toolset(version)  # kubeadm, the control plane and the etcd it pins
        if missing:
            raise UsageError(
                f"v{version} is not built ({', '.join(f'{a.kind} v{a.version}' for a in missing)}); "
                f"run: kubecare sandbox build --version {version}"
            )
        if os.geteuid() != 0:
            raise UsageError(
                "the sandbox executor runs kubeadm in each node's own view, which needs root; "
                "run kubecare as root"
            )

    async def upgrade(self, step: NodeStep, target: Version, on_line: Line) -> None:
        version = f"{target.major}.{target.minor}.{target.patch}"
        node = step.node
        before, _ = await self.sandbox.install(node, "kubeadm", version)
        on_line(f"[install] kubeadm v{before} -> v{version}")
        view = await self.sandbox.prepare_node(node)
        said = await self._run(view, ["kubeadm", "version", "-o", "short"], None, 30)
        check_kubeadm(said, version, node, self.sandbox.name)
        argv = kubeadm_line(step, version, v1=self.v1)
        on_line("$ " + " ".join(argv))
        t0 = time.monotonic()
        await self._run(view, argv, on_line, self.step_timeout)
        on_line(f"[kubeadm] {' '.join(argv[:3])} done in {time.monotonic() - t0:.1f}s")
        if step.role == FIRST_CONTROL_PLANE:
            await asyncio.to_thread(self.sandbox.record_version, version)
        before, _ = await self.sandbox.install(node, "kubelet", version)
        on_line(f"[install] kubelet v{before} -> v{version}")
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "restart", "kubelet"]):
            await self._run(view, cmd, on_line, 30)

    async def _run(
        self, view: NodeView, argv: list[str], on_line: Line | None, timeout: float
    ) -> list[str]:
        """``argv`` in the node's view; its output lines (ANSI colours dropped), streamed to
        ``on_line``. A non-zero exit raises OperationFailed with kubeadm's own words."""
        from kubecare.sandbox import nodeshell

        unshare, nsenter = nodeshell.tools()
        full = nodeshell.argv(view, argv, unshare=unshare, nsenter=nsenter)
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=nodeshell.environment(view, dict(os.environ)),
            start_new_session=True,
            limit=1 << 20,  # kubeadm's longest lines (a diff, the verification table) fit
        )
        assert proc.stdout is not None
        output: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                async for raw in proc.stdout:
                    text = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
                    if not text:
                        continue
                    output.append(text)
                    if on_line is not None:
                        on_line(text)
                code = await proc.wait()
        except TimeoutError:
            await _kill(proc)
            last = "; ".join(output[-3:]) or "no output"
            raise OperationFailed(
                f"{' '.join(argv[:3])} on {view.node} did not finish within {timeout:.0f}s and "
                f"was killed mid-step (last: {last}); kubeadm keeps the old manifests in "
                "/etc/kubernetes/tmp/kubeadm-backup-manifests-* on the node"
            ) from None
        except BaseException:
            if proc.returncode is None:
                await _kill(proc)
            raise
        if code != 0:
            raise OperationFailed(
                f"{' '.join(argv[:3])} on {view.node} failed (exit {code}): {failure(output, code)}"
            )
        return output

    async def provision(self, replacing: NodeStep, target: Version, on_line: Line) -> str:
        """A new kwok worker at the target version (the sandbox records it), Ready."""
        base = replacing.node.rsplit("-v1-", 1)[0]
        name = f"{base}-v1-{target.minor}"
        await self.sandbox.add_node(name)
        on_line(f"node {name} added (kubelet v{target.major}.{target.minor}.{target.patch})")
        return name

    async def deprovision(self, node: str, on_line: Line) -> None:
        await self.sandbox.remove_node(node)
        on_line(f"node {node} removed")
