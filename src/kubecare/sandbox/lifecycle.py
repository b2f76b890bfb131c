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
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubecare.errors import NotFound, SandboxError, UsageError
from kubecare.files import write_atomic
from kubecare.kube import JSON, ClientOptions, Kube
from kubecare.sandbox import kubeadm_init, network, process
from kubecare.sandbox.binaries import (
    KWOK_VERSION,
    Toolset,
    binary_path,
    ensure_binaries,
    find_toolset,
    resolve_version,
)
from kubecare.sandbox.components import (
    DEFAULT_PORTS,
    ClusterShape,
    ControlPlaneNode,
    cluster_configuration,
    components,
    control_plane,
    etcd,
    sandbox_extra_args,
)
from kubecare.sandbox.kubeconfigs import sandbox_kubeconfig, write, write_node_files
from kubecare.sandbox.machines import NodeMachines
from kubecare.sandbox.manifests import render
from kubecare.sandbox.nodes import (
    KWOK_LABEL,
    NodeSpec,
    kwok_args,
    node_manifest,
    register_node,
    set_boot_id,
    set_kwok_managed,
    wait_ready,
)
from kubecare.sandbox.pki import SandboxPKI, create_cluster_pki
from kubecare.sandbox.state import ComponentState, SandboxState, state_root

Progress = Callable[[str], None]
STATIC = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
_NAME_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-")
# Every request at Metadata level, logged once (when the response is complete): enough to count
# requests per user agent, which is how benchmarks compare tools on the server's side.
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
"""


@dataclass(frozen=True)
class SandboxOptions:
    """How to start a sandbox."""

    workers: int = 3
    control_planes: int = 1
    version: str | None = None  # Kubernetes version; default the newest supported
    pod_eviction_timeout: int | None = None  # seconds; apiserver default toleration (300)
    node_monitor_grace_period: int | None = None  # seconds; controller-manager default (50)
    max_pods: int = 500
    ready_timeout: float = 180.0
    audit_log: bool = False  # the apiserver writes logs/audit/audit.log
    crash_backoff: float = 10.0  # the runner's first restart delay (the kubelet's is 10 s)


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


def control_plane_names(count: int) -> list[str]:
    return ["control-plane"] if count == 1 else [f"control-plane-{i}" for i in range(1, count + 1)]


class Sandbox(NodeMachines):
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
            tools = await asyncio.to_thread(ensure_binaries, version, say)
            return await self._up_locked(opts, version, tools, say, time.monotonic())

    def _shape(self, opts: SandboxOptions, version: str) -> tuple[ClusterShape, int]:
        """Each node at its 192.0.2.x address on kubeadm's ports; the host's loopback ports
        (the cluster endpoint's, then each node's forwards) picked free."""
        names = control_plane_names(opts.control_planes)
        ha = len(names) > 1
        per = len(network.FORWARDED)
        free = process.free_ports(1 + per * len(names))
        nodes = []
        for i, name in enumerate(names):
            forward = tuple(
                zip(network.FORWARDED, free[1 + per * i : 1 + per * (i + 1)], strict=True)
            )
            nodes.append(
                ControlPlaneNode(
                    name, DEFAULT_PORTS, self.node_dir(name), network.node_ip(i), forward
                )
            )
        balancer = free[0]
        # kubeadm's controlPlaneEndpoint: the load balancer's address with several control
        # planes (kubeadm requires one for HA), else the one node's
        endpoint = f"{network.SWITCH_IP if ha else nodes[0].ip}:{DEFAULT_PORTS.apiserver}"
        extra = sandbox_extra_args(
            pod_eviction_timeout=opts.pod_eviction_timeout,
            node_monitor_grace_period=opts.node_monitor_grace_period,
            audit=opts.audit_log,
        )
        return ClusterShape(
            version, tuple(nodes), endpoint, extra, self.dir, opts.audit_log
        ), balancer

    async def _up_locked(
        self, opts: SandboxOptions, version: str, tools: Toolset, say: Progress, t0: float
    ) -> float:
        shape, balancer = self._shape(opts, version)
        host = f"https://127.0.0.1:{balancer}"  # the cluster endpoint, as the host reaches it
        say("creating certificates and the kubeadm tree")
        endpoint_ip = shape.endpoint.rsplit(":", 1)[0]
        pkis = create_cluster_pki(
            self.dir / "clients",
            [(n.name, n.pki) for n in shape.nodes],
            addresses={n.name: [n.ip, endpoint_ip] for n in shape.nodes},
        )
        for node, pki in zip(shape.nodes, pkis, strict=True):
            write_node_files(
                node.kubernetes_dir,
                pki,
                node=node.name,
                endpoint=f"https://{shape.endpoint}",
                local=f"https://{node.ip}:{node.ports.apiserver}",
            )
            node.etcd_data.mkdir(parents=True, exist_ok=True)
            node.etcd_data.chmod(0o700)
            if opts.audit_log:
                write_atomic(node.kubernetes_dir / "audit-policy.yaml", AUDIT_POLICY, mode=0o600)
                (self.dir / "logs" / "audit").mkdir(parents=True, exist_ok=True)
        write(self.kubeconfig, sandbox_kubeconfig(host, pkis[0], self.name))
        write(
            self.dir / "kwok.kubeconfig",
            sandbox_kubeconfig(host, pkis[0], self.name, client="kwok"),
        )
        write(
            self.super_admin(),
            sandbox_kubeconfig(host, pkis[0], self.name, client="super-admin"),
        )
        options = asdict(opts)
        state = SandboxState(
            name=self.name,
            version=version,
            created=time.time(),
            options=options,
            apiserver=host,
            control_planes=[
                {
                    "node": n.name,
                    "ip": n.ip,
                    "node_ip": n.ip,  # the Node's address, as on its mirror pods
                    "manifests": str(n.manifests),
                    "ports": asdict(n.ports),  # in the node's own network
                    "forward": {str(port): fw for port, fw in n.forward},  # port -> host's
                    "runner_kubeconfig": str(self.super_admin()),
                }
                for n in shape.nodes
            ],
            balancer_port=balancer,
            endpoint=shape.endpoint,
        )
        # kubeadm init on the first node: its four static pods; kubeadm join --control-plane on
        # the others: apiserver, controller-manager and scheduler now, etcd once it is added.
        for i, node in enumerate(shape.nodes):
            node.manifests.mkdir(parents=True, exist_ok=True)
            for comp in components(shape, node) if i == 0 else control_plane(shape, node):
                write_atomic(node.manifests / f"{comp.name}.yaml", render(comp), mode=0o600)
        self.save(state)
        try:
            say("creating the network: a namespace per control-plane node on 192.0.2.0/24")
            holders = await asyncio.to_thread(
                network.create,
                [(i, n.name) for i, n in enumerate(shape.nodes)],
                lambda node: self._start_holder(state, node),
            )
            assert set(holders) == {"switch", *(n.name for n in shape.nodes)}
            self.save(state)
            say(
                "starting the static pod runner (etcd, kube-apiserver, controller-manager, scheduler)"
            )
            state.components["runner"] = self._start_runner()
            self.save(state)
            async with Kube(
                ClientOptions(kubeconfig=str(self.super_admin()), connect_timeout=2)
            ) as kube:
                await self._join_etcd(shape, say)
                await self._wait_control_plane(state, {"etcd", "kube-apiserver"}, timeout=120)
                await self._wait_apiserver(kube, state, timeout=30)
                say(
                    "running kubeadm's init phases (upload-config, bootstrap-token, addon: "
                    "CoreDNS, kube-proxy) and registering nodes"
                )
                await _bootstrap(kube)
                first = shape.nodes[0]
                token = kubeadm_init.bootstrap_token()
                config = kubeadm_init.write_config(
                    self.dir,
                    kubeadm_init.init_configuration(
                        first.name, first.ip, first.ports.apiserver, token
                    ),
                    cluster_configuration(shape),
                )
                await kubeadm_init.run_phases(
                    tools["kubeadm"],
                    config,
                    first.kubernetes_dir / "super-admin.conf",
                    self.log_path("kubeadm"),
                    netns=self.netns(state, first.name),
                )
                specs = [NodeSpec(n.name, i, True) for i, n in enumerate(shape.nodes)] + [
                    NodeSpec(f"worker-{i}", len(shape.nodes) + i - 1, False)
                    for i in range(1, opts.workers + 1)
                ]
                state.nodes = [s.name for s in specs]
                state.next_node_index = len(specs)
                await _register_all(
                    kube, [node_manifest(s, version, max_pods=opts.max_pods) for s in specs]
                )
                state.components["kwok"] = self._start_kwok(tools, opts)
                self.save(state)
                await self._kubelet_start(shape, token, say)
                say(f"waiting for {len(specs)} nodes and the control plane's mirror pods")
                await wait_ready(kube, state.nodes, timeout=opts.ready_timeout)
                await _wait_default_service_account(kube, opts.ready_timeout)
                await self._wait_control_plane(state, set(STATIC), timeout=opts.ready_timeout)
                await self._wait_mirrors(kube, 4 * len(shape.nodes), opts.ready_timeout)
                await _wait_addons(kube, len(specs), opts.ready_timeout)
        except BaseException:
            self._stop_all(state)
            self.save(state)
            raise
        self.save(state)
        return time.monotonic() - t0

    async def _kubelet_start(self, shape: ClusterShape, token: str, say: Progress) -> None:
        """Each control plane's var/lib/kubelet, written by kubeadm's kubelet-start phase in
        the node's own view — which takes root (a private mount namespace); without it the
        files are left out and ``sandbox exec`` / kubeadm upgrade say they need root."""
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            say("not root: skipping kubeadm's kubelet-start phase (var/lib/kubelet)")
            return
        say("running kubeadm's kubelet-start phase on each control plane (var/lib/kubelet)")

        async def one(node: ControlPlaneNode) -> None:
            config = kubeadm_init.write_config(
                self.dir,
                kubeadm_init.init_configuration(node.name, node.ip, node.ports.apiserver, token),
                cluster_configuration(shape),
                name=f"kubelet-start-{node.name}",
            )
            view = self.node_view(node.name)
            await kubeadm_init.kubelet_start(view, config, self.log_path("kubeadm"))

        try:
            await asyncio.gather(*(one(n) for n in shape.nodes))
        except SandboxError as e:
            if "kubecare sandbox exec: cannot" not in str(e):
                raise  # kubeadm itself failed: that is the sandbox's problem to report
            # The machine cannot make the mount namespace (no overlayfs, e.g. inside a
            # container): the cluster works without these files; say so and go on.
            say(f"skipping kubeadm's kubelet-start phase: {e}")

    async def _join_etcd(self, shape: ClusterShape, say: Progress) -> None:
        """The first etcd up alone; each other control plane's member added as kubeadm's join
        adds it (see :mod:`kubecare.sandbox.etcd_join`), one after another."""
        from kubecare.sandbox import etcd_join

        first = shape.nodes[0]
        cluster = etcd_join.endpoint(first.host_port(first.ports.etcd_client), first.pki)
        await etcd_join.wait_healthy(cluster, 60, f"etcd on {first.name}")
        for node in shape.nodes[1:]:
            say(f"joining etcd member {node.name} (learner, then promoted, as kubeadm does)")

            def write_manifest(
                joined: list[tuple[str, str]], node: ControlPlaneNode = node
            ) -> None:
                comp = etcd(shape, node, joined)
                write_atomic(node.manifests / "etcd.yaml", render(comp), mode=0o600)

            await etcd_join.join(
                cluster,
                node.name,
                node.etcd_peer_url,
                etcd_join.endpoint(node.host_port(node.ports.etcd_client), node.pki),
                write_manifest,
                timeout=60,
            )

    def _start_holder(self, state: SandboxState, node: str) -> int:
        """The process that keeps ``node``'s network namespace (see :mod:`.network`)."""
        argv = network.holder_argv()
        pid = process.spawn(argv, self.log_path("network"), cwd=self.dir)
        state.components[f"netns-{node}"] = ComponentState(
            f"netns-{node}", "sleep", argv, 0, "", "", pid
        )
        self.save(state)  # at once: a `sandbox up` killed now must not leave it unrecorded
        return pid

    def _start_runner(self) -> ComponentState:
        argv = [sys.executable, "-m", "kubecare.sandbox.runner", str(self.dir)]
        # In the state dir: a relative path in a manifest resolves inside the sandbox's tree,
        # not in whatever directory `sandbox up` was run from.
        pid = process.spawn(argv, self.log_path("runner"), cwd=self.dir)
        return ComponentState("runner", sys.executable, argv, 0, "", "", pid)

    def _start_kwok(self, tools: Toolset, opts: SandboxOptions) -> ComponentState:
        port = process.free_ports(1)[0]
        args = kwok_args(
            str(tools["kwok"]),
            kubeconfig=self.dir / "kwok.kubeconfig",
            port=port,
            lease_seconds=_lease_seconds(opts.node_monitor_grace_period),
        )
        pid = process.spawn(args, self.log_path("kwok"))
        return ComponentState(
            "kwok", args[0], args, port, f"v{KWOK_VERSION}", f"http://127.0.0.1:{port}/healthz", pid
        )

    async def _wait_apiserver(self, kube: Kube, state: SandboxState, timeout: float) -> None:
        """/readyz through the cluster's endpoint (the balancer, with several control planes)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                async with asyncio.timeout(3):
                    resp = await kube.http.get("/readyz")
                if resp.status_code == 200:
                    return
            except Exception:  # not up yet: keep polling
                pass
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"kube-apiserver did not become ready within {timeout:.0f}s.\n"
                    + self._failure_detail()
                )
            await asyncio.sleep(0.2)

    async def _wait_control_plane(
        self, state: SandboxState, wanted: set[str], timeout: float
    ) -> None:
        """Wait until the runner runs ``wanted`` on every control-plane node, ready (kubeadm init
        waits for the same). A component that crashes twice meanwhile fails the start at once,
        named, with its log."""
        deadline = time.monotonic() + timeout
        runner = state.components["runner"]
        count = len(wanted) * len(state.control_planes)
        while True:
            if not process.is_running(runner.pid, runner.binary):
                raise SandboxError(
                    "the static pod runner exited during start-up. Last log lines "
                    f"({self.log_path('runner')}):\n" + process.tail(self.log_path("runner"), 15)
                )
            pods = [
                p for p in self.runner_report().get("pods") or [] if p.get("component") in wanted
            ]
            for p in pods:
                if (
                    p.get("reason") in ("ErrImagePull", "InvalidManifest")
                    or int(p.get("restarts") or 0) >= 2
                ):
                    name = f"{p['name']}-{p['node']}"
                    raise SandboxError(
                        f"{p['component']} exited during start-up ({p.get('error') or p.get('reason')}). "
                        f"Last log lines ({self.log_path(name)}):\n"
                        + process.tail(self.log_path(name), 15)
                    )
            if len(pods) >= count and all(p.get("running") and p.get("ready") for p in pods):
                return
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"the control plane did not become ready within {timeout:.0f}s.\n"
                    + self._failure_detail()
                )
            await asyncio.sleep(0.2)

    def _failure_detail(self) -> str:
        lines = []
        for p in self.runner_report().get("pods") or []:
            if not p.get("running") or p.get("error"):
                log = self.log_path(f"{p['name']}-{p['node']}")
                lines.append(f"{p['name']}-{p['node']}: {p.get('error') or 'not running'}; {log}:")
                lines.append(process.tail(log, 8))
        return "\n".join(lines) or process.tail(self.log_path("runner"), 15)

    async def _wait_mirrors(self, kube: Kube, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            items, _ = await kube.list_all(
                "/api/v1/namespaces/kube-system/pods",
                params={"labelSelector": "tier=control-plane"},
            )
            if len(items) >= count:
                return
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"the runner made {len(items)} of {count} mirror pods in {timeout:.0f}s"
                )
            await asyncio.sleep(0.2)

    def _stop_all(self, state: SandboxState) -> list[str]:
        """Stop the runner (it stops its static pods, etcd last), kwok, and anything left over."""
        stopped = []
        runner = state.components.get("runner")
        if runner and process.stop(runner.pid, runner.binary, timeout=40):
            stopped.append("runner")
        for comp in state.components.values():
            if comp.name != "runner" and process.stop(comp.pid, comp.binary):
                stopped.append(comp.name)
            comp.pid = None
        stopped += self._stop_leftovers()
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

    # -- static pods: what a kubeadm node's admin does to them -------------------------------
    def _node(self, state: SandboxState, node: str | None) -> dict[str, Any]:
        if node is None:
            return state.control_planes[0]
        for cp in state.control_planes:
            if cp["node"] == node:
                return cp
        raise NotFound(
            f'"{node}" is not a control-plane node of sandbox "{self.name}"; control planes: '
            + ", ".join(cp["node"] for cp in state.control_planes),
            status=404,
        )

    def manifest_path(self, component: str, node: str | None = None) -> Path:
        """Where ``component``'s static pod manifest lives (``etc/kubernetes/manifests/``)."""
        if component not in STATIC:
            raise NotFound(
                f"{component!r} is not a static pod (one of: {', '.join(STATIC)})", status=404
            )
        return Path(self._node(self.load(), node)["manifests"]) / f"{component}.yaml"

    def _parked(self, manifest: Path) -> Path:
        # Outside manifests/, so the runner ignores it; inside the node's tree, as on a kubeadm
        # node where an admin moves the file one directory up.
        return manifest.parent.parent / f"{manifest.name}.stopped"

    def stop_component(self, name: str, *, node: str | None = None, timeout: float = 30) -> bool:
        """Stop a static pod by moving its manifest out of manifests/ (as on a kubeadm node) and
        wait until its process has exited; returns whether it was running. ``kwok`` and
        ``runner`` are processes, stopped by pid."""
        state = self.load()
        if name in state.components:
            with self.locked():
                comp = state.components[name]
                was = process.stop(comp.pid, comp.binary)
                comp.pid = None
                self.save(state)
                return was
        manifest = self.manifest_path(name, node)
        if not manifest.exists():
            return False
        was = bool((self._runner_pod(name, node) or {}).get("running"))
        os.replace(manifest, self._parked(manifest))
        # Until its process has exited (not only left the manifests), so a start right after
        # never races the old process for its ports.
        deadline = time.monotonic() + timeout
        while self._runner_pods(name, node):
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"{name} did not stop within {timeout:.0f}s; see kubecare sandbox logs runner"
                )
            time.sleep(0.2)
        return was

    async def start_component(
        self,
        name: str,
        *,
        version: str | None = None,
        node: str | None = None,
        timeout: float = 90,
    ) -> None:
        """Start a stopped static pod (its manifest moved back), optionally at another version
        (the image tag changed, as kubeadm upgrade does); wait until it is running and ready."""
        state = self.load()
        if name in state.components:
            raise SandboxError(
                f"{name} is a process of the sandbox, not a static pod; restart the sandbox"
            )
        manifest = self.manifest_path(name, node)
        parked = self._parked(manifest)
        if parked.exists():
            os.replace(parked, manifest)
        if version is not None:
            self.set_image(name, version, node=node)
        want = self._image_for(name, version) if version else None
        await asyncio.to_thread(
            self._wait_runner,
            name,
            node,
            lambda p: (
                p is not None
                and p.get("running")
                and p.get("ready")
                and (want is None or p.get("image") == want)
            ),
            timeout,
            "start",
        )

    async def restart_component(
        self, name: str, *, version: str | None = None, node: str | None = None
    ) -> None:
        """Restart a static pod: at another version by changing its image tag, else by moving
        its manifest out and back."""
        current = self._runner_pod(name, node)
        if (
            version is not None
            and current is not None
            and current.get("image") != self._image_for(name, version)
        ):
            await self.start_component(name, version=version, node=node)
            return
        await asyncio.to_thread(self.stop_component, name, node=node)
        await self.start_component(name, version=version, node=node)

    def _image_for(self, component: str, version: str) -> str:
        v = resolve_version(version)
        if component == "etcd":
            from kubecare.versions.kubeadm import etcd_tag

            return f"registry.k8s.io/etcd:{etcd_tag(int(v.split('.')[1]))}"
        return f"registry.k8s.io/{component}:v{v}"

    def set_image(self, component: str, version: str, *, node: str | None = None) -> Path:
        """Rewrite the manifest's image for Kubernetes ``version`` (etcd: the tag kubeadm pins for
        it), atomically, as ``kubeadm upgrade apply`` does; the runner restarts the component."""
        import yaml

        manifest = self.manifest_path(component, node)
        doc = yaml.safe_load(manifest.read_text())
        doc["spec"]["containers"][0]["image"] = self._image_for(component, version)
        write_atomic(manifest, yaml.safe_dump(doc, sort_keys=False), mode=0o600)
        return manifest

    def _runner_pods(self, name: str, node: str | None) -> list[dict[str, Any]]:
        """What the runner reports for ``name`` on ``node``: the current pod first, then any
        earlier process of it that is still terminating."""
        target = self._node(self.load(), node)["node"]
        pods = [
            dict(p)
            for p in self.runner_report().get("pods") or []
            if p.get("node") == target
            and p.get("component") == name
            and p.get("file", "").endswith(".yaml")
        ]
        return sorted(pods, key=lambda p: p.get("reason") == "Terminating")

    def _runner_pod(self, name: str, node: str | None) -> dict[str, Any] | None:
        """The current (not terminating) pod of ``name`` on ``node``."""
        current = [p for p in self._runner_pods(name, node) if p.get("reason") != "Terminating"]
        return current[0] if current else None

    def _wait_runner(
        self,
        name: str,
        node: str | None,
        done: Callable[[dict[str, Any] | None], Any],
        timeout: float,
        what: str,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pod = self._runner_pod(name, node)
            if done(pod):
                return
            if time.monotonic() > deadline:
                detail = (pod or {}).get("error") or "see kubecare sandbox logs " + name
                raise SandboxError(f"{name} did not {what} within {timeout:.0f}s: {detail}")
            time.sleep(0.2)

    def record_version(self, version: str) -> None:
        """Remember the Kubernetes version the control plane now runs (nodes added later
        register with it), as after ``kubeadm upgrade apply``."""
        with self.locked(wait=30):
            state = self.load()
            new = resolve_version(version)
            if new != state.version:
                # what each node has installed stays what it was (installed() falls back to
                # the sandbox's version for a node that never had an install of its own)
                for node in state.nodes:
                    mine = state.installed.setdefault(node, {})
                    for package in ("kubeadm", "kubelet"):
                        mine.setdefault(package, state.version)
            state.version = new
            self.save(state)

    def _check_node(self, state: SandboxState, node: str) -> None:
        if node not in state.nodes:
            raise NotFound(
                f'node "{node}" is not a node of sandbox "{self.name}"; nodes: {", ".join(state.nodes)}',
                status=404,
            )

    async def node_down(self, node: str, *, wait: bool = False, timeout: float = 180) -> None:
        """The node stops reporting (kwok stops managing it: no lease renewals, no status), as
        when its kubelet dies; the node lifecycle controller reacts for real."""
        state = self.load()
        self._check_node(state, node)
        async with Kube(self.client_options()) as kube:
            await set_kwok_managed(kube, node, False)
            if wait:
                await wait_ready(kube, [node], ready=False, timeout=timeout)

    async def node_up(
        self, node: str, *, wait: bool = True, reboot: bool = False, timeout: float = 60
    ) -> None:
        """The node reports again; with ``reboot`` it comes back with a new boot ID."""
        state = self.load()
        self._check_node(state, node)
        async with Kube(self.client_options()) as kube:
            if reboot:
                await set_boot_id(kube, node)
            await set_kwok_managed(kube, node, True)
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
        """Register one more worker in a running sandbox and wait until it is Ready.

        Tests use it to get a node of their own, so draining it touches nothing else.
        """
        with self.locked(wait=30):
            state = self.load()
            if name in state.nodes:
                raise SandboxError(f'sandbox "{self.name}" already has a node "{name}"')
            spec = NodeSpec(name, state.next_node_index, False)
            manifest = node_manifest(
                spec, state.version, max_pods=int(state.options.get("max_pods", 500))
            )
            manifest["metadata"]["labels"].update(labels or {})
            manifest["spec"]["taints"] = list(taints or [])
            state.nodes.append(name)
            state.next_node_index += 1
            self.save(state)
        async with Kube(self.client_options()) as kube:
            await register_node(kube, manifest)
            await wait_ready(kube, [name], timeout=timeout)

    async def remove_node(self, name: str) -> None:
        """Delete the Node object (its pods are garbage-collected)."""
        with self.locked(wait=30):
            state = self.load()
            self._check_node(state, name)
            state.nodes.remove(name)
            state.installed.pop(name, None)
            self.save(state)
        if not any(c["node"] == name for c in state.control_planes):
            # a worker's tree (sandbox exec made it) goes with the machine
            await asyncio.to_thread(shutil.rmtree, self.node_dir(name), True)
        async with Kube(self.client_options()) as kube:
            with contextlib.suppress(NotFound):
                await kube.request_json("DELETE", f"/api/v1/nodes/{name}", what=f'node "{name}"')


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


async def _bootstrap(kube: Kube) -> None:
    """What ``kubeadm init`` does before its phases and kubecare relies on: the
    ``kubeadm:cluster-admins`` binding (admin.conf's group; kubeadm creates it with
    super-admin.conf when admin.conf is first used)."""
    rbac = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    with contextlib.suppress(Exception):
        await kube.request_json(
            "POST",
            rbac,
            body={
                "metadata": {"name": "kubeadm:cluster-admins"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Group",
                        "name": "kubeadm:cluster-admins",
                    }
                ],
            },
        )


async def _register_all(kube: Kube, manifests: list[JSON]) -> None:
    sem = asyncio.Semaphore(20)

    async def one(m: JSON) -> None:
        async with sem:
            await register_node(kube, m)

    await asyncio.gather(*(one(m) for m in manifests))


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


async def _wait_addons(kube: Kube, nodes: int, timeout: float) -> None:
    """kubeadm's addons running: a kube-proxy pod Ready on every node, CoreDNS available. A
    sandbox handed over earlier would have pods still being created under the first test."""
    deadline = time.monotonic() + timeout
    ds_path = "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"
    dns_path = "/apis/apps/v1/namespaces/kube-system/deployments/coredns"
    while True:
        ds = await kube.get_json(ds_path, what="daemonset kube-system/kube-proxy")
        dns = await kube.get_json(dns_path, what="deployment kube-system/coredns")
        st, dst = ds.get("status", {}), dns.get("status", {})
        proxies = st.get("numberReady", 0)
        want_dns = dns.get("spec", {}).get("replicas", 1)
        if (
            proxies == nodes
            and st.get("updatedNumberScheduled", 0) == nodes
            and dst.get("availableReplicas", 0) == want_dns
        ):
            return
        if time.monotonic() > deadline:
            raise SandboxError(
                f"kubeadm's addons did not come up within {timeout:.0f}s: kube-proxy ready on "
                f"{proxies}/{nodes} nodes, CoreDNS {dst.get('availableReplicas', 0)}/{want_dns} "
                "available; see kubecare sandbox logs kube-controller-manager and kwok"
            )
        await asyncio.sleep(0.2)


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
