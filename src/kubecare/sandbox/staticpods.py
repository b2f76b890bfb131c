"""Static pod manifests as the sandbox's kubelet-like runner reads them (pure: text in, plan out).

A manifest is a v1 Pod as kubeadm writes it. The runner has no containers, so it emulates what a
container would see: the image ``registry.k8s.io/<component>:<tag>`` picks the binary of that
version from the build cache, and every path in the command that lies under a volume's
``mountPath`` is rewritten to that volume's ``hostPath`` — exactly how a kubeadm etcd restore
works ("point etcd.yaml's hostPath at the new data dir"). A hostPath inside the sandbox's state dir
is used as it is; any other absolute hostPath is the node's own path (``/var/lib/etcd`` is
``<node root>/var/lib/etcd``), as a kubelet on that node sees it — so kubeadm's own manifests run.
A hostPath that would leave the node's root is refused, and so is any path in the command that
no volume maps inside the state dir
(absolute, ``name=/path`` list items, or relative — the runner works in the state dir — all
normalised, so ``..`` does not climb out): the sandbox never touches the machine's real /etc or
/var.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubecare.podprobes import Probe, ProbeError, parse_probe

REGISTRY = "registry.k8s.io/"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ManifestError(Exception):
    """A manifest the runner cannot run; the message names the file and what is wrong.

    ``pod`` is the manifest when it is a valid v1 Pod that just cannot run here: the kubelet
    still makes its mirror pod (with the new config hash), its container waiting with the
    error, rather than leaving the old pod's mirror or none — kubeadm waits on that hash."""

    pod: dict[str, Any] | None = None


class ImageNotBuilt(Exception):
    """The image's version has no binary in the build cache; the message says how to build it.

    When raised by :func:`parse_manifest`, ``pod`` is the (valid) manifest: the kubelet still
    shows such a pod, waiting in ErrImagePull."""

    pod: dict[str, Any] | None = None


@dataclass(frozen=True)
class RunSpec:
    """What the runner executes for one static pod."""

    name: str  # the pod's name, e.g. "kube-apiserver" (its mirror pod is <name>-<node>)
    namespace: str
    component: str  # etcd, kube-apiserver, ...
    image: str
    version: str  # the image tag
    argv: tuple[str, ...]  # binary and arguments, paths translated to the host
    liveness: Probe | None
    readiness: Probe | None
    startup: Probe | None
    digest: str  # of the manifest's bytes: a change means a restart (kubelet's config hash)
    pod: dict[str, Any] = field(compare=False, hash=False)  # the parsed manifest, for the mirror


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def image_parts(image: str) -> tuple[str, str]:
    """``registry.k8s.io/kube-apiserver:v1.37.2`` -> (``kube-apiserver``, ``v1.37.2``)."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        raise ManifestError(f"image {image!r} has no tag")
    return name.rsplit("/", 1)[-1], tag


def _probe(raw: Any, where: str, ports: dict[str, int]) -> Probe | None:
    try:
        return parse_probe(raw, where, ports)
    except ProbeError as e:
        raise ManifestError(str(e)) from None


def _values(arg: str) -> tuple[str, str, list[str]]:
    """``--flag=v1,v2`` -> (``--flag=``, ``v1,v2``, [v1, v2]); a bare flag has no value, a bare
    value no prefix."""
    if arg.startswith("-"):
        name, eq, value = arg.partition("=")
        if not eq:
            return arg, "", []
        return f"{name}=", value, value.split(",")
    return "", arg, arg.split(",")


def translate(arg: str, mounts: list[tuple[str, str]]) -> str:
    """Rewrite the container paths in one argument (``--flag=/path``, ``/path``, or a comma
    list of them) to host paths through the longest mount that contains each."""
    prefix, value, parts = _values(arg)
    if not value:
        return arg
    out = []
    for part in parts:
        for mount, host in mounts:  # longest first
            base = mount.rstrip("/") or "/"
            if part == base or part.startswith(base.rstrip("/") + "/"):
                rel = part[len(base) :].lstrip("/")
                part = os.path.join(host, rel) if rel else host
                break
        out.append(part)
    return prefix + ",".join(out)


def confined(arg: str, root: Path) -> str | None:
    """The first path in ``arg`` that lies outside ``root`` (after translation), or None.

    Absolute paths, ``name=/path`` items and relative paths (the runner works in ``root``, so
    ``../x`` could climb out) are checked; URLs (``scheme://``) are not paths."""
    _, value, parts = _values(arg)
    for part in parts if value else []:
        if "=" in part and not part.startswith("/"):
            part = part.split("=", 1)[1]
        if "/" not in part or "://" in part:
            continue
        normal = os.path.normpath(os.path.join(root, part))
        if normal != str(root) and not normal.startswith(str(root) + "/"):
            return part
    return None


def host_path(host: str, root: Path, node_root: Path | None) -> Path | None:
    """Where a hostPath lies on this machine, or None when it is outside the sandbox.

    A path already inside the sandbox's state dir is taken as it is; any other absolute path is
    the node's own, as a kubelet on that node would see it (``/etc/kubernetes/pki`` is
    ``<node root>/etc/kubernetes/pki``), and must stay inside the node's root — symlinks
    followed, so a link in the node's tree cannot lead a component out of it."""
    resolved = Path(host).resolve()
    if resolved == root or root in resolved.parents:
        return resolved
    if node_root is None or not host.startswith("/"):
        return None
    node_root = node_root.resolve()
    inside = Path(os.path.normpath(os.path.join(node_root, host.lstrip("/")))).resolve()
    if inside != node_root and node_root not in inside.parents:
        return None
    return inside


def parse_manifest(
    path: Path,
    data: bytes,
    *,
    root: Path,
    resolve: Callable[[str, str], str],
    node_root: Path | None = None,
) -> RunSpec:
    """Validate one manifest and plan its process.

    ``root``: the sandbox's state dir; every path the process sees lies inside it. ``node_root``:
    the node's own tree, where other absolute hostPaths resolve (see :func:`host_path`).
    ``resolve(component, tag)`` returns the binary for an image or raises :class:`ImageNotBuilt`.
    """
    import yaml

    where = str(path)
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise ManifestError(f"{where} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "Pod" or doc.get("apiVersion") != "v1":
        raise ManifestError(f"{where} is not a v1 Pod (kind/apiVersion)")
    meta = doc.get("metadata") or {}
    if not isinstance(meta, dict) or not isinstance(doc.get("spec") or {}, dict):
        raise ManifestError(f"{where}: metadata and spec must be mappings")
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise ManifestError(f"{where}: the Pod has no metadata.name")
    try:
        return _plan(where, doc, meta, name, data, root, node_root, resolve)
    except ManifestError as e:
        e.pod = doc  # a Pod all the same: its mirror pod shows the error
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as e:
        # A field of the wrong type deep in the spec: the kubelet's decoder refuses such a
        # file ("cannot unmarshal") and runs nothing from it; so does the runner.
        raise ManifestError(
            f"{where} is not a valid Pod ({type(e).__name__}: {e}); the kubelet would refuse it too"
        ) from None


def _plan(
    where: str,
    doc: dict[str, Any],
    meta: dict[str, Any],
    name: str,
    data: bytes,
    root: Path,
    node_root: Path | None,
    resolve: Callable[[str, str], str],
) -> RunSpec:
    spec = doc.get("spec") or {}
    containers = spec.get("containers") or []
    if (
        not isinstance(containers, list)
        or len(containers) != 1
        or not isinstance(containers[0], dict)
    ):
        raise ManifestError(f"{where}: a static pod here has exactly one container")
    container = containers[0]
    command = list(container.get("command") or []) + list(container.get("args") or [])
    if not command or not all(isinstance(c, str) for c in command):
        raise ManifestError(f"{where}: the container has no command")
    if "\0" in name or any("\0" in c for c in command):
        raise ManifestError(f"{where}: the pod name or the command contains a NUL byte")
    image = container.get("image")
    if not isinstance(image, str) or not image:
        raise ManifestError(f"{where}: the container has no image")
    try:
        component, tag = image_parts(image)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None
    if component not in COMPONENTS:
        raise ManifestError(
            f"{where}: image {image!r} is not one the sandbox can run ({', '.join(COMPONENTS)})"
        )
    if command[0].rsplit("/", 1)[-1] != component:
        raise ManifestError(f"{where}: command {command[0]!r} does not match image {image!r}")
    volumes = {v.get("name"): v for v in spec.get("volumes") or [] if isinstance(v, dict)}
    mounts: list[tuple[str, str]] = []
    root = root.resolve()
    node_root = node_root.resolve() if node_root else None
    for m in container.get("volumeMounts") or []:
        if not isinstance(m, dict) or not isinstance(m.get("mountPath"), str):
            raise ManifestError(f"{where}: a volumeMount needs a name and a mountPath")
        hostpath = (volumes.get(m.get("name")) or {}).get("hostPath")
        host = hostpath.get("path") if isinstance(hostpath, dict) else None
        if not isinstance(host, str) or not host:
            raise ManifestError(f"{where}: volumeMount {m.get('name')!r} has no hostPath volume")
        resolved = host_path(host, root, node_root)
        if resolved is None:
            raise ManifestError(
                f"{where}: hostPath {host} is outside the sandbox's state dir {root}"
                + (f" and the node's root {node_root}" if node_root else "")
                + "; the sandbox never touches paths outside its own tree"
            )
        mounts.append((str(m.get("mountPath")), str(resolved)))
    mounts.sort(key=lambda pair: len(pair[0]), reverse=True)
    try:
        ports = {
            str(p.get("name")): int(p.get("containerPort") or 0)
            for p in container.get("ports") or []
            if isinstance(p, dict) and p.get("name")
        }
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: a containerPort is not a number") from None
    args = [translate(a, mounts) for a in command[1:]]
    for arg in args:
        outside = confined(arg, root)
        if outside is not None:
            raise ManifestError(
                f"{where}: the command's path {outside} is not under any volumeMount inside the "
                "sandbox's state dir; the sandbox never touches paths outside its own tree"
            )
    try:
        binary = resolve(component, tag)
    except ImageNotBuilt as e:
        e.pod = doc
        raise
    argv = (binary, *args)
    return RunSpec(
        name=name,
        namespace=str(meta.get("namespace") or "kube-system"),
        component=component,
        image=image,
        version=tag,
        argv=argv,
        liveness=_probe(container.get("livenessProbe"), f"{where} livenessProbe", ports),
        readiness=_probe(container.get("readinessProbe"), f"{where} readinessProbe", ports),
        startup=_probe(container.get("startupProbe"), f"{where} startupProbe", ports),
        digest=digest_of(data),
        pod=doc,
    )
