"""The sandbox's static pod runner: what the kubelet does for a control-plane node's manifests.

One process per sandbox (``python -m kubecare.sandbox.runner DIR``), started and stopped with it,
its pid in state.json. For every control-plane node it:

- watches ``etc/kubernetes/manifests`` (inotify through watchfiles, plus a rescan every 2 s) and
  runs every valid manifest (see :mod:`kubecare.sandbox.staticpods`): a new or changed file
  (re)starts its component, a removed one stops it — moving ``kube-apiserver.yaml`` out of the
  directory stops the apiserver, as on a kubeadm node. As the kubelet does, a manifest's new
  process starts only once the previous one (same file) has exited: they would fight over the
  same ports and data dir;
- restarts a component that exits, with the kubelet's back-off (10 s doubling to 5 min, reset
  after 10 min of running; the first delay is a sandbox option), and one whose liveness probe
  fails ``failureThreshold`` times (after its startup probe has passed);
- keeps the mirror pods in kube-system current (:mod:`kubecare.sandbox.mirror_sync`);
- reports a malformed manifest or an image that was never built, and keeps the others running;
- writes what it runs to ``runner.json`` (pids, versions, restarts, health; processes still
  terminating included) for ``sandbox status`` and ``sandbox down``;
- runs each node's components in the node's network namespace, and probes them from there, as
  the node's kubelet would (:mod:`kubecare.sandbox.network`);
- serves the host's forwarded loopback ports to each node's ports, and the cluster endpoint: one
  local address (and, with several control planes, 192.0.2.10:6443 on the sandbox's switch) in
  front of the apiservers, ready ones first (:mod:`kubecare.sandbox.balancer`).

On SIGTERM it stops every component, terminating ones included (etcd last), and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import sys
import time
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.files import write_atomic
from kubecare.podprobes import Probe
from kubecare.sandbox.staticpods import (
    ImageNotBuilt,
    ManifestError,
    RunSpec,
    digest_of,
    parse_manifest,
)

if TYPE_CHECKING:
    from kubecare.sandbox.balancer import Balancer, Dial
    from kubecare.sandbox.network import Netns

BACKOFF_MAX = 300.0
RETIRE_GRACE = 10.0  # seconds etcd gets to stop when its manifest changes or leaves
ETCD_STOP_BUDGET = 25.0  # seconds for every etcd member together when the sandbox stops
BACKOFF_RESET = 600.0  # a component that ran this long starts its back-off afresh
RESCAN = 2.0


@dataclass
class StaticPod:
    """One manifest on one node and the process that runs it."""

    node: str
    file: Path
    spec: RunSpec | None = None
    error: str = ""  # why it cannot run (manifest or image)
    reason: str = ""  # ErrImagePull, CrashLoopBackOff, InvalidManifest, Terminating
    proc: asyncio.subprocess.Process | None = None
    starting: bool = False  # between deciding to start and having a pid
    started_at: float | None = None
    restarts: int = 0
    backoff: float = 0.0
    next_start: float = 0.0
    ready: bool = False
    started: bool = False  # the startup probe passed (or there is none)
    probes: asyncio.Task[None] | None = None
    binary_version: str = ""
    digest: str = ""  # of the file's bytes, parsed or not: a change means a new pod
    doc: dict[str, Any] | None = None  # the manifest, when it is a valid Pod (even if not runnable)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def key(self) -> str:
        return f"{self.node}/{self.file.name}"

    @property
    def name(self) -> str:
        return str(((self.doc or {}).get("metadata") or {}).get("name") or self.file.stem)

    @property
    def namespace(self) -> str:
        return str(((self.doc or {}).get("metadata") or {}).get("namespace") or "kube-system")

    @property
    def image(self) -> str:
        containers = ((self.doc or {}).get("spec") or {}).get("containers") or [{}]
        return str(containers[0].get("image") or "") if isinstance(containers[0], dict) else ""

    @property
    def component(self) -> str:
        return self.spec.component if self.spec else self.image.rsplit("/", 1)[-1].split(":")[0]

    def view(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "file": str(self.file),
            "name": self.name,
            "component": self.component,
            "image": self.image,
            "version": self.binary_version,
            "digest": self.digest,
            "binary": self.spec.argv[0] if self.spec else "",
            "pid": self.proc.pid if self.running and self.proc else None,
            "running": self.running,
            "ready": self.ready,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "error": self.error,
            "reason": self.reason,
        }


@dataclass
class NodeDirs:
    node: str
    manifests: Path
    ip: str = "127.0.0.1"  # the Node's address, shown on its mirror pods
    netns: str | None = None  # /proc/<holder>/ns/net: the node's network (None: the host's)
    forward: dict[int, int] | None = None  # node port -> the host's loopback port for it
    #: where the node's kubelet finds its static pods (its config's staticPodPath, read at each
    #: kubelet start; until one is read, ``manifests``); None: a kubelet without static pods
    static: Path | None = None
    started: str | None = None  # the mark of the last kubelet start read (None: none yet)
    kubelet_error: str | None = None  # why the last kubelet start did not take

    def __post_init__(self) -> None:
        self.static = self.manifests

    def root(self, state_dir: Path) -> Path | None:
        """The node's own tree (``<root>/etc/kubernetes/manifests``), where its manifests'
        absolute hostPaths resolve; None for a manifests dir laid out otherwise, or one outside
        the sandbox's state dir (``/etc/kubernetes/manifests`` would make the machine's own
        paths the node's)."""
        if self.manifests.parts[-3:] != ("etc", "kubernetes", "manifests"):
            return None
        root = self.manifests.parents[2].resolve()
        state = state_dir.resolve()
        return root if state in root.parents else None


@dataclass
class Config:
    """What the runner needs, read from the sandbox's state.json."""

    dir: Path
    nodes: list[NodeDirs]
    kubeconfig: Path
    first_backoff: float
    balancer_port: int | None  # the host's loopback port of the cluster endpoint
    switch_netns: str | None = None  # where 192.0.2.10:6443 is served (several control planes)

    @classmethod
    def load(cls, directory: Path) -> Config:
        from kubecare.sandbox.network import ns_path

        raw = json.loads((directory / "state.json").read_text())
        cps = raw.get("control_planes") or []
        holders = {
            name.removeprefix("netns-"): c.get("pid")
            for name, c in (raw.get("components") or {}).items()
            if name.startswith("netns-")
        }

        def netns(node: str) -> str | None:
            pid = holders.get(node)
            return ns_path(int(pid)) if pid else None

        nodes = [
            NodeDirs(
                cp["node"],
                Path(cp["manifests"]),
                cp.get("node_ip") or cp.get("ip", "127.0.0.1"),
                netns(cp["node"]),
                {int(k): int(v) for k, v in (cp.get("forward") or {}).items()} or None,
            )
            for cp in cps
        ]
        first = cps[0] if cps else {}
        return cls(
            dir=directory,
            nodes=nodes,
            kubeconfig=Path(first.get("runner_kubeconfig") or directory / "kubeconfig"),
            first_backoff=float((raw.get("options") or {}).get("crash_backoff", 10.0)),
            balancer_port=raw.get("balancer_port"),
            switch_netns=netns("switch") if len(cps) > 1 else None,
        )


def resolve_binary(component: str, tag: str) -> str:
    """The binary for ``registry.k8s.io/<component>:<tag>`` in the build cache."""
    from kubecare.sandbox.binaries import ETCD_RELEASES, KUBE_VERSIONS, binary_path, etcd_release

    if component == "etcd":
        # A tag runs the etcd release of its minor (3.7.0-0 -> 3.7.4; see docs/decisions.md).
        found = etcd_release(tag)
        if found is None:
            raise ImageNotBuilt(
                f"image registry.k8s.io/etcd:{tag} is not an etcd minor the sandbox can build "
                f"(supported: {', '.join(ETCD_RELEASES)})"
            )
        version = found
    else:
        version = tag.removeprefix("v")
        if version not in KUBE_VERSIONS:
            raise ImageNotBuilt(
                f"image registry.k8s.io/{component}:{tag} is not a version the sandbox can build "
                f"(supported: {', '.join('v' + v for v in KUBE_VERSIONS)})"
            )
    path = binary_path(component, version)
    if path is None:
        build = _kube_version_with_etcd(version) if component == "etcd" else version
        raise ImageNotBuilt(
            f"image registry.k8s.io/{component}:{tag} is not built; run: kubecare sandbox build --version {build}"
        )
    return str(path)


def _kube_version_with_etcd(etcd: str) -> str:
    """The Kubernetes version whose build brings etcd ``etcd`` (for the fix in a message)."""
    from kubecare.sandbox.binaries import KUBE_VERSIONS, etcd_version_for

    return next((k for k in KUBE_VERSIONS if etcd_version_for(k) == etcd), KUBE_VERSIONS[0])


def same_file(a: Path | None, b: Path | None) -> bool:
    """One path however it is spelled (the state dir may sit behind a symlink)."""
    if a is None or b is None:
        return a is b
    return os.path.realpath(a) == os.path.realpath(b)


def probe_once(probe: Probe) -> bool:
    """One httpGet probe as the kubelet sends it: TLS not verified, 2xx/3xx is success."""
    ctx = ssl._create_unverified_context()
    try:
        with urllib.request.urlopen(probe.url, timeout=probe.timeout, context=ctx) as resp:
            return bool(200 <= resp.status < 400)
    except Exception:
        return False


class Runner:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.pods: dict[str, StaticPod] = {}  # what the manifests on disk ask for
        self.terminating: dict[str, list[StaticPod]] = {}  # replaced or removed, still stopping
        self.changed = asyncio.Event()
        self.stopping = False
        self.log_dir = config.dir / "logs"
        self.status_file = config.dir / "runner.json"
        self._versions: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        from kubecare.sandbox.network import Netns

        self.netns = {nd.node: Netns(nd.netns) for nd in config.nodes if nd.netns}
        self.dirs = {nd.node: nd for nd in config.nodes}
        self.rewatch = asyncio.Event()  # a kubelet start moved a static pod dir

    # -- kubelet starts ------------------------------------------------------------------------
    def kubelet_starts(self) -> None:
        """Reread a node's kubelet config where its kubelet would: when the runner starts (the
        node boots) and after each ``systemctl (re)start kubelet`` on the node."""
        from kubecare.sandbox import kubelet_config
        from kubecare.sandbox.nodeshell import KUBELET_STARTS

        for nd in self.config.nodes:
            root = nd.root(self.config.dir)
            if root is None:
                continue  # not laid out as a node's tree: no kubelet config to read
            try:
                mark = (root / KUBELET_STARTS).read_text()
            except OSError:
                mark = ""
            if mark == nd.started:
                continue
            first, nd.started = nd.started is None, mark
            try:
                text: str | None = (root / kubelet_config.CONFIG).read_text()
            except OSError:
                text = None
            if first and not mark and text is None:
                continue  # a node still being set up: its kubeadm writes the config later
            start = kubelet_config.read(root, text)
            nd.kubelet_error = start.error
            if start.error:
                self._log(
                    f"node {nd.node}: the kubelet does not start ({start.error}); its static "
                    "pods run on as they are, unmanaged, until a start that works"
                )
                continue
            if not same_file(start.manifests, nd.static):
                self._log(
                    f"node {nd.node}: the kubelet started with staticPodPath "
                    f"{start.manifests or '(none: no static pods)'}"
                )
                nd.static = start.manifests
                self.rewatch.set()

    # -- manifests -----------------------------------------------------------------------------
    def scan(self) -> None:
        """Reconcile the pods with the manifests on disk (processes start in :meth:`reconcile`)."""
        self.kubelet_starts()
        seen: set[str] = set()
        for nd in self.config.nodes:
            if nd.kubelet_error is not None:
                # no kubelet on the node: what runs stays as it is, nothing new is read
                seen.update(k for k, p in self.pods.items() if p.node == nd.node)
                continue
            if nd.static is None:
                continue  # its pods are retired below
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                # staticPodPath may name one file (the kubelet's file source reads either)
                files = [nd.static] if nd.static.is_file() else sorted(nd.static.iterdir())
                for path in files:
                    if path.name.startswith(".") or not path.is_file():
                        continue  # the kubelet ignores hidden files (editors' swap files)
                    key = f"{nd.node}/{path.name}"
                    seen.add(key)
                    self._consider(nd, path, key)
        for key in list(self.pods):
            if key not in seen:
                self._retire(key, self.pods.pop(key), "manifest removed")

    def _consider(self, nd: NodeDirs, path: Path, key: str) -> None:
        try:
            data = path.read_bytes()
        except OSError:
            return
        old = self.pods.get(key)
        digest = digest_of(data)
        # The kubelet's pod UID hashes the pod, the node and the file's path (config/common.go
        # applyDefaults): the same bytes at another path are another pod.
        if old is not None and old.digest == digest and same_file(old.file, path):
            return
        pod = StaticPod(nd.node, path, digest=digest)
        try:
            pod.spec = parse_manifest(
                path,
                data,
                root=self.config.dir,
                resolve=resolve_binary,
                node_root=nd.root(self.config.dir),
            )
            pod.doc = pod.spec.pod
        except ManifestError as e:
            # A valid Pod that cannot run keeps a mirror pod with its new hash and the error.
            pod.error, pod.reason, pod.doc = str(e), "InvalidManifest", e.pod
            self._log(f"{e}; skipped, the other manifests keep running")
        except ImageNotBuilt as e:
            pod.error, pod.reason, pod.doc = str(e), "ErrImagePull", e.pod
            self._log(f"manifest {path}: {e}")
        except Exception as e:  # a shape the parser did not expect: still just one bad manifest
            pod.error = f"{path} is not a Pod the runner understands ({type(e).__name__}: {e})"
            pod.reason = "InvalidManifest"
            self._log(f"{pod.error}; skipped, the other manifests keep running")
        if old is not None:
            self._retire(key, old, "manifest changed")
        self.pods[key] = pod
        self.changed.set()

    def _retire(self, key: str, pod: StaticPod, why: str) -> None:
        """Stop a replaced or removed pod; until it has exited, no new pod of this file starts."""
        self.changed.set()
        if pod.proc is None and not pod.starting:
            return
        pod.reason = "Terminating"
        self.terminating.setdefault(key, []).append(pod)

        async def retire() -> None:
            try:
                while pod.starting:  # noqa: ASYNC110 (being started: one exec call, then its pid)
                    await asyncio.sleep(0.05)
                # etcd gets the full grace (its graceful stop waits up to its request timeout,
                # 7 s, for watch streams); kube-apiserver and kube-controller-manager do not exit
                # within 10 s of a SIGTERM at all (measured: the apiserver has shut everything
                # down after 1.5 s and then waits), so a longer wait only delays the restart.
                await self._stop(pod, why, RETIRE_GRACE if _stop_rank(pod) else 3)
            finally:
                left = [p for p in self.terminating.get(key, []) if p is not pod]
                if left:
                    self.terminating[key] = left
                else:
                    self.terminating.pop(key, None)
                self.changed.set()

        self._background(retire())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    # -- processes -----------------------------------------------------------------------------
    async def _start(self, pod: StaticPod) -> None:
        assert pod.spec is not None
        spec = pod.spec
        log = self.log_dir / f"{spec.name}-{pod.node}.log"
        pod.starting = True
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "ab") as out:  # noqa: ASYNC230 (a local log file, opened once per start)
                out.write(f"--- runner: starting {spec.image} ({' '.join(spec.argv)})\n".encode())
                out.flush()
                ns = self.netns.get(pod.node)
                # nsenter execs the component itself: its pid and argv are the component's
                prefix = ["nsenter", f"--net={ns.path}", "--"] if ns else []
                pod.proc = await asyncio.create_subprocess_exec(
                    *prefix,
                    *spec.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )
        except (OSError, ValueError) as e:  # ValueError: e.g. a NUL byte in an argument
            pod.error, pod.reason = f"cannot start {spec.argv[0]}: {e}", "RunContainerError"
            self._back_off(pod)
            return
        finally:
            pod.starting = False
        pod.started_at = time.time()
        pod.error, pod.reason = "", ""
        pod.ready = spec.readiness is None
        pod.started = spec.startup is None
        pod.binary_version = await self._version_of(spec.argv[0])
        pod.probes = asyncio.create_task(self._probe_loop(pod))
        self.changed.set()

    def _back_off(self, pod: StaticPod) -> None:
        ran = time.time() - (pod.started_at or time.time())
        if ran >= BACKOFF_RESET:
            pod.backoff = 0.0
        pod.backoff = min(
            BACKOFF_MAX, pod.backoff * 2 if pod.backoff else self.config.first_backoff
        )
        pod.next_start = time.monotonic() + pod.backoff
        self.changed.set()

    async def _version_of(self, binary: str) -> str:
        """The version the binary reports (``--version``), cached per binary."""
        if binary not in self._versions:
            text = ""
            with contextlib.suppress(OSError):
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    "--version",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
                text = (await proc.communicate())[0].decode(errors="replace")
            found = re.search(r"v?(\d+\.\d+\.\d+)", text)
            self._versions[binary] = f"v{found.group(1)}" if found else ""
        return self._versions[binary]

    async def _stop(self, pod: StaticPod, why: str, grace: float = 10) -> None:
        if pod.probes:
            pod.probes.cancel()
        proc = pod.proc
        if proc is None or proc.returncode is not None:
            return
        self._log(f"stopping {pod.key} (pid {proc.pid}): {why}")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.shield(proc.wait())
        except (TimeoutError, asyncio.CancelledError):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        self.changed.set()

    async def _probe_loop(self, pod: StaticPod) -> None:
        spec = pod.spec
        assert spec is not None and pod.started_at is not None
        started = pod.started_at
        failures = {"liveness": 0, "startup": 0}
        next_run = {"liveness": 0.0, "readiness": 0.0, "startup": 0.0}
        while pod.running:
            now = time.time()
            for kind, probe in (
                ("startup", spec.startup),
                ("liveness", spec.liveness),
                ("readiness", spec.readiness),
            ):
                if probe is None or now < started + probe.initial_delay or now < next_run[kind]:
                    continue
                if kind == "startup" and pod.started:
                    continue
                if kind == "liveness" and not pod.started:
                    continue
                next_run[kind] = now + probe.period
                ns = self.netns.get(pod.node)  # from the node, as its kubelet probes
                ok = await (
                    ns.call(probe_once, probe) if ns else asyncio.to_thread(probe_once, probe)
                )
                if kind == "readiness":
                    if ok != pod.ready:
                        pod.ready = ok
                        self.changed.set()
                    continue
                if kind == "startup" and ok:
                    pod.started = True
                    continue
                failures[kind] = 0 if ok else failures[kind] + 1
                if self.dirs[pod.node].kubelet_error is not None:
                    failures[kind] = 0  # no kubelet on the node to act on it
                if failures[kind] >= probe.failure_threshold:
                    self._log(
                        f"{pod.key}: {kind} probe failed {failures[kind]} times ({probe.url}); restarting"
                    )
                    with contextlib.suppress(ProcessLookupError):
                        if pod.proc:
                            pod.proc.kill()
                    return
            await asyncio.sleep(0.5)

    async def reconcile(self) -> None:
        """Start what should run, restart what died (with back-off)."""
        now = time.monotonic()
        for key, pod in list(self.pods.items()):
            if pod.spec is None or pod.running or pod.starting:
                continue
            if pod.proc is not None:  # it ran and exited: CrashLoopBackOff
                code = pod.proc.returncode
                pod.proc = None
                pod.ready = False
                pod.restarts += 1
                self._back_off(pod)
                pod.reason = "CrashLoopBackOff"
                pod.error = f"exited with code {code}; restarting in {pod.backoff:g}s"
                self._log(f"{pod.key} {pod.error}")
                continue
            if now < pod.next_start or self.stopping or self._held_back(key, pod):
                continue
            if self.dirs[pod.node].kubelet_error is not None:
                continue  # no kubelet on the node to start it
            await self._start(pod)

    def _held_back(self, key: str, pod: StaticPod) -> bool:
        """Never two generations of one pod at once: not while a pod with the same node and
        namespace/name (from any file: renamed, copied) still runs or terminates. A second file
        naming a running pod is refused, as the kubelet allows one static pod per full name."""
        assert pod.spec is not None
        full = (pod.node, pod.spec.namespace, pod.spec.name)

        def same(p: StaticPod) -> bool:
            return p.spec is not None and (p.node, p.spec.namespace, p.spec.name) == full

        if self.terminating.get(key) or any(
            same(p) for ps in self.terminating.values() for p in ps
        ):
            return True
        for other_key, other in self.pods.items():
            if other_key != key and same(other) and (other.running or other.starting):
                error = (
                    f"{pod.file} names pod {pod.spec.namespace}/{pod.spec.name}, which "
                    f"{other.file.name} already runs; one static pod per name (remove one file)"
                )
                if pod.error != error:
                    self._log(error)
                pod.error, pod.reason = error, "InvalidManifest"
                return True
        return False

    # -- status --------------------------------------------------------------------------------
    def write_status(self) -> None:
        everything = list(self.pods.values()) + [p for ps in self.terminating.values() for p in ps]
        doc = {
            "pid": os.getpid(),
            "updated": time.time(),
            "pods": [p.view() for p in everything],
            "kubelets": {
                nd.node: {
                    "staticPodPath": str(nd.static) if nd.static else None,
                    "error": nd.kubelet_error,
                }
                for nd in self.config.nodes
            },
        }
        write_atomic(self.status_file, json.dumps(doc, indent=1), mode=0o600)

    def _log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        sys.stderr.write(f"{stamp} {message}\n")
        sys.stderr.flush()

    # -- main loop -----------------------------------------------------------------------------
    async def watch(self) -> None:
        from watchfiles import awatch

        while True:
            dirs = sorted({str(nd.static) for nd in self.config.nodes if nd.static})
            for d in dirs:  # as the kubelet's file source waits for a dir to appear
                Path(d).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (rare)
            self.rewatch.clear()
            if not dirs:  # no kubelet with static pods: only its next start can change that
                while not self.rewatch.is_set():
                    await asyncio.sleep(RESCAN)
                    with contextlib.suppress(Exception):
                        self.scan()
                continue
            async for _ in awatch(
                *dirs,
                debounce=100,
                step=50,
                rust_timeout=int(RESCAN * 1000),
                yield_on_timeout=True,
                stop_event=self.rewatch,
            ):
                try:
                    self.scan()
                except Exception as e:  # one odd file must not stop the watching
                    self._log(f"scanning the manifests failed: {type(e).__name__}: {e}")
                self.changed.set()
            # a kubelet start moved a dir: watch the new set (scan again at once)
            with contextlib.suppress(Exception):
                self.scan()
            self.changed.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        with contextlib.suppress(Exception):
            self.scan()
        watcher = asyncio.create_task(self.watch())
        balancers = await self._serve()
        cri = await self._serve_cri()
        from kubecare.sandbox.mirror_sync import MirrorSync

        mirrors = MirrorSync(self)
        syncing = asyncio.create_task(mirrors.run())
        from kubecare.sandbox.localpath import LocalPath

        volumes = LocalPath(mirrors._client, self._node_tree, self._log)
        provisioning = asyncio.create_task(volumes.run())
        try:
            while not done.is_set():
                await self.reconcile()
                if self.changed.is_set():
                    self.changed.clear()
                    self.write_status()
                    mirrors.wake()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await done.wait()
        finally:
            self.stopping = True
            watcher.cancel()
            syncing.cancel()
            provisioning.cancel()
            every = list(self.pods.values()) + [p for ps in self.terminating.values() for p in ps]
            # The control-plane components together, etcd last (nothing writes to it while it
            # stops, and it gets the full grace period: its data is what must not be torn).
            # kube-controller-manager does not exit on SIGTERM until its controllers have
            # drained, which takes the whole 10 s grace; when everything stops, 3 s will do.
            # The etcd members one after another: a leader stopping while its followers stop
            # too tries to hand its leadership to one of them and waits out its request
            # timeout (7 s); stopped in turn, each hand-over is to a live member (or, for the
            # last, to none: it stops at once).
            await asyncio.gather(
                *(self._stop(p, "the sandbox is stopping", 3) for p in every if not _stop_rank(p))
            )
            # One budget for all of them, well inside the 40 s `sandbox down` waits for us.
            deadline = time.monotonic() + ETCD_STOP_BUDGET
            for p in every:
                if _stop_rank(p):
                    grace = max(1.0, min(RETIRE_GRACE, deadline - time.monotonic()))
                    await self._stop(p, "the sandbox is stopping", grace)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for b in balancers:
                await b.stop()
            if cri is not None:
                await cri.stop(1)
            for ns in self.netns.values():
                ns.close()
            self.write_status()

    def _node_tree(self, node: str) -> Path | None:
        """A real node's tree (where its volumes' directories are); None for any other."""
        if "/" in node or node in ("", ".", ".."):
            return None
        root = self.config.dir / "nodes" / node
        return root if (root / ".ns").is_dir() else None

    async def _serve(self) -> list[Balancer]:
        """The cluster endpoint and the host's forwarded ports (see :mod:`.network`)."""
        from kubecare.sandbox.balancer import Balancer, loopback_socket
        from kubecare.sandbox.network import SWITCH_IP, Netns

        out = []
        if self.config.balancer_port:
            cluster = Balancer(self._apiservers)
            await cluster.serve(loopback_socket(self.config.balancer_port))
            if self.config.switch_netns:
                switch = Netns(self.config.switch_netns)
                self.netns["switch"] = switch
                await cluster.serve(await switch.listen_socket(SWITCH_IP, 6443))
            out.append(cluster)
        for nd in self.config.nodes:
            ns = self.netns.get(nd.node)
            for port, host in (nd.forward or {}).items():
                forward = Balancer(partial(list, [self._dial(ns, "127.0.0.1", port)]))
                await forward.serve(loopback_socket(host))
                out.append(forward)
        return out

    async def _serve_cri(self) -> Any:
        """The nodes' container runtime for kubeadm's preflight (see :mod:`.cri`), on
        ``<sandbox>/cri.sock``; None where gRPC cannot serve it (the rest runs on)."""
        from kubecare.sandbox import cri

        path = self.config.dir / cri.SOCKET
        try:
            path.unlink(missing_ok=True)
            # relative to our cwd, the state dir: a unix socket's path is at most 107 bytes
            return await cri.serve(cri.SOCKET, cri.Runtime(resolve_binary))
        except Exception as e:  # a CRI-less node still runs; kubeadm's preflight will say so
            self._log(f"cannot serve the CRI socket {path}: {type(e).__name__}: {e}")
            return None

    @staticmethod
    def _dial(ns: Netns | None, host: str, port: int) -> Dial:
        if ns is None:
            return lambda: asyncio.open_connection(host, port)
        return lambda: ns.open_connection(host, port)

    def _apiservers(self) -> list[Dial]:
        """Apiservers to balance over: the ready ones, else any that runs."""
        ready, running = [], []
        for pod in self.pods.values():
            if pod.spec and pod.spec.component == "kube-apiserver" and pod.running:
                port = next(
                    (
                        int(a.split("=", 1)[1])
                        for a in pod.spec.argv
                        if a.startswith("--secure-port=")
                    ),
                    6443,
                )
                nd = self.dirs.get(pod.node)
                host = nd.ip if nd and nd.netns else "127.0.0.1"
                dial = self._dial(self.netns.get(pod.node), host, port)
                running.append(dial)
                if pod.ready:
                    ready.append(dial)
        return ready or running


def _stop_rank(pod: StaticPod) -> int:
    """0 for everything but etcd, 1 for etcd: stopped in that order, each group at once."""
    component = pod.spec.component if pod.spec else ""
    return 1 if component == "etcd" else 0


def main() -> None:
    directory = Path(sys.argv[1]).resolve()
    runner = Runner(Config.load(directory))
    asyncio.run(runner.run())


if __name__ == "__main__":
    main()
