"""A sandbox's nodes as machines: what ``sandbox exec``, ``sandbox install`` and the upgrade
executor reach on a node — its tree at kubeadm's paths, its network, its tools at the versions
installed on it (:mod:`kubecare.sandbox.nodeshell` plans the view itself). A kwok worker gets a
joined worker's tree the first time it is reached. Mixed into :class:`~.lifecycle.Sandbox`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from kubecare.errors import NotFound, SandboxError, UsageError
from kubecare.files import write_atomic
from kubecare.kube import JSON, ClientOptions, Kube
from kubecare.sandbox.binaries import (
    binary_path,
    etcd_release,
    etcd_version_for,
    find_kubectl,
    resolve_version,
)
from kubecare.sandbox.kubeconfigs import write
from kubecare.sandbox.nodes import (
    NodeSpec,
    node_manifest,
    register_node,
    set_boot_id,
    set_kubelet_version,
    set_kwok_managed,
    wait_ready,
)
from kubecare.sandbox.nodeshell import NodeView
from kubecare.sandbox.state import SandboxState

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from typing import Any

    from kubecare.sandbox.pki import SandboxPKI


class NodeMachines:
    """The node-level half of :class:`~.lifecycle.Sandbox`."""

    if TYPE_CHECKING:  # what the Sandbox it is mixed into provides
        name: str
        dir: Path

        @property
        def pki(self) -> SandboxPKI: ...
        def load(self) -> SandboxState: ...
        def save(self, state: SandboxState) -> None: ...
        def locked(self, wait: float = 0) -> AbstractContextManager[None]: ...
        def node_dir(self, node: str) -> Path: ...
        def netns(self, state: SandboxState, node: str) -> str | None: ...
        def client_options(self) -> ClientOptions: ...
        def super_admin(self) -> Path: ...
        def _node(self, state: SandboxState, node: str | None) -> dict[str, Any]: ...
        def enter_argv(self, state: SandboxState, node: str) -> list[str]: ...
        def set_kubelet(self, node: str, running: bool) -> None: ...
        def real_init(self, state: SandboxState, node: str) -> int | None: ...
        async def reboot(self, node: str, *, timeout: float = 120, wait: bool = True) -> None: ...
        def power_off(self, state: SandboxState, node: str, *, hard: bool) -> bool: ...
        def route_pods(self, state: SandboxState, node: str, *, remove: bool = False) -> None: ...

    def node_root(self, node: str) -> Path:
        """A control-plane node's kubeadm-shaped tree (``etc/kubernetes``, ``var/lib/etcd``)."""
        return Path(self._node(self.load(), node)["manifests"]).parent.parent.parent

    async def prepare_node(self, node: str) -> NodeView:
        """:meth:`node_view`, after giving a kwok worker the tree a joined worker has, the first
        time it is asked for: ``etc/kubernetes/kubelet.conf`` (its ``system:node:<node>``
        identity, as the kubelet's TLS bootstrap leaves it), ``pki/ca.crt``, and the
        ``var/lib/kubelet`` files kubeadm join's kubelet-start writes — what ``kubeadm upgrade
        node`` reads on a worker. Made once; what is done to it later stays, as on a machine. A
        worker's network is the sandbox's switch."""
        state = self.load()
        self._check_node(state, node)
        if any(c["node"] == node for c in state.control_planes) or node in state.real_nodes:
            return self.node_view(node)
        root = self.node_dir(node)
        kube_dir = root / "etc" / "kubernetes"
        if not (kube_dir / "kubelet.conf").exists():  # once: later damage stays (as on a node)
            from kubecare.sandbox.kubeconfigs import kubeconfig_doc
            from kubecare.sandbox.pki import KUBELET_CLIENT, issue_node_client

            if not state.endpoint:
                raise SandboxError(
                    f'sandbox "{self.name}" predates worker trees; recreate it: kubecare '
                    f"sandbox down --name {self.name} && kubecare sandbox up --name {self.name}"
                )
            # What `kubeadm join phase kubelet-start` writes on a worker (its init counterpart
            # insists on the cluster's CA key, which a worker never has): the cluster's kubelet
            # configuration from the kubelet-config ConfigMap, the CRI endpoint, and the
            # hostname override kubeadm adds when the node's name is not the machine's.
            kubelet_config = await self._kubelet_config()
            kubelet_dir = root / "var" / "lib" / "kubelet"
            kubelet_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(
                kubelet_dir / "instance-config.yaml",
                'containerRuntimeEndpoint: "unix:///run/containerd/containerd.sock"\n',
                mode=0o644,
            )
            write_atomic(
                kubelet_dir / "kubeadm-flags.env",
                f'KUBELET_KUBEADM_ARGS="--hostname-override={node}"\n',
                mode=0o644,
            )
            write_atomic(kubelet_dir / "config.yaml", kubelet_config, mode=0o644)
            pki = self.pki
            await asyncio.to_thread(issue_node_client, pki, node)
            (kube_dir / "pki").mkdir(parents=True, exist_ok=True)
            write_atomic(kube_dir / "pki" / "ca.crt", pki.ca.cert.read_bytes(), mode=0o644)
            # last: its presence says the tree is whole
            write(
                kube_dir / "kubelet.conf",
                kubeconfig_doc(
                    f"https://{state.endpoint}",
                    pki,
                    KUBELET_CLIENT + node,
                    f"system:node:{node}",
                    "kubernetes",
                ),
            )
        return self.node_view(node)

    async def _kubelet_config(self) -> str:
        """The cluster's KubeletConfiguration (kubelet-config), as kubeadm stores it."""
        async with Kube(ClientOptions(kubeconfig=str(self.super_admin()))) as kube:
            cm = await kube.get_json(
                "/api/v1/namespaces/kube-system/configmaps/kubelet-config",
                what="configmap kube-system/kubelet-config",
            )
        return str((cm.get("data") or {}).get("kubelet") or "")

    def node_view(self, node: str) -> NodeView:
        """What ``sandbox exec NODE`` runs in (see :mod:`kubecare.sandbox.nodeshell`), its dirs
        made and its tools linked: kubeadm at the node's installed version, kubectl, etcdctl.
        A kwok worker's tree must exist (:meth:`prepare_node` makes it)."""
        from kubecare.sandbox import nodeshell

        state = self.load()
        self._check_node(state, node)
        if node in state.real_nodes:
            view = nodeshell.plan(node, self.node_dir(node), sandbox=self.name)
            view = dataclasses.replace(view, enter=tuple(self.enter_argv(state, node)))
            return self._equip(state, node, view)
        cp = next((c for c in state.control_planes if c["node"] == node), None)
        if cp is None:
            root = self.node_dir(node)
            if not (root / "etc" / "kubernetes" / "kubelet.conf").exists():
                raise SandboxError(
                    f'node "{node}" has no tree yet; `kubecare sandbox exec --name {self.name} '
                    f"{node} -- true` makes it"
                )
            netns = self.netns(state, "switch")
            if netns is None:
                raise SandboxError(
                    f'the sandbox "{self.name}" has no network (its namespace holder is gone): '
                    f"start it again: kubecare sandbox down --name {self.name} && kubecare "
                    f"sandbox up --name {self.name}"
                )
            view = nodeshell.plan(
                node, root, sandbox=self.name, netns=netns,
                cri=self.dir / "cri.sock",
            )  # fmt: skip
            return self._equip(state, node, view)
        netns = self.netns(state, node)
        if netns is None:
            raise SandboxError(
                f'node "{node}" has no network (its namespace holder is gone): the sandbox is '
                f"not running; start it again: kubecare sandbox down --name {self.name} && "
                f"kubecare sandbox up --name {self.name}"
            )
        view = nodeshell.plan(
            node,
            self.node_root(node),
            sandbox=self.name,
            netns=netns,
            cri=self.dir / "cri.sock",
        )
        return self._equip(state, node, view)

    def _equip(self, state: SandboxState, node: str, view: NodeView) -> NodeView:
        """The view's dirs, and its tools at the versions installed on the node."""
        from kubecare.sandbox import nodeshell

        nodeshell.prepare(view)
        kubelet = self.installed(state, node, "kubelet")
        if node in state.real_nodes:  # the binary the node's init runs, never a stand-in
            real_kubelet = binary_path("kubelet", kubelet)
            if real_kubelet is None:
                raise SandboxError(
                    f"kubelet v{kubelet} (installed on real node {node}) is not built: "
                    f"kubecare sandbox build --real-nodes --version {kubelet}"
                )
            nodeshell.link(view, "kubelet", real_kubelet)
        else:
            nodeshell.kubelet(view, kubelet)
        kubeadm = self.installed(state, node, "kubeadm")
        etcd = self.etcd_on(state, node)
        tools: dict[str, Path | None] = {
            "kubeadm": binary_path("kubeadm", kubeadm),
            "kubectl": find_kubectl(),
            "etcdctl": binary_path("etcdctl", etcd),
            "etcdutl": binary_path("etcdutl", etcd),
        }
        for name, path in tools.items():
            if path is not None:
                nodeshell.link(view, name, path)
        return view

    def etcd_on(self, state: SandboxState, node: str) -> str:
        """The etcd release the node's etcd manifest runs (its etcdctl and etcdutl match it, as
        an operator installs the client of the server they run); a node without one, the etcd
        of the sandbox's version."""
        import re

        cp = next((c for c in state.control_planes if c["node"] == node), None)
        try:  # a worker has no etcd manifest: the node dir has none
            text = (Path(cp["manifests"]) / "etcd.yaml").read_text() if cp else ""
        except OSError:
            text = ""
        found = re.search(r"image:\s*\S*/etcd:(\S+)", text)
        release = etcd_release(found.group(1)) if found else None
        return release or etcd_version_for(state.version)

    def installed(self, state: SandboxState, node: str, package: str) -> str:
        """The version of ``package`` (kubeadm, kubelet) installed on ``node``."""
        return state.installed.get(node, {}).get(package, state.version)

    async def install(self, node: str, package: str, version: str) -> tuple[str, str]:
        """The sandbox's ``apt-get install PACKAGE=VERSION`` on ``node``: kubeadm switches the
        node's binary (it must be built); kubelet is what the node reports (as after the
        kubelet's restart: kwok runs the node). Returns the versions before and after."""
        from kubecare.sandbox import nodeshell

        if package not in ("kubeadm", "kubelet"):
            raise UsageError(f"sandbox install knows kubeadm and kubelet, not {package!r}")
        version = resolve_version(version)
        state = self.load()
        self._check_node(state, node)
        before = self.installed(state, node, package)
        if package == "kubeadm":
            path = binary_path("kubeadm", version)
            if path is None:
                raise SandboxError(
                    f"kubeadm v{version} is not built; build it with: kubecare sandbox "
                    f"build --version {version}"
                )
            root = (
                self.node_root(node)
                if any(c["node"] == node for c in state.control_planes)
                else self.node_dir(node)
            )
            if root.exists():  # a worker without a tree gets kubeadm when it is made
                view = nodeshell.plan(node, root, sandbox=self.name)
                nodeshell.link(view, "kubeadm", path)
        elif node in state.real_nodes:
            # a real kubelet: the package manager swaps the binary; the node runs it after
            # `systemctl restart kubelet` (the operator's next step), and reports it itself
            path = binary_path("kubelet", version)
            if path is None:
                raise SandboxError(
                    f"kubelet v{version} is not built; build it with: kubecare sandbox build "
                    f"--real-nodes --version {version}"
                )
            nodeshell.link(nodeshell.plan(node, self.node_dir(node), sandbox=self.name),
                           "kubelet", path)  # fmt: skip
        else:
            async with Kube(self.client_options()) as kube:
                # what the node runs is what it reports (a test may have set it by hand)
                obj = await kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
                reported = ((obj.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion")
                before = str(reported or f"v{before}").removeprefix("v")
                await set_kubelet_version(kube, node, version)
        # only the record under the lock, briefly: the nodes of one upgrade batch install at once
        with self.locked(wait=30):
            state = self.load()
            state.installed.setdefault(node, {})[package] = version
            self.save(state)
        return before, version

    # -- nodes coming and going -----------------------------------------------------------------
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
            if node in state.real_nodes:  # `systemctl stop kubelet`: its containers keep running
                self.set_kubelet(node, False)
            else:
                await set_kwok_managed(kube, node, False)
            if wait:
                await wait_ready(kube, [node], ready=False, timeout=timeout)

    async def node_up(
        self, node: str, *, wait: bool = True, reboot: bool = False, timeout: float = 60
    ) -> None:
        """The node reports again; with ``reboot`` it comes back with a new boot ID."""
        state = self.load()
        self._check_node(state, node)
        if node in state.real_nodes:
            if reboot:  # a power cut and a boot: every container of the node killed
                await self.reboot(node, timeout=timeout, wait=wait)
                return
            self.set_kubelet(node, True)
            if self.real_init(state, node) is None:  # powered off: boot it
                await self.reboot(node, timeout=timeout, wait=wait)
                return
            if wait:
                async with Kube(self.client_options()) as kube:
                    await wait_ready(kube, [node], timeout=timeout)
            return
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
            if name in state.real_nodes:
                await asyncio.to_thread(self.power_off, state, name, hard=False)
                self.route_pods(state, name, remove=True)
                state.real_nodes.pop(name)
                state.components.pop(f"realnode-{name}", None)
            state.nodes.remove(name)
            state.installed.pop(name, None)
            self.save(state)
        if not any(c["node"] == name for c in state.control_planes):
            # a worker's tree (sandbox exec made it) goes with the machine
            await asyncio.to_thread(shutil.rmtree, self.node_dir(name), True)
        async with Kube(self.client_options()) as kube:
            with contextlib.suppress(NotFound):
                await kube.request_json("DELETE", f"/api/v1/nodes/{name}", what=f'node "{name}"')
