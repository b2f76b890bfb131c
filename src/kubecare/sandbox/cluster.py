"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, and one kwok per fake node.

State lives in ``$KUBECARE_STATE_DIR/<name>`` (default ``~/.local/state/kubecare/sandboxes``):
``state.json`` (ports, pids, options), ``pki/`` (0700, keys 0600), ``kubeconfig`` (admin, 0600),
``etcd-data/`` and ``logs/``. Every process is started detached and stopped by its recorded pid.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import shutil
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from kubecare.errors import NotFound, SandboxError, UsageError
from kubecare.files import write_atomic
from kubecare.kube import JSON, ClientOptions, Kube
from kubecare.sandbox import process
from kubecare.sandbox.binaries import (
    ETCD_VERSION,
    KWOK_VERSION,
    Toolset,
    ensure_binaries,
    find_toolset,
    resolve_version,
)
from kubecare.sandbox.nodes import (
    NodeSpec,
    kwok_args,
    node_manifest,
    node_specs,
    register_node,
    set_boot_id,
    wait_ready,
)
from kubecare.sandbox.pki import SandboxPKI, create_pki
from kubecare.sandbox.state import ComponentState, SandboxState, state_root

Progress = Callable[[str], None]
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Every request at Metadata level, logged once (when the response is complete): enough to count
# requests per user agent, which is how benchmarks compare tools on the server's side.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
"""
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass(frozen=True)
class SandboxOptions:
    """How to start a sandbox."""

    workers: int = 3
    version: str | None = None  # Kubernetes version; default the newest supported
    pod_eviction_timeout: int | None = None  # seconds; apiserver default toleration (300)
    node_monitor_grace_period: int | None = None  # seconds; controller-manager default (50)
    max_pods: int = 500
    ready_timeout: float = 180.0
    audit_log: bool = False  # the apiserver writes logs/audit.log (benchmarks count requests there)


@dataclass(frozen=True)
class ComponentStatus:
    """What `kubecare sandbox status` shows for one component."""

    name: str
    pid: int | None
    port: int
    version: str
    running: bool
    healthy: bool
    log_tail: str


def kubeconfig_doc(
    server: str, ca: Path, cert: Path, key: Path, user: str, cluster: str
) -> dict[str, Any]:
    """A kubeconfig with one context and embedded credentials."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": cluster, "cluster": {"server": server, "certificate-authority-data": b64(ca)}}
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }


class Sandbox:
    """One named sandbox; methods are safe to call from several processes (a file lock guards them)."""

    def __init__(self, name: str = "kubecare") -> None:
        if not name or not set(name) <= _NAME_OK or len(name) > 40:
            raise UsageError(
                f"invalid sandbox name {name!r}; use lowercase letters, digits and '-'"
            )
        self.name = name
        self.dir = state_root() / name
        self.pki = SandboxPKI(self.dir / "pki")

    # -- paths and state ---------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

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
        comps = {k: ComponentState(**v) for k, v in raw.pop("components", {}).items()}
        return SandboxState(**raw, components=comps)

    def save(self, state: SandboxState) -> None:
        write_atomic(self.state_file, json.dumps(asdict(state), indent=2), mode=0o600)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive lock on this sandbox's state (up/down/restart never interleave)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        with open(self.dir / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SandboxError(
                    f'sandbox "{self.name}" is busy: another kubecare process is starting or stopping it'
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def running_components(self, state: SandboxState) -> list[str]:
        return [c.name for c in state.components.values() if process.is_running(c.pid, c.binary)]

    def client_options(self) -> ClientOptions:
        return ClientOptions(kubeconfig=str(self.kubeconfig))

    # -- health ------------------------------------------------------------------------------
    def _ssl(
        self, *, ca: Path | None, cert: Path | None = None, key: Path | None = None
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        if cert and key:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def _health_context(self, comp: ComponentState) -> ssl.SSLContext | bool:
        if comp.name == "etcd":
            p = self.pki.pair("etcd-healthcheck-client")
            return self._ssl(ca=self.pki.etcd_ca.cert, cert=p.cert, key=p.key)
        if comp.name == "kube-apiserver":
            p = self.pki.pair("admin")
            return self._ssl(ca=self.pki.ca.cert, cert=p.cert, key=p.key)
        # controller-manager and scheduler serve self-signed certs; kwok serves plain HTTP.
        return False

    def check_health(self, comp: ComponentState, timeout: float = 2.0) -> bool:
        import urllib.error
        import urllib.request

        verify = self._health_context(comp)
        context = verify if isinstance(verify, ssl.SSLContext) else ssl._create_unverified_context()
        try:
            with urllib.request.urlopen(comp.health, timeout=timeout, context=context) as resp:
                status, text = resp.status, resp.read().decode(errors="replace")
        except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
            return False
        if comp.name == "etcd":
            return bool(status == 200 and '"health":"true"' in text.replace(" ", ""))
        return bool(status == 200)

    async def _wait_healthy(
        self, comp: ComponentState, timeout: float, started: list[ComponentState]
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not process.is_running(comp.pid, comp.binary):
                self._abort(started)
                raise SandboxError(
                    f"{comp.name} exited during start-up. Last log lines ({self.log_path(comp.name)}):\n"
                    + process.tail(self.log_path(comp.name), 15)
                )
            if await asyncio.to_thread(self.check_health, comp):
                return
            if time.monotonic() > deadline:
                self._abort(started)
                raise SandboxError(
                    f"{comp.name} did not become healthy within {timeout:.0f}s ({comp.health}). "
                    f"Last log lines ({self.log_path(comp.name)}):\n"
                    + process.tail(self.log_path(comp.name), 15)
                )
            await asyncio.sleep(0.2)

    def _abort(self, started: list[ComponentState]) -> None:
        """Stop everything started so far: a failed `up` leaves nothing running."""
        for comp in reversed(started):
            process.stop(comp.pid, comp.binary)
            comp.pid = None

    def _start(self, comp: ComponentState) -> None:
        if process.port_in_use(comp.port):
            raise SandboxError(
                f"{comp.name}: port 127.0.0.1:{comp.port} is already in use by another process; "
                f"stop it, or recreate the sandbox: kubecare sandbox down --name {self.name} && kubecare sandbox up --name {self.name}"
            )
        comp.pid = process.spawn(comp.args, self.log_path(comp.name))

    # -- component definitions ---------------------------------------------------------------
    def _write_kubeconfigs(self, server: str) -> None:
        ca = self.pki.ca.cert
        for user, pair in (
            ("kubernetes-admin", "admin"),
            ("system:kube-controller-manager", "controller-manager"),
            ("system:kube-scheduler", "scheduler"),
            ("kwok-controller", "kwok"),
        ):
            p = self.pki.pair(pair)
            doc = kubeconfig_doc(server, ca, p.cert, p.key, user, f"kubecare-{self.name}")
            target = self.kubeconfig if pair == "admin" else self.dir / f"{pair}.kubeconfig"
            write_atomic(target, yaml.safe_dump(doc, sort_keys=False), mode=0o600)

    def _control_plane(
        self, tools: Toolset, opts: SandboxOptions, version: str
    ) -> list[ComponentState]:
        etcd_port, etcd_peer, api_port, cm_port, sched_port = process.free_ports(5)
        pki, d = self.pki, self.dir
        api_url = f"https://127.0.0.1:{api_port}"
        v = f"v{version}"
        etcd = ComponentState(
            "etcd",
            str(tools["etcd"]),
            [
                str(tools["etcd"]),
                "--name",
                "sandbox",
                "--data-dir",
                str(d / "etcd-data"),
                "--listen-client-urls",
                f"https://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"https://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"sandbox=http://127.0.0.1:{etcd_peer}",
                "--initial-cluster-state",
                "new",
                "--cert-file",
                str(pki.pair("etcd-server").cert),
                "--key-file",
                str(pki.pair("etcd-server").key),
                "--trusted-ca-file",
                str(pki.etcd_ca.cert),
                "--client-cert-auth",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            etcd_port,
            "",
            f"https://127.0.0.1:{etcd_port}/health",
        )
        apiserver_args = [
            str(tools["kube-apiserver"]),
            "--etcd-servers",
            f"https://127.0.0.1:{etcd_port}",
            "--etcd-cafile",
            str(pki.etcd_ca.cert),
            "--etcd-certfile",
            str(pki.pair("apiserver-etcd-client").cert),
            "--etcd-keyfile",
            str(pki.pair("apiserver-etcd-client").key),
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(api_port),
            "--advertise-address",
            "127.0.0.1",
            # Loopback is not a valid address for the `kubernetes` Endpoints; nothing needs them here.
            "--endpoint-reconciler-type",
            "none",
            "--cert-dir",
            str(d / "apiserver-certs"),
            "--tls-cert-file",
            str(pki.pair("apiserver").cert),
            "--tls-private-key-file",
            str(pki.pair("apiserver").key),
            "--client-ca-file",
            str(pki.ca.cert),
            "--service-cluster-ip-range",
            "10.96.0.0/16",
            "--authorization-mode",
            "Node,RBAC",
            "--enable-admission-plugins",
            "NodeRestriction",
            "--allow-privileged",
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file",
            str(pki.sa_pub),
            "--service-account-signing-key-file",
            str(pki.sa_key),
            "--profiling=false",
        ]
        if opts.audit_log:
            policy = d / "audit-policy.yaml"
            write_atomic(policy, AUDIT_POLICY, mode=0o600)
            apiserver_args += [
                "--audit-policy-file",
                str(policy),
                "--audit-log-path",
                str(self.log_path("audit")),
                "--audit-log-format",
                "json",
            ]
        if opts.pod_eviction_timeout is not None:
            # What --pod-eviction-timeout used to set: DefaultTolerationSeconds' injected tolerations.
            apiserver_args += [
                "--default-not-ready-toleration-seconds",
                str(opts.pod_eviction_timeout),
                "--default-unreachable-toleration-seconds",
                str(opts.pod_eviction_timeout),
            ]
        apiserver = ComponentState(
            "kube-apiserver",
            str(tools["kube-apiserver"]),
            apiserver_args,
            api_port,
            v,
            f"{api_url}/readyz",
        )
        cm_kc = str(d / "controller-manager.kubeconfig")
        cm_args = [
            str(tools["kube-controller-manager"]),
            "--kubeconfig",
            cm_kc,
            "--authentication-kubeconfig",
            cm_kc,
            "--authorization-kubeconfig",
            cm_kc,
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(cm_port),
            "--cert-dir",
            str(d / "controller-manager-certs"),
            "--leader-elect=false",
            "--use-service-account-credentials",
            "--service-account-private-key-file",
            str(pki.sa_key),
            "--root-ca-file",
            str(pki.ca.cert),
            "--cluster-signing-cert-file",
            str(pki.ca.cert),
            "--cluster-signing-key-file",
            str(pki.ca.key),
            "--cluster-name",
            f"kubecare-{self.name}",
            "--controllers",
            "*",
            "--profiling=false",
        ]
        if opts.node_monitor_grace_period is not None:
            grace = opts.node_monitor_grace_period
            cm_args += [
                "--node-monitor-grace-period",
                f"{grace}s",
                "--node-monitor-period",
                f"{max(1, min(5, grace // 4))}s",
            ]
        cm = ComponentState(
            "kube-controller-manager",
            cm_args[0],
            cm_args,
            cm_port,
            v,
            f"https://127.0.0.1:{cm_port}/healthz",
        )
        sched_kc = str(d / "scheduler.kubeconfig")
        sched_args = [
            str(tools["kube-scheduler"]),
            "--kubeconfig",
            sched_kc,
            "--authentication-kubeconfig",
            sched_kc,
            "--authorization-kubeconfig",
            sched_kc,
            "--bind-address",
            "127.0.0.1",
            "--secure-port",
            str(sched_port),
            "--cert-dir",
            str(d / "scheduler-certs"),
            "--leader-elect=false",
            "--profiling=false",
        ]
        sched = ComponentState(
            "kube-scheduler",
            sched_args[0],
            sched_args,
            sched_port,
            v,
            f"https://127.0.0.1:{sched_port}/healthz",
        )
        etcd.version = f"v{ETCD_VERSION}"
        return [etcd, apiserver, cm, sched]

    def _kwok(
        self, tools: Toolset, spec: NodeSpec, port: int, lease_seconds: int
    ) -> ComponentState:
        args = kwok_args(
            str(tools["kwok"]),
            spec,
            kubeconfig=self.dir / "kwok.kubeconfig",
            port=port,
            lease_seconds=lease_seconds,
        )
        return ComponentState(
            f"kwok-{spec.name}",
            args[0],
            args,
            port,
            f"v{KWOK_VERSION}",
            f"http://127.0.0.1:{port}/healthz",
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def up(self, opts: SandboxOptions, progress: Progress | None = None) -> float:
        """Build what is missing, start every component, wait for /readyz and Ready nodes.

        Returns the seconds the start took (binaries already built).
        """
        say = progress or (lambda _m: None)
        if opts.workers < 0:
            raise UsageError("--nodes must not be negative")
        version = resolve_version(opts.version)
        with self.locked():
            if self.exists():
                state = self.load()
                alive = self.running_components(state)
                if alive:
                    raise SandboxError(
                        f'sandbox "{self.name}" is already running ({", ".join(alive)}); '
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
            tools = await asyncio.to_thread(ensure_binaries, version, say)
            return await self._up_locked(opts, version, tools, say, time.monotonic())

    async def _up_locked(
        self, opts: SandboxOptions, version: str, tools: Toolset, say: Progress, t0: float
    ) -> float:
        say("creating certificates")
        create_pki(self.dir / "pki")
        comps = self._control_plane(tools, opts, version)
        api = comps[1]
        self._write_kubeconfigs(f"https://127.0.0.1:{api.port}")
        state = SandboxState(
            name=self.name,
            version=version,
            created=time.time(),
            options=asdict(opts),
            apiserver=f"https://127.0.0.1:{api.port}",
        )
        started: list[ComponentState] = []
        try:
            for comp in comps:
                say(f"starting {comp.name}")
                self._start(comp)
                started.append(comp)
                state.components[comp.name] = comp
                self.save(state)
                if comp.name in ("etcd", "kube-apiserver"):
                    await self._wait_healthy(comp, 90, started)
            for comp in comps[2:]:
                await self._wait_healthy(comp, 60, started)
            specs = node_specs(opts.workers)
            state.nodes = [s.name for s in specs]
            state.next_node_index = len(specs)
            say(f"registering {len(specs)} nodes")
            async with Kube(self.client_options()) as kube:
                await asyncio.gather(
                    *(
                        register_node(kube, node_manifest(s, version, max_pods=opts.max_pods))
                        for s in specs
                    )
                )
                await kube.request_json(
                    "POST",
                    "/api/v1/namespaces/kube-system/configmaps",
                    body=kubeadm_config(self.name, version, opts),
                    what="configmap kube-system/kubeadm-config",
                )
                ports = process.free_ports(len(specs))
                lease = _lease_seconds(opts.node_monitor_grace_period)
                for spec, port in zip(specs, ports, strict=True):
                    comp = self._kwok(tools, spec, port, lease)
                    self._start(comp)
                    started.append(comp)
                    state.components[comp.name] = comp
                self.save(state)
                say("waiting for nodes to become Ready")
                for comp in started[len(comps) :]:
                    await self._wait_healthy(comp, 30, started)
                await wait_ready(kube, state.nodes, timeout=opts.ready_timeout)
                await _wait_default_service_account(kube, opts.ready_timeout)
        except BaseException:
            self._abort(started)
            for comp in state.components.values():
                comp.pid = None
            self.save(state)
            raise
        self.save(state)
        return time.monotonic() - t0

    def down(self, *, keep: bool = False) -> list[str]:
        """Stop every process of the sandbox (by pid); remove its state unless ``keep``."""
        if not self.dir.exists():
            raise NotFound(f'sandbox "{self.name}" does not exist (no {self.dir})', status=404)
        stopped = []
        with self.locked():
            if self.exists():
                try:
                    state = self.load()
                except SandboxError:
                    state = None
                if state:
                    # kwoks first, etcd last: the reverse of the start order.
                    for comp in reversed(list(state.components.values())):
                        if process.stop(comp.pid, comp.binary):
                            stopped.append(comp.name)
                        comp.pid = None
                    if keep:
                        self.save(state)
            if not keep:
                shutil.rmtree(self.dir, ignore_errors=True)
        return stopped

    def status(self) -> tuple[SandboxState, list[ComponentStatus]]:
        state = self.load()
        out = []
        for comp in state.components.values():
            running = process.is_running(comp.pid, comp.binary)
            healthy = running and self.check_health(comp)
            out.append(
                ComponentStatus(
                    comp.name,
                    comp.pid if running else None,
                    comp.port,
                    comp.version,
                    running,
                    healthy,
                    "" if running else process.tail(self.log_path(comp.name), 10),
                )
            )
        return state, out

    def logs(self, component: str, lines: int = 50) -> str:
        state = self.load()
        if component not in state.components:
            raise NotFound(
                f'sandbox "{self.name}" has no component {component!r}; components: {", ".join(state.components)}',
                status=404,
            )
        return process.tail(self.log_path(component), lines)

    # -- hooks for maintenance scenarios ------------------------------------------------------
    def _component(self, state: SandboxState, name: str) -> ComponentState:
        comp = state.components.get(name)
        if comp is None:
            raise NotFound(
                f'sandbox "{self.name}" has no component {name!r}; components: {", ".join(state.components)}',
                status=404,
            )
        return comp

    def stop_component(self, name: str) -> bool:
        """Stop one component by pid (True if it was running)."""
        with self.locked():
            state = self.load()
            comp = self._component(state, name)
            was = process.stop(comp.pid, comp.binary)
            comp.pid = None
            self.save(state)
            return was

    async def start_component(
        self,
        name: str,
        *,
        binary: str | None = None,
        version: str | None = None,
        timeout: float = 90,
    ) -> None:
        """(Re)start one stopped component, optionally from another binary (e.g. the other minor)."""
        with self.locked():
            state = self.load()
            comp = self._component(state, name)
            if process.is_running(comp.pid, comp.binary):
                raise SandboxError(f"{name} is already running (pid {comp.pid}); stop it first")
            if binary:
                comp.args = [binary, *comp.args[1:]]
                comp.binary = binary
                comp.version = version or comp.version
            self._start(comp)
            self.save(state)
            await self._wait_healthy(comp, timeout, [comp])
            self.save(state)

    async def restart_component(
        self, name: str, *, binary: str | None = None, version: str | None = None
    ) -> None:
        self.stop_component(name)
        await self.start_component(name, binary=binary, version=version)

    def _node_component(self, state: SandboxState, node: str) -> ComponentState:
        if node not in state.nodes:
            raise NotFound(
                f'node "{node}" is not a node of sandbox "{self.name}"; nodes: {", ".join(state.nodes)}',
                status=404,
            )
        return self._component(state, f"kwok-{node}")

    async def node_down(self, node: str, *, wait: bool = False, timeout: float = 180) -> None:
        """Stop the node's kwok: its lease and status stop being renewed, as when a kubelet dies."""
        state = self.load()
        comp = self._node_component(state, node)
        self.stop_component(comp.name)
        if wait:
            async with Kube(self.client_options()) as kube:
                await wait_ready(kube, [node], ready=False, timeout=timeout)

    async def node_up(
        self, node: str, *, wait: bool = True, reboot: bool = False, timeout: float = 60
    ) -> None:
        """Start the node's kwok again; the node reports Ready once more.

        With ``reboot`` the node comes back with a new boot ID, as after a real reboot.
        """
        state = self.load()
        comp = self._node_component(state, node)
        async with Kube(self.client_options()) as kube:
            if reboot:
                await set_boot_id(kube, node)
            if not process.is_running(comp.pid, comp.binary):
                await self.start_component(comp.name, timeout=30)
            if wait:
                await wait_ready(kube, [node], timeout=timeout)

    async def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        taints: list[JSON] | None = None,
        timeout: float = 60,
    ) -> None:
        """Register one more worker (with its own kwok) in a running sandbox and wait until Ready.

        Tests use it to get a node of their own, so draining it touches nothing else.
        """
        with self.locked():
            state = self.load()
            if name in state.nodes:
                raise SandboxError(f'sandbox "{self.name}" already has a node "{name}"')
            spec = NodeSpec(name, state.next_node_index, False)
            manifest = node_manifest(
                spec, state.version, max_pods=int(state.options.get("max_pods", 500))
            )
            manifest["metadata"]["labels"].update(labels or {})
            manifest["spec"]["taints"] = list(taints or [])
            tools, _ = find_toolset(state.version)
            async with Kube(self.client_options()) as kube:
                await register_node(kube, manifest)
                lease = _lease_seconds(state.options.get("node_monitor_grace_period"))
                comp = self._kwok(tools, spec, process.free_ports(1)[0], lease)
                self._start(comp)
                state.components[comp.name] = comp
                state.nodes.append(name)
                state.next_node_index += 1
                self.save(state)
                await self._wait_healthy(comp, 30, [comp])
                await wait_ready(kube, [name], timeout=timeout)

    async def remove_node(self, name: str) -> None:
        """Stop the node's kwok and delete the Node object (its pods are garbage-collected)."""
        with self.locked():
            state = self.load()
            comp = self._node_component(state, name)
            process.stop(comp.pid, comp.binary)
            del state.components[comp.name]
            state.nodes.remove(name)
            self.save(state)
        async with Kube(self.client_options()) as kube:
            with contextlib.suppress(NotFound):
                await kube.request_json("DELETE", f"/api/v1/nodes/{name}", what=f'node "{name}"')

    def memory(self) -> dict[str, int]:
        """Resident memory (bytes) of each running component."""
        state = self.load()
        return {
            c.name: process.rss_bytes(c.pid)
            for c in state.components.values()
            if process.is_running(c.pid, c.binary)
        }


def kubeadm_config(name: str, version: str, opts: SandboxOptions) -> JSON:
    """kube-system/kubeadm-config as kubeadm writes it, with the flags this sandbox really uses,
    so tools (kubecare outage among them) can read the cluster's settings as on a kubeadm cluster."""
    api_args, cm_args = [], []
    if opts.pod_eviction_timeout is not None:
        for flag in (
            "default-not-ready-toleration-seconds",
            "default-unreachable-toleration-seconds",
        ):
            api_args.append({"name": flag, "value": str(opts.pod_eviction_timeout)})
    if opts.node_monitor_grace_period is not None:
        cm_args.append(
            {"name": "node-monitor-grace-period", "value": f"{opts.node_monitor_grace_period}s"}
        )
    cluster_configuration = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "clusterName": f"kubecare-{name}",
        "kubernetesVersion": f"v{version}",
        "apiServer": {"extraArgs": api_args},
        "controllerManager": {"extraArgs": cm_args},
        "networking": {"serviceSubnet": "10.96.0.0/16", "podSubnet": "10.244.0.0/16"},
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": yaml.safe_dump(cluster_configuration, sort_keys=False)},
    }


def _lease_seconds(grace: int | None) -> int:
    """kwok renews the lease every quarter of its duration; keep that well inside the grace period."""
    if grace is None:
        return 40
    return max(4, min(40, grace))


async def _wait_default_service_account(kube: Kube, timeout: float) -> None:
    """Pods are refused until the service-account controller has made `default/default`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await kube.get_json(
                "/api/v1/namespaces/default/serviceaccounts/default",
                what="serviceaccount default/default",
            )
            return
        except NotFound:
            if time.monotonic() > deadline:
                raise SandboxError(
                    "the service-account controller did not create default/default; see kubecare sandbox logs kube-controller-manager"
                ) from None
            await asyncio.sleep(0.2)
