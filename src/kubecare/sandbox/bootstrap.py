"""The start of a sandbox, as ``kubeadm init`` and ``kubeadm join --control-plane`` do it.

:meth:`Bootstrap._up_locked` has the real kubeadm write each control-plane node's tree in that
node's own view (:mod:`.kubeadm_init`: ``certs``, ``kubeconfig`` with the node's own identity,
``etcd local`` and ``control-plane`` — a joiner handed the cluster's CAs first), so the PKI,
kubeconfigs and static pod manifests are kubeadm's by construction; it issues the host's own
client certificates from kubeadm's CA, creates the network (:mod:`.network`), starts the static
pod runner, runs kubeadm's API-side init phases (ConfigMaps, RBAC, bootstrap token, CoreDNS and
kube-proxy), registers the nodes, starts kwok, runs each control plane's ``kubelet-start``, has
kubeadm add the other etcd members one by one (``join phase etcd-join``), and waits for it all.
Mixed into :class:`~.lifecycle.Sandbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.errors import NotFound, SandboxError
from kubecare.files import write_atomic
from kubecare.kube import JSON, ClientOptions, Kube
from kubecare.sandbox import kubeadm_init, network, process
from kubecare.sandbox.binaries import KWOK_VERSION, Toolset
from kubecare.sandbox.components import (
    DEFAULT_PORTS,
    ClusterShape,
    ControlPlaneNode,
    cluster_configuration,
    sandbox_extra_args,
)
from kubecare.sandbox.kubeconfigs import sandbox_kubeconfig, write
from kubecare.sandbox.nodes import (
    NodeSpec,
    kwok_args,
    node_manifest,
    register_node,
    wait_ready,
)
from kubecare.sandbox.pki import SandboxPKI, issue_clients
from kubecare.sandbox.state import ComponentState, SandboxState
from kubecare.sandbox.staticpods import COMPONENTS as STATIC

if TYPE_CHECKING:
    from kubecare.sandbox.nodeshell import NodeView

Progress = Callable[[str], None]

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
    real_nodes: int = 0  # workers with a real kubelet and containerd (real-1, real-2, ...)
    etcd_quota: int | None = None  # etcd's --quota-backend-bytes (None: etcd's 2 GiB)
    cert_validity: int | None = None  # seconds kubeadm's leaf certificates are valid (1 year)


def control_plane_names(count: int) -> list[str]:
    return ["control-plane"] if count == 1 else [f"control-plane-{i}" for i in range(1, count + 1)]


class Bootstrap:
    """The start-up half of :class:`~.lifecycle.Sandbox`."""

    if TYPE_CHECKING:  # what the Sandbox it is mixed into provides
        name: str
        dir: Path

        @property
        def kubeconfig(self) -> Path: ...
        def save(self, state: SandboxState) -> None: ...
        def node_dir(self, node: str) -> Path: ...
        def log_path(self, component: str) -> Path: ...
        def runner_report(self) -> dict[str, Any]: ...
        def super_admin(self) -> Path: ...
        def netns(self, state: SandboxState, node: str) -> str | None: ...
        def node_view(self, node: str) -> NodeView: ...
        def _stop_all(self, state: SandboxState) -> list[str]: ...
        async def add_real_node(
            self, node: str, *, timeout: float = 120, state: SandboxState | None = None
        ) -> float: ...

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
            etcd_quota=opts.etcd_quota,
        )
        return ClusterShape(
            version,
            tuple(nodes),
            endpoint,
            extra,
            self.dir,
            opts.audit_log,
            cert_validity=opts.cert_validity,
        ), balancer

    async def _up_locked(
        self, opts: SandboxOptions, version: str, tools: Toolset, say: Progress, t0: float
    ) -> float:
        shape, balancer = self._shape(opts, version)
        host = f"https://127.0.0.1:{balancer}"  # the cluster endpoint, as the host reaches it
        token = kubeadm_init.bootstrap_token()
        cluster = cluster_configuration(shape)
        configs = {
            n.name: kubeadm_init.write_config(
                self.dir,
                kubeadm_init.init_configuration(n.name, n.ip, n.ports.apiserver, token),
                cluster,
                name="init" if i == 0 else f"init-{n.name}",
            )
            for i, n in enumerate(shape.nodes)
        }
        for node in shape.nodes:
            if opts.audit_log:
                node.kubernetes_dir.mkdir(parents=True, exist_ok=True)
                write_atomic(node.kubernetes_dir / "audit-policy.yaml", AUDIT_POLICY, mode=0o600)
                (self.dir / "logs" / "audit").mkdir(parents=True, exist_ok=True)
        say("kubeadm init phase certs, kubeconfig, etcd, control-plane (each node's own tree)")
        await self._node_phases(shape, tools, configs)
        first = SandboxPKI(shape.nodes[0].pki, self.dir / "clients")
        issue_clients(first)
        write(self.kubeconfig, sandbox_kubeconfig(host, first, self.name))
        write(
            self.dir / "kwok.kubeconfig", sandbox_kubeconfig(host, first, self.name, client="kwok")
        )
        write(self.super_admin(), sandbox_kubeconfig(host, first, self.name, client="super-admin"))
        specs = [NodeSpec(n.name, i, True) for i, n in enumerate(shape.nodes)] + [
            NodeSpec(f"worker-{i}", len(shape.nodes) + i - 1, False)
            for i in range(1, opts.workers + 1)
        ]
        state = SandboxState(
            name=self.name,
            version=version,
            created=time.time(),
            options=asdict(opts),
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
            nodes=[s.name for s in specs],
            next_node_index=len(specs),
            balancer_port=balancer,
            endpoint=shape.endpoint,
        )
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
                await self._wait_control_plane(
                    state, {"etcd", "kube-apiserver"}, timeout=120, nodes=[shape.nodes[0].name]
                )
                await self._wait_apiserver(kube, state, timeout=30)
                say(
                    "running kubeadm's init phases (upload-config, bootstrap-token, addon: "
                    "CoreDNS, kube-proxy) and registering nodes"
                )
                await _bootstrap(kube)
                await kubeadm_init.run_phases(
                    self.node_view(shape.nodes[0].name),
                    configs[shape.nodes[0].name],
                    self.log_path("kubeadm"),
                )
                await _register_all(
                    kube, [node_manifest(s, version, max_pods=opts.max_pods) for s in specs]
                )
                state.components["kwok"] = self._start_kwok(tools, opts)
                self.save(state)
                say("kubeadm init phase kubelet-start on each control plane (var/lib/kubelet)")
                await asyncio.gather(
                    *(
                        kubeadm_init.kubelet_start(
                            self.node_view(n.name), configs[n.name], self.log_path("kubeadm")
                        )
                        for n in shape.nodes
                    )
                )
                await self._join_etcd(shape, configs, say)
                say(f"waiting for {len(specs)} nodes and the control plane's mirror pods")
                await wait_ready(kube, state.nodes, timeout=opts.ready_timeout)
                await _wait_default_service_account(kube, opts.ready_timeout)
                await self._wait_control_plane(state, set(STATIC), timeout=opts.ready_timeout)
                await self._wait_mirrors(kube, 4 * len(shape.nodes), opts.ready_timeout)
                await _wait_addons(kube, len(specs), opts.ready_timeout)
            if opts.real_nodes:
                say(f"making {opts.real_nodes} real nodes (kubelet, containerd) and kubeadm join")
                for i in range(1, opts.real_nodes + 1):
                    # one at a time: kubeadm join's TLS bootstrap and the images' import are
                    # quick, and two cold containerd starts on two cores only slow each other
                    await self.add_real_node(f"real-{i}", timeout=opts.ready_timeout, state=state)
        except BaseException:
            self._stop_all(state)
            self.save(state)
            raise
        self.save(state)
        return time.monotonic() - t0

    async def _node_phases(
        self, shape: ClusterShape, tools: Toolset, configs: dict[str, Path]
    ) -> None:
        """What kubeadm init (first node) and kubeadm join --control-plane (the others) write
        before anything runs, by the real kubeadm in each node's own view (no network needed
        yet: these phases are files only). A joiner is first handed the cluster's CAs and
        service-account key, as kubeadm's manual certificate distribution does."""
        from kubecare.sandbox import nodeshell

        def view(node: ControlPlaneNode) -> NodeView:
            v = nodeshell.plan(node.name, node.root, sandbox=self.name)
            nodeshell.prepare(v)
            nodeshell.link(v, "kubeadm", tools["kubeadm"])
            return v

        log = self.log_path("kubeadm")
        log.parent.mkdir(parents=True, exist_ok=True)
        first, *joiners = shape.nodes
        await kubeadm_init.node_phases(view(first), configs[first.name], log, first=True)
        for node in joiners:
            for rel in kubeadm_init.SHARED_PKI:
                try:
                    data = (first.pki / rel).read_bytes()
                except OSError as e:
                    raise SandboxError(
                        f"kubeadm's certs phase on {first.name} left no {rel} ({e}); see {log}"
                    ) from None
                dst = node.pki / rel
                dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_atomic(dst, data, mode=0o600 if rel.endswith(".key") else 0o644)
        await asyncio.gather(
            *(kubeadm_init.node_phases(view(n), configs[n.name], log, first=False) for n in joiners)
        )

    async def _join_etcd(
        self, shape: ClusterShape, configs: dict[str, Path], say: Progress
    ) -> None:
        """Each other control plane's etcd member, added by the real kubeadm's ``join phase
        etcd-join`` in the node's view, one after another (a learner, promoted
        once in sync; etcd refuses a second member change until the first has settled)."""
        for node in shape.nodes[1:]:
            say(f"kubeadm join phase etcd-join on {node.name}")
            config = kubeadm_init.write_config(
                self.dir,
                kubeadm_init.join_configuration(node.name, node.ip, node.ports.apiserver),
                None,
                name=f"join-{node.name}",
            )
            await kubeadm_init.join_etcd(
                self.node_view(node.name), config, configs[node.name], self.log_path("kubeadm")
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
        self,
        state: SandboxState,
        wanted: set[str],
        timeout: float,
        nodes: list[str] | None = None,
    ) -> None:
        """Wait until the runner runs ``wanted`` on every control-plane node (or ``nodes``),
        ready (kubeadm init waits for the same). A component that crashes twice meanwhile fails
        the start at once, named, with its log."""
        deadline = time.monotonic() + timeout
        runner = state.components["runner"]
        on = set(nodes or [cp["node"] for cp in state.control_planes])
        count = len(wanted) * len(on)
        while True:
            if not process.is_running(runner.pid, runner.binary):
                raise SandboxError(
                    "the static pod runner exited during start-up. Last log lines "
                    f"({self.log_path('runner')}):\n" + process.tail(self.log_path("runner"), 15)
                )
            pods = [
                p
                for p in self.runner_report().get("pods") or []
                if p.get("component") in wanted and p.get("node") in on
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
