"""A sandbox's real nodes, from the host: made, joined by kubeadm, stopped, rebooted, removed.

What a real node is: :mod:`kubecare.sandbox.realnode`; its PID 1: :mod:`.nodeinit`. Mixed
into :class:`~.lifecycle.Sandbox`. Each real node is recorded in state.json as
``real_nodes[name] = {"index": i}`` and its namespace holder (``unshare``, whose only child is
the node's init) as the component ``realnode-<name>``: ``sandbox down`` stops the init (the
kernel then ends every process of the node, its mounts and its network) and removes the node's
cgroups.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from kubecare.errors import SandboxError
from kubecare.files import write_atomic
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import network, process, realnode
from kubecare.sandbox.nodes import wait_ready
from kubecare.sandbox.nodeshell import KUBELET_WANTED
from kubecare.sandbox.realnode import RealNodeSpec
from kubecare.sandbox.state import ComponentState, SandboxState

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from kubecare.sandbox.nodeshell import NodeView

RUNC = "/usr/sbin/runc"
BUSYBOX = "/bin/busybox"
DEPS_FIX = "install them with `make real-node-deps` (Debian's runc, busybox-static, iptables)"


def check_deps() -> None:
    """What a real node needs from the machine beyond the sandbox's own: said before anything
    is made."""
    from kubecare.sandbox.images import XTABLES

    missing = [p for p in (RUNC, BUSYBOX, XTABLES) if not Path(p).is_file()]
    if missing:
        raise SandboxError(f"real nodes need {', '.join(missing)}: {DEPS_FIX}")
    if not Path("/sys/fs/cgroup/cpuset").is_dir():
        raise SandboxError(
            "real nodes need the cgroup v1 controllers under /sys/fs/cgroup (cpuset, memory, "
            "...): this machine has none the kubelet here can use"
        )


def init_pid(holder: int, timeout: float = 5.0) -> int:
    """The node's init: the one child of its ``unshare --fork``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            kids = Path(f"/proc/{holder}/task/{holder}/children").read_text().split()
        except OSError:
            break
        if kids:
            return int(kids[0])
        time.sleep(0.01)
    raise SandboxError(
        f"the real node's namespaces could not be made (unshare, pid {holder}, has no init); "
        "see the sandbox's logs/realnode-*.log"
    )


class RealNodes:
    """The real-node half of :class:`~.lifecycle.Sandbox`."""

    if TYPE_CHECKING:  # what the Sandbox it is mixed into provides
        name: str
        dir: Path

        def load(self) -> SandboxState: ...
        def save(self, state: SandboxState) -> None: ...
        def locked(self, wait: float = 0) -> AbstractContextManager[None]: ...
        def node_dir(self, node: str) -> Path: ...
        def log_path(self, component: str) -> Path: ...
        def client_options(self) -> ClientOptions: ...
        def node_view(self, node: str) -> NodeView: ...
        def installed(self, state: SandboxState, node: str, package: str) -> str: ...
        def _check_node(self, state: SandboxState, node: str) -> None: ...
        def netns(self, state: SandboxState, node: str) -> str | None: ...

    # -- queries -------------------------------------------------------------------------------
    def is_real(self, state: SandboxState, node: str) -> bool:
        return node in state.real_nodes

    def _holder(self, state: SandboxState, node: str) -> int | None:
        """The node's running ``unshare`` (its command line names the node's tree: a reused pid,
        or another unshare such as a ``sandbox exec``'s, never counts)."""
        holder = state.components.get(f"realnode-{node}")
        if holder is None or not process.is_running(holder.pid, holder.binary):
            return None
        assert holder.pid is not None
        if not process.mentions(holder.pid, str(self.node_dir(node))):
            return None
        return holder.pid

    def real_init(self, state: SandboxState, node: str) -> int | None:
        """The pid of a running real node's init (None: the node is powered off)."""
        holder = self._holder(state, node)
        if holder is None:
            return None
        try:
            return init_pid(holder, timeout=1.0)
        except SandboxError:
            return None

    def enter_argv(self, state: SandboxState, node: str) -> list[str]:
        """``nsenter`` into a running real node: its mounts, host name, network and PIDs."""
        pid = self.real_init(state, node)
        if pid is None:
            last = process.tail(self.log_path(f"realnode-{node}"), 1).strip()
            raise SandboxError(
                f'real node "{node}" is powered off ({last or "no log"}); start it: kubecare '
                f"sandbox node-up --name {self.name} {node}"
            )
        return [shutil.which("nsenter") or "nsenter", "-t", str(pid), "-m", "-u", "-n", "-p", "--"]

    # -- making one ----------------------------------------------------------------------------
    def _spec(self, state: SandboxState, node: str) -> RealNodeSpec:
        from kubecare.sandbox.binaries import binary_path, find_toolset

        version = self.installed(state, node, "kubelet")
        kubelet = binary_path("kubelet", version)
        toolset, missing = find_toolset(state.version, real_nodes=True)
        if kubelet is None or missing:
            which = f"the kubelet v{version}" if kubelet is None else "containerd"
            raise SandboxError(
                f"real node {node} needs {which} built: kubecare sandbox build --real-nodes "
                f"--version {version if kubelet is None else state.version}"
            )
        return RealNodeSpec(
            name=node,
            sandbox=self.name,
            index=int(state.real_nodes[node]["index"]),
            root=str(self.node_dir(node)),
            gateway=network.SWITCH_IP,
            prefix=network.PREFIX,
            kubelet=str(self.node_dir(node) / "usr" / "local" / "bin" / "kubelet"),
            containerd=str(toolset["containerd"].parent),
            cni_bin=str(toolset["bridge"].parent),
            runc=RUNC,
            images=[str(p) for p in self._image_tars(toolset["kubecare-image"])],
        )

    def _image_tars(self, program: Path) -> list[Path]:
        """The sandbox's images as OCI layout tars (made once per sandbox): the catalogue, and
        kube-proxy at every version whose binary is built (an upgrade switches the DaemonSet's
        image; the node must have the next one already)."""
        import subprocess

        from kubecare.sandbox import images
        from kubecare.sandbox.binaries import KUBE_VERSIONS, binary_path

        def ldd(path: Path) -> str:
            done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
            return done.stdout

        wanted = list(images.catalogue(program, Path(BUSYBOX)))
        for version in KUBE_VERSIONS:
            proxy = binary_path("kube-proxy", version)
            if proxy is not None:
                wanted.append(images.kube_proxy(version, proxy, ldd))
        out = []
        for image in wanted:
            tar = self.dir / "images" / (image.ref.replace("/", "_").replace(":", "_") + ".tar")
            if not tar.exists():
                write_atomic(tar, images.layout(image), mode=0o644)
            out.append(tar)
        return out

    def _write_tree(self, spec: RealNodeSpec, kubelet: Path, kubeadm: Path) -> None:
        from kubecare.sandbox import nodeshell

        root = Path(spec.root)
        files = {
            "etc/containerd/config.toml": realnode.containerd_config(spec),
            "etc/cni/net.d/10-kubecare.conflist": realnode.cni_config(spec),
            "etc/default/kubelet": realnode.kubelet_defaults(spec),
            "etc/hosts": realnode.hosts(spec),
            "etc/resolv.conf": realnode.RESOLV_CONF,
            realnode.SPEC: spec.to_json(),
        }
        for rel, text in files.items():
            write_atomic(root / rel, text, mode=0o644)
        boot_id = root / realnode.BOOT_ID
        if not boot_id.exists():
            write_atomic(boot_id, f"{uuid.uuid4()}\n", mode=0o644)
        view = nodeshell.plan(spec.name, root, sandbox=self.name)
        nodeshell.prepare(view)
        nodeshell.link(view, "kubelet", kubelet)
        nodeshell.link(view, "kubeadm", kubeadm)

    def _power_on(self, state: SandboxState, node: str) -> int:
        """Start the node's init in new namespaces and plug its cable into the switch."""
        switch = state.components.get("netns-switch")
        if switch is None or not process.is_running(switch.pid, switch.binary):
            raise SandboxError(
                f'sandbox "{self.name}" has no network (its switch is gone): restart it'
            )
        assert switch.pid is not None
        argv = [
            shutil.which("unshare") or "unshare",
            # --kill-child: if unshare dies, so does the node (never an orphaned init)
            "--pid", "--fork", "--kill-child", "--mount", "--uts", "--net",
            "--propagation", "private", "--",
            sys.executable, "-m", "kubecare.sandbox.nodeinit", str(self.node_dir(node)),
        ]  # fmt: skip
        holder = process.spawn(argv, self.log_path(f"realnode-{node}"), cwd=self.dir)
        state.components[f"realnode-{node}"] = ComponentState(
            f"realnode-{node}", argv[0], argv, 0, "", "", holder
        )
        self.save(state)  # at once: an `up` killed now must not leave it unrecorded
        pid = init_pid(holder)
        index = int(state.real_nodes[node]["index"])
        deadline = time.monotonic() + 10
        while True:  # the old cable of a node just powered off may still be going away
            try:
                network.run_script(switch.pid, realnode.switch_script(index, pid))
                return pid
            except SandboxError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    async def add_real_node(
        self, node: str, *, timeout: float = 120, state: SandboxState | None = None
    ) -> float:
        """Make a real node, join it with ``kubeadm join``, wait until it is Ready; returns
        the seconds from power-on to Ready. ``state``: the caller holds the sandbox's lock
        (``sandbox up``) and this state is the one it saves."""
        check_deps()
        if state is None:
            with self.locked(wait=30):
                state = self.load()
                pid_t0 = await self._make_real_node(state, node)
        else:
            pid_t0 = await self._make_real_node(state, node)
        await self._join(state, node)
        async with Kube(self.client_options()) as kube:  # kubeadm join ends at the kubelet's
            # TLS bootstrap; the kubelet registers the Node just after
            await wait_ready(kube, [node], timeout=timeout, registering=True)
        return time.monotonic() - pid_t0

    async def _make_real_node(self, state: SandboxState, node: str) -> float:
        from kubecare.sandbox.binaries import binary_path

        if node in state.nodes:
            raise SandboxError(f'sandbox "{self.name}" already has a node "{node}"')
        for target in realnode.EXTRA_OVERLAYS:  # the node's overlay would hide its own tree
            if Path(target) in self.dir.resolve().parents:
                raise SandboxError(
                    f"the sandbox's state dir {self.dir} lies under {target}, which a real node "
                    "overlays; move it with KUBECARE_STATE_DIR (e.g. under your home)"
                )
        used = {int(r["index"]) for r in state.real_nodes.values()}
        free = [i for i in range(realnode.MAX_REAL_NODES) if i not in used]
        if not free:
            raise SandboxError(
                f"a sandbox has at most {realnode.MAX_REAL_NODES} real nodes (its pod range "
                f"{realnode.POD_RANGE}.0/24 is cut in /27s)"
            )
        kubelet = binary_path("kubelet", self.installed(state, node, "kubelet"))
        kubeadm = binary_path("kubeadm", self.installed(state, node, "kubeadm"))
        if kubelet is None or kubeadm is None:
            raise SandboxError(
                f"real node {node} needs kubeadm and the kubelet at the versions it "
                f"installs: kubecare sandbox build --real-nodes --version {state.version}"
            )
        state.real_nodes[node] = {"index": free[0]}
        try:
            spec = self._spec(state, node)
        except SandboxError:
            state.real_nodes.pop(node)
            raise
        state.nodes.append(node)
        self.save(state)  # before anything runs: `down` must know the node
        await asyncio.to_thread(self._write_tree, spec, kubelet, kubeadm)
        self.route_pods(state, node)
        t0 = time.monotonic()
        await asyncio.to_thread(self._power_on, state, node)
        return t0

    def route_pods(self, state: SandboxState, node: str, *, remove: bool = False) -> None:
        """The node's pod range routed to it from every control plane, as a cluster's pod
        network is: the apiserver reaches pods (its pod proxy, webhooks) and their answers to
        it come back. Gone with the control plane's namespace; best effort on removal."""
        index = int(state.real_nodes[node]["index"])
        for cp in state.control_planes:
            ns = self.netns(state, cp["node"])
            if ns is None:
                continue
            verb = ["del"] if remove else ["replace"]
            argv = [shutil.which("nsenter") or "nsenter", f"--net={ns}", "ip", "route", *verb,
                    realnode.pod_cidr(index), "via", realnode.node_ip(index)]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0 and not remove:
                raise SandboxError(
                    f"cannot route {node}'s pods from {cp['node']}: {done.stderr.strip()}"
                )

    async def _join(self, state: SandboxState, node: str) -> None:
        """A token and the CA hash from the real ``kubeadm token create --print-join-command``
        on the first control plane, then ``kubeadm join`` on the node."""
        from kubecare.sandbox import kubeadm_init, nodeshell

        first = state.control_planes[0]["node"]
        view = self.node_view(first)
        unshare, nsenter = nodeshell.tools()
        log = self.log_path("kubeadm")
        argv = nodeshell.argv(
            view,
            ["kubeadm", "token", "create", "--print-join-command",
             "--kubeconfig", "/etc/kubernetes/admin.conf"],
            unshare=unshare, nsenter=nsenter,
        )  # fmt: skip
        out = await kubeadm_init.output(argv, f"kubeadm token create on {first}", log, 60,
                                        nodeshell.environment(view, dict(os.environ)))  # fmt: skip
        words = out.split()
        try:
            endpoint = words[words.index("join") + 1]
            token = words[words.index("--token") + 1]
            ca_hash = words[words.index("--discovery-token-ca-cert-hash") + 1]
        except (ValueError, IndexError):
            raise SandboxError(f"kubeadm token create printed no join command: {out!r}") from None
        node_bin = self.node_dir(node) / "usr" / "local" / "bin"
        env = dict(os.environ)
        env["PATH"] = f"{node_bin}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        config = kubeadm_init.write_config(
            self.dir,
            realnode.join_configuration(endpoint, token, ca_hash, node),
            None,
            name=f"join-{node}",
        )
        join = [*self.enter_argv(state, node), *realnode.join_argv("kubeadm", str(config))]
        await kubeadm_init.output(join, f"kubeadm join on {node}", log, 120, env)

    # -- power -------------------------------------------------------------------------------
    def set_kubelet(self, node: str, running: bool) -> None:
        """``systemctl start|stop kubelet`` on the node (its init follows the unit's state)."""
        write_atomic(
            self.node_dir(node) / KUBELET_WANTED,
            "running\n" if running else "stopped\n",
            mode=0o644,
        )

    def power_off(self, state: SandboxState, node: str, *, hard: bool) -> bool:
        """Stop the node: its init shuts the kubelet and containerd down (``hard``: a power cut,
        every process killed at once); the kernel ends the rest. Its cgroups are removed."""
        holder = self._holder(state, node)
        stopped = False
        if holder is not None:
            pid = self.real_init(state, node)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
                deadline = time.monotonic() + 25  # the kubelet's and containerd's 10 s each
                while process.is_running(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # late: a power cut after all
            # its unshare exits with its child (and --kill-child covers the other way round)
            process.stop(holder, timeout=5)
            stopped = True
        comp = state.components.get(f"realnode-{node}")
        if comp is not None:
            comp.pid = None
        remove_cgroups(self.name, node)
        return stopped

    async def reboot(self, node: str, *, timeout: float = 120, wait: bool = True) -> None:
        """A power cut and a boot: every container killed, a new boot ID, the kubelet started
        again by the init (the node's pods are then the kubelet's to restart). ``wait``: until
        the node reports the new boot ID and is Ready."""
        boot = str(uuid.uuid4())
        with self.locked(wait=30):
            state = self.load()
            await asyncio.to_thread(self.power_off, state, node, hard=True)
            write_atomic(self.node_dir(node) / realnode.BOOT_ID, f"{boot}\n", mode=0o644)
            self.set_kubelet(node, True)
            await asyncio.to_thread(self._power_on, state, node)
        if not wait:
            return
        deadline = time.monotonic() + timeout
        async with Kube(self.client_options()) as kube:
            while True:  # the Node object says Ready until the new kubelet reports
                obj = await kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
                info = (obj.get("status") or {}).get("nodeInfo") or {}
                if info.get("bootID") == boot:
                    break
                if time.monotonic() > deadline:
                    raise SandboxError(
                        f"real node {node} did not report its new boot within {timeout:.0f}s; "
                        f"see kubecare sandbox logs --name {self.name} realnode-{node}"
                    )
                await asyncio.sleep(0.2)
            await wait_ready(kube, [node], timeout=max(1.0, deadline - time.monotonic()))


def remove_cgroups(sandbox: str, node: str) -> None:
    """rmdir the node's subtree in every hierarchy, deepest first (the kernel refuses a cgroup
    with processes or children; the processes are gone once the node's init has exited), then
    the sandbox's and kubecare's parents when empty. Every hierarchy is tried; what could not
    be removed is named at the end."""
    top = Path("/sys/fs/cgroup")
    rel = realnode.cgroup_root(sandbox, node).strip("/")
    left: list[str] = []
    for hierarchy in sorted(p for p in top.iterdir() if p.is_dir()):
        base = hierarchy / rel
        if not base.is_dir():
            continue
        dirs = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, base]:
            deadline = time.monotonic() + 5
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        left.append(str(d))
                        break
                    time.sleep(0.1)
        for parent in (base.parent, base.parent.parent):  # kubecare/<sandbox>, kubecare
            with contextlib.suppress(OSError):
                parent.rmdir()  # only if empty: another sandbox's nodes stay
    if left:
        raise SandboxError(
            f"cgroups of real node {node} could not be removed (processes left in them?): "
            f"{', '.join(left[:3])}"
        )


def stop_leftovers(sandbox: str, directory: Path) -> list[str]:
    """Real nodes' inits state.json does not name (unreadable state): ``nodeinit`` of a tree
    in ``directory``, killed (the kernel ends their nodes), then the cgroups of this sandbox's
    nodes (those with a tree in ``directory``) removed."""
    stopped = []
    nodes = directory / "nodes"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kubecare.sandbox.nodeinit" in argv and any(
            a.decode(errors="replace").startswith(str(nodes) + "/") for a in argv
        ):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
                stopped.append(f"real node init {proc.name}")
    for spec in sorted(nodes.glob(f"*/{realnode.SPEC}")):
        remove_cgroups(sandbox, spec.parent.parent.name)
    return stopped
