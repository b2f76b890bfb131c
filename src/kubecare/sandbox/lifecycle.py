"""A real Kubernetes control plane on one machine, shaped like a kubeadm cluster.

Each control-plane node gets a kubeadm tree under ``<state>/<name>/nodes/<node>/``:
``etc/kubernetes/{admin,super-admin,controller-manager,scheduler,kubelet}.conf``, ``manifests/``
(etcd, kube-apiserver, kube-controller-manager, kube-scheduler as static pods), ``pki/`` and
``pki/etcd/``, and ``var/lib/etcd``. The static pod runner (:mod:`kubecare.sandbox.runner`, the
sandbox's kubelet) runs the manifests and keeps their mirror pods in kube-system; once the
control plane is up, the real kubeadm's init phases (:mod:`kubecare.sandbox.kubeadm_init`) write
its ConfigMaps, RBAC, bootstrap token and addons (CoreDNS, the kube-proxy DaemonSet); one kwok
process keeps every node alive (Ready, leases) and runs the pods. Each
control-plane node runs in a network namespace of its own with a 192.0.2.0/24 address
(:mod:`kubecare.sandbox.network`); the host reaches it through loopback ports the runner
forwards. With ``control_planes=3`` there are three such nodes, a 3-member etcd with peer TLS,
and the runner serves the three apiservers behind one address (192.0.2.10:6443 for the nodes,
a loopback port for the host).

State: ``state.json`` (ports, pids, options; the runner reads its part), ``runner.json`` (what the
runner runs), ``kubeconfig`` (admin, 0600), ``clients/`` (client certificates, 0700), ``logs/``.
Every process is started detached and stopped by its recorded pid.

:class:`Sandbox` is its state, lock, ``up``/``down`` and status; the phases live beside it:
:mod:`.bootstrap` (the start, kubeadm init/join style), :mod:`.network` (the namespaces),
:mod:`.machines` (the nodes as machines, nodes coming and going), :mod:`.static_admin` (what an
admin does to static pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import shutil
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubecare.errors import NotFound, SandboxError, UsageError
from kubecare.files import write_atomic
from kubecare.kube import ClientOptions
from kubecare.sandbox import network, process
from kubecare.sandbox.binaries import (
    binary_path,
    ensure_binaries,
    find_toolset,
    resolve_version,
)
from kubecare.sandbox.bootstrap import Bootstrap, Progress, SandboxOptions
from kubecare.sandbox.machines import NodeMachines
from kubecare.sandbox.nodes import KWOK_LABEL
from kubecare.sandbox.pki import SandboxPKI
from kubecare.sandbox.realnodes import RealNodes
from kubecare.sandbox.state import ComponentState, SandboxState, state_root
from kubecare.sandbox.static_admin import StaticPodAdmin
from kubecare.sandbox.staticpods import COMPONENTS as STATIC

_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class ComponentStatus:
    """What `kubecare sandbox status` shows for one component."""

    name: str  # mirror-pod style for static pods ("kube-apiserver-control-plane"), else the process
    node: str
    pid: int | None
    port: int
    version: str  # what the running binary reports
    image: str
    running: bool
    healthy: bool
    restarts: int
    reason: str  # why it is not running (CrashLoopBackOff, ErrImagePull, InvalidManifest, stopped)
    log_tail: str


class Sandbox(Bootstrap, StaticPodAdmin, NodeMachines, RealNodes):
    """One named sandbox; methods are safe to call from several processes (a file lock guards them)."""

    def __init__(self, name: str = "kubecare") -> None:
        if not name or not set(name) <= _NAME_OK or len(name) > 40:
            raise UsageError(
                f"invalid sandbox name {name!r}; use lowercase letters, digits and '-'"
            )
        self.name = name
        self.dir = state_root() / name

    # -- paths and state ---------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def runner_file(self) -> Path:
        return self.dir / "runner.json"

    def node_dir(self, node: str) -> Path:
        return self.dir / "nodes" / node

    @property
    def pki(self) -> SandboxPKI:
        """The first control-plane node's pki/ and the client certificates."""
        first = "control-plane"
        with contextlib.suppress(NotFound, SandboxError):
            first = self.load().control_planes[0]["node"]
        return SandboxPKI(self.node_dir(first) / "etc" / "kubernetes" / "pki", self.dir / "clients")

    def log_path(self, component: str) -> Path:
        return self.dir / "logs" / f"{component}.log"

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> SandboxState:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            raise NotFound(
                f'sandbox "{self.name}" does not exist; start it with: kubecare sandbox up --name {self.name}',
                status=404,
            ) from None
        except ValueError:
            raise SandboxError(
                f"sandbox state {self.state_file} is corrupt; remove it with: kubecare sandbox down --name {self.name}"
            ) from None
        try:
            comps = {k: ComponentState(**v) for k, v in raw.pop("components", {}).items()}
            return SandboxState(**raw, components=comps)
        except TypeError:
            raise SandboxError(
                f"sandbox state {self.state_file} is from another kubecare version; remove it with: "
                f"kubecare sandbox down --name {self.name}"
            ) from None

    def save(self, state: SandboxState) -> None:
        write_atomic(self.state_file, json.dumps(asdict(state), indent=2), mode=0o600)

    def runner_report(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.runner_file.read_text())
        except (OSError, ValueError):
            return {"pods": []}
        return doc if isinstance(doc, dict) else {"pods": []}

    @contextmanager
    def locked(self, wait: float = 0) -> Iterator[None]:
        """Exclusive lock on this sandbox's state (up/down/changes never interleave). ``wait``:
        seconds to wait for it (a short state change: the nodes of one upgrade batch install
        their packages at once); 0 refuses at once (up and down)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        with open(self.dir / ".lock", "w") as f:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SandboxError(
                            f'sandbox "{self.name}" is busy: another kubecare process is '
                            "starting or stopping it"
                        ) from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _pids(self, state: SandboxState) -> list[tuple[str, int, str]]:
        """Every process of the sandbox: (name, pid, binary), the runner's children included."""
        out = [(c.name, c.pid, c.binary) for c in state.components.values() if c.pid]
        for p in self.runner_report().get("pods") or []:
            if p.get("pid"):
                out.append((f"{p['name']}-{p['node']}", int(p["pid"]), str(p.get("binary") or "")))
        return out

    def running_components(self, state: SandboxState) -> list[str]:
        return [
            name
            for name, pid, binary in self._pids(state)
            if process.is_running(pid, binary or None)
        ]

    def client_options(self) -> ClientOptions:
        from kubecare.sandbox.target import api_addresses

        # its apiservers' advertise addresses through the host's forwards, never dialled as such
        return ClientOptions(kubeconfig=str(self.kubeconfig), addresses=api_addresses(self.name))

    def super_admin(self) -> Path:
        """super-admin.conf (system:masters) pointed at the host's forward of the cluster
        endpoint: what kubecare itself (sandbox up, the runner) talks to the cluster with."""
        return self.dir / "super-admin.conf"

    def netns(self, state: SandboxState, node: str) -> str | None:
        """The network namespace of a control-plane node (``switch``: the sandbox's switch)."""
        holder = state.components.get(f"netns-{node}")
        if holder is None or not process.is_running(holder.pid, holder.binary):
            return None
        assert holder.pid is not None
        return network.ns_path(holder.pid)

    # -- lifecycle -----------------------------------------------------------------------------
    async def up(self, opts: SandboxOptions, progress: Progress | None = None) -> float:
        """Build what is missing, start every component, wait for /readyz and Ready nodes.

        Returns the seconds the start took (binaries already built).
        """
        say = progress or (lambda _m: None)
        if opts.workers < 0:
            raise UsageError("--nodes must not be negative")
        if opts.control_planes not in (1, 3, 5):
            raise UsageError(
                "--control-planes must be 1, 3 or 5 (etcd needs an odd number of members)"
            )
        version = resolve_version(opts.version)
        network.check_privileges()
        from kubecare.sandbox import nodeshell

        nodeshell.check_views(state_root())
        with self.locked():
            if self.exists():
                try:
                    state = self.load()
                    alive = self.running_components(state)
                except SandboxError:
                    alive = []
                if alive:
                    raise SandboxError(
                        f'sandbox "{self.name}" is already running ({", ".join(alive[:4])}); '
                        f"use it (eval $(kubecare sandbox env --name {self.name})) or stop it first: kubecare sandbox down --name {self.name}"
                    )
                raise SandboxError(
                    f'sandbox "{self.name}" has stale state in {self.dir} (its processes are gone); '
                    f"remove it with: kubecare sandbox down --name {self.name}"
                )
            if {p.name for p in self.dir.iterdir()} - {".lock"}:
                raise SandboxError(
                    f"{self.dir} exists and is not a sandbox state dir kubecare can reuse; "
                    f"remove it with: kubecare sandbox down --name {self.name}"
                )
            if opts.real_nodes:
                from kubecare.sandbox import realnodes

                realnodes.check_deps()
            tools = await asyncio.to_thread(
                ensure_binaries, version, say, real_nodes=bool(opts.real_nodes)
            )
            return await self._up_locked(opts, version, tools, say, time.monotonic())

    def _stop_all(self, state: SandboxState) -> list[str]:
        """Stop the runner (it stops its static pods, etcd last), kwok, and anything left over."""
        stopped = []
        failed: list[str] = []
        for node in state.real_nodes:  # first: their kubelets talk to the control plane
            try:
                if self.power_off(state, node, hard=False):
                    stopped.append(f"real node {node}")
            except SandboxError as e:  # the rest is stopped all the same; said at the end
                failed.append(e.message)
        runner = state.components.get("runner")
        if runner and process.stop(runner.pid, runner.binary, timeout=40):
            stopped.append("runner")
        for comp in state.components.values():
            if comp.name != "runner" and process.stop(comp.pid, comp.binary):
                stopped.append(comp.name)
            comp.pid = None
        stopped += self._stop_leftovers()
        if failed:
            raise SandboxError(
                "; ".join(failed) + f"; run kubecare sandbox down --name {self.name} again"
            )
        return stopped

    def _stop_leftovers(self) -> list[str]:
        """Components a runner killed with SIGKILL left running: they are in runner.json, and
        their command lines name this sandbox's tree (a reused pid would not). And network
        namespace holders state.json does not name (unreadable state): `sleep infinity`
        started in this sandbox's state dir."""
        stopped = []
        names = {str(self.dir), str(self.dir.resolve())}
        for p in self.runner_report().get("pods") or []:
            pid = int(p.get("pid") or 0)
            if pid and any(process.mentions(pid, n) for n in names) and process.stop(pid):
                stopped.append(f"{p['name']}-{p['node']}")
        for pid in network.holders_in(self.dir):
            if process.stop(pid, "sleep"):
                stopped.append(f"netns holder {pid}")
        from kubecare.sandbox import realnodes

        stopped += realnodes.stop_leftovers(self.name, self.dir)
        return stopped

    def down(self, *, keep: bool = False) -> list[str]:
        """Stop every process of the sandbox (by pid); remove its state unless ``keep``."""
        if not self.dir.exists():
            raise NotFound(f'sandbox "{self.name}" does not exist (no {self.dir})', status=404)
        stopped: list[str] = []
        with self.locked():
            if self.exists():
                try:
                    state = self.load()
                except SandboxError:
                    state = None
                if state:
                    stopped = self._stop_all(state)
                    if keep:
                        self.save(state)
                else:  # unreadable state: at least what the runner recorded must not survive
                    stopped = self._stop_leftovers()
            if not keep:
                shutil.rmtree(self.dir, ignore_errors=True)
        return stopped

    # -- inspection ----------------------------------------------------------------------------
    def status(self) -> tuple[SandboxState, list[ComponentStatus]]:
        state = self.load()
        out = []
        for p in self.runner_report().get("pods") or []:
            name = f"{p['name']}-{p['node']}"
            running = bool(p.get("pid")) and process.is_running(
                int(p["pid"]), p.get("binary") or None
            )
            out.append(
                ComponentStatus(
                    name=name,
                    node=p["node"],
                    pid=p.get("pid") if running else None,
                    port=_port_of(state, p),
                    version=p.get("version") or "",
                    image=p.get("image") or "",
                    running=running,
                    healthy=running and bool(p.get("ready")),
                    restarts=int(p.get("restarts") or 0),
                    reason=p.get("reason") or ("" if running else "stopped"),
                    log_tail=""
                    if running
                    else (p.get("error") or process.tail(self.log_path(name), 10)),
                )
            )
        seen = {c.name for c in out}
        for cp in state.control_planes:
            for component in STATIC:
                name = f"{component}-{cp['node']}"
                if name not in seen:  # its manifest is not in manifests/ (moved out, deleted)
                    out.append(
                        ComponentStatus(
                            name=name,
                            node=cp["node"],
                            pid=None,
                            port=_port_of(state, {"node": cp["node"], "component": component}),
                            version="",
                            image="",
                            running=False,
                            healthy=False,
                            restarts=0,
                            reason="no manifest",
                            log_tail=f"{component}.yaml is not in {cp['manifests']}",
                        )
                    )
        for comp in state.components.values():
            running = process.is_running(comp.pid, comp.binary)
            out.append(
                ComponentStatus(
                    name=comp.name,
                    node="",
                    pid=comp.pid if running else None,
                    port=comp.port,
                    version=comp.version,
                    image="",
                    running=running,
                    healthy=running and (not comp.health or _http_ok(comp.health)),
                    restarts=0,
                    reason="" if running else "stopped",
                    log_tail="" if running else process.tail(self.log_path(comp.name), 10),
                )
            )
        return state, out

    def logs(self, component: str, lines: int = 50) -> str:
        state = self.load()
        names = [c.name for c in self.status()[1]]
        if component not in names:
            shorthand = f"{component}-{state.control_planes[0]['node']}"
            if component in STATIC and shorthand in names:
                component = shorthand
            else:
                raise NotFound(
                    f'sandbox "{self.name}" has no component {component!r}; components: {", ".join(names)}',
                    status=404,
                )
        return process.tail(self.log_path(component), lines)

    def memory(self) -> dict[str, int]:
        """Resident memory (bytes) of each running process of the sandbox."""
        state = self.load()
        return {
            name: process.rss_bytes(pid)
            for name, pid, binary in self._pids(state)
            if process.is_running(pid, binary or None)
        }


def _port_of(state: SandboxState, pod: dict[str, Any]) -> int:
    """The host's loopback port for a component's port (its own, where nothing forwards it)."""
    cp = next((c for c in state.control_planes if c["node"] == pod.get("node")), None)
    ports = (cp or {}).get("ports") or {}
    key = {
        "etcd": "etcd_client",
        "kube-apiserver": "apiserver",
        "kube-controller-manager": "controller_manager",
        "kube-scheduler": "scheduler",
    }.get(str(pod.get("component")), "")
    port = int(ports.get(key, 0))
    return int(((cp or {}).get("forward") or {}).get(str(port), port))


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(
            url, timeout=2, context=ssl._create_unverified_context()
        ) as resp:
            return bool(resp.status == 200)
    except Exception:
        return False


def list_sandboxes() -> list[str]:
    from kubecare.sandbox.state import list_sandboxes as names

    return names()


__all__ = [
    "KWOK_LABEL",
    "ComponentStatus",
    "Sandbox",
    "SandboxOptions",
    "binary_path",
    "find_toolset",
]
