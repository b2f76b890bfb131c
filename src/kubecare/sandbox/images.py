"""The images real sandbox nodes run, built here: there is no registry to pull from.

Each image is one layer made of files of this machine (a static binary, Debian's static busybox),
written as an OCI image layout in a tar — what ``ctr -n k8s.io images import`` takes — so a real
node's containerd has them before any pod asks (the kubelet's ``IfNotPresent`` then never pulls).
A pod naming any other image gets the kubelet's real ``ErrImagePull``/``ImagePullBackOff``.

- ``registry.k8s.io/pause:3.10.2`` — the pod sandbox (kubeadm's and containerd's pinned pause):
  the ``kubecare-image`` program in its ``pause`` mode, a PID 1 that reaps and exits on SIGTERM.
- ``kubecare.local/http:v1`` — the same program as a web server: ``/ready`` for readiness probes
  (``$READY_DELAY``), a SIGTERM handler that takes ``$TERM_DELAY`` seconds (a real grace period).
- ``kubecare.local/tools:v1`` — busybox-static with its applets: a shell, tar, sha256sum, dd, ...
  for workloads and helper pods.
- ``registry.k8s.io/kube-proxy:v<version>`` for each built version — the kube-proxy binary and
  Debian's iptables (nft backend) with the shared libraries it loads, so kubeadm's kube-proxy
  DaemonSet runs for real on real nodes (its rules live in the node's network namespace).

Pure: :func:`layout` turns (name, files, config) into the tar's bytes; :func:`catalogue` says
what each image is made of. Building the program and importing are the caller's.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PAUSE = "registry.k8s.io/pause:3.10.2"
HTTP = "kubecare.local/http:v1"
TOOLS = "kubecare.local/tools:v1"
#: the busybox applets the tools image links (``busybox --list`` has more; these are the ones
#: workloads, helper pods and the labs use)
APPLETS = (
    "sh", "ash", "cat", "cp", "dd", "df", "du", "echo", "env", "false", "find", "grep", "gzip",
    "gunzip", "head", "hostname", "id", "kill", "ln", "ls", "md5sum", "mkdir", "mv", "nc", "ps",
    "pwd", "rm", "rmdir", "sed", "sha256sum", "sleep", "sort", "stat", "sync", "tail", "tar",
    "tee", "test", "[", "touch", "tr", "true", "uname", "wc", "wget", "xargs", "yes",
)  # fmt: skip

KUBE_PROXY = "registry.k8s.io/kube-proxy"
#: Debian's iptables, nft backend: kube-proxy's iptables mode runs these
XTABLES = "/usr/sbin/xtables-nft-multi"
XTABLES_NAMES = (
    "iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
    "ip6tables-restore",
)  # fmt: skip
XTABLES_EXTENSIONS = "/usr/lib/x86_64-linux-gnu/xtables"

#: what ``kubecare sandbox images`` lists
DESCRIPTIONS = {
    PAUSE: "the pod sandbox (PID 1 of each pod: reaps, exits on SIGTERM)",
    HTTP: "a web server: /ready for readiness probes ($READY_DELAY s), SIGTERM takes "
    "$TERM_DELAY s, $PORT (8080)",
    TOOLS: "busybox: sh, tar, sha256sum, dd, wget, nc, ... for workloads and helper pods",
    f"{KUBE_PROXY}:v<version>": "kube-proxy of each built version, with Debian's iptables (nft)",
}

LAYER = "application/vnd.oci.image.layer.v1.tar"
CONFIG = "application/vnd.oci.image.config.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class Image:
    """One image: its full reference, its files (path inside -> file here), links and entry."""

    ref: str
    files: dict[str, Path]
    entrypoint: tuple[str, ...]
    links: dict[str, str] = field(default_factory=dict)  # path inside -> target
    env: tuple[str, ...] = ("PATH=/bin:/usr/bin",)


def catalogue(program: Path, busybox: Path) -> tuple[Image, ...]:
    """The sandbox's images, from the ``kubecare-image`` program and a static busybox."""
    return (
        Image(PAUSE, {"pause": program}, ("/pause", "pause")),
        Image(HTTP, {"bin/kubecare-image": program}, ("/bin/kubecare-image", "http")),
        Image(
            TOOLS,
            {"bin/busybox": busybox},
            ("/bin/sh",),
            links={f"bin/{a}": "busybox" for a in APPLETS},
        ),
    )


def ldd_paths(output: str) -> list[str]:
    """The libraries ``ldd`` names (``libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)``
    and the loader's own ``/lib64/ld-linux-x86-64.so.2 (0x...)``); the vDSO has no file."""
    paths = []
    for line in output.splitlines():
        words = line.split()
        if "=>" in words:
            after = words[words.index("=>") + 1 :]
            if after and after[0].startswith("/"):
                paths.append(after[0])
        elif words and words[0].startswith("/"):
            paths.append(words[0])
    return paths


def closure(binaries: list[Path], ldd: Callable[[Path], str]) -> dict[str, Path]:
    """Each binary and every library it loads, at the path the loader looks (inside ->
    here); ``ldd(path)`` gives ldd's output."""
    files: dict[str, Path] = {}
    for binary in binaries:
        for path in [str(binary), *ldd_paths(ldd(binary))]:
            files[path.lstrip("/")] = Path(path).resolve()
    return files


def kube_proxy(version: str, binary: Path, ldd: Callable[[Path], str]) -> Image:
    """kubeadm's kube-proxy image for ``version``: its binary at kubeadm's command path and
    iptables with its extensions and libraries."""
    extensions = sorted(Path(XTABLES_EXTENSIONS).glob("*.so"))
    files = closure([Path(XTABLES), *extensions], ldd)
    files["usr/local/bin/kube-proxy"] = binary
    links = {f"usr/sbin/{n}": "xtables-nft-multi" for n in XTABLES_NAMES}
    return Image(f"{KUBE_PROXY}:v{version}", files, ("/usr/local/bin/kube-proxy",), links,
                 env=("PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",))  # fmt: skip


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _layer(image: Image) -> bytes:
    """An uncompressed tar of the image's files; fixed owners and times, so the same inputs
    give the same digest (an import of an unchanged image is then a no-op)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        # every directory on the way (an applier need not make missing parents)
        dirs = sorted(
            {str(a) for p in [*image.files, *image.links] for a in Path(p).parents} - {"."}
            | {"tmp"}
        )
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for inside, source in sorted(image.files.items()):
            data = source.read_bytes()
            info = tarfile.TarInfo(inside)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for inside, target in sorted(image.links.items()):
            info = tarfile.TarInfo(inside)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)
    return buf.getvalue()


def layout(image: Image) -> bytes:
    """The image as an OCI image layout tar, named by ``io.containerd.image.name`` (a full
    reference: containerd's CRI resolves only fully qualified names)."""
    layer = _layer(image)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": list(image.entrypoint), "Env": list(image.env)},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": _digest(layer), "size": len(layer)}],
        },
        sort_keys=True,
    ).encode()
    tag = image.ref.rsplit(":", 1)[1]
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": image.ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        entries = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
        entries += [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in (layer, config, manifest)]
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
