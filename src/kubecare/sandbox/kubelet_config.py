"""What the runner, standing in for a control-plane node's kubelet, takes from the node's
``/var/lib/kubelet/config.yaml`` when that kubelet (re)starts: where its static pods are.

As the kubelet does (pkg/kubelet/kubeletconfig/configfiles/configfiles.go ``Load``; kubelet.go
``makePodSourceConfig``): the file is read only at start; an unreadable, empty or foreign file
(another kind or version) means the kubelet does not start — the pods it ran keep running,
unmanaged, until a start that works; a relative ``staticPodPath`` is resolved against the file's
directory (``resolveRelativePaths``); an empty one means no static pods at all. Absolute paths
are the node's, inside its tree. Only what the runner uses is checked: a field the kubelet's
strict decoding or validation would refuse elsewhere in the file goes unnoticed. Text in,
:class:`KubeletStart` out (the one file-system access: symlinks out of the tree are resolved).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

#: the kubelet's --config on a kubeadm node (kubeadm's kubelet drop-in), inside the node's tree
CONFIG = "var/lib/kubelet/config.yaml"
#: KubeletConfiguration's only served version (v1 registers CredentialProviderConfig alone:
#: k8s.io/kubelet config/v1/register.go)
GROUP_VERSIONS = ("kubelet.config.k8s.io/v1beta1",)


@dataclass(frozen=True)
class KubeletStart:
    """The outcome of one kubelet start on a node."""

    manifests: Path | None  # the static pod dir on the host; None: no static pods
    error: str | None = None  # the kubelet would not start: what runs stays as it is


def read(root: Path, text: str | None) -> KubeletStart:
    """The start of the kubelet of the node whose tree is ``root``, its config file's text
    ``text`` (None: the file cannot be read)."""
    import yaml

    where = f"/{CONFIG}"
    if text is None:
        return KubeletStart(None, f"failed to read kubelet config file {where}")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        return KubeletStart(None, f"kubelet config file {where} is not YAML: {e}")
    if not doc:
        return KubeletStart(None, f"kubelet config file {where} is empty")
    if not isinstance(doc, dict) or doc.get("kind") != "KubeletConfiguration":
        return KubeletStart(None, f"kubelet config file {where} is not a KubeletConfiguration")
    if doc.get("apiVersion") not in GROUP_VERSIONS:
        return KubeletStart(
            None, f"kubelet config file {where}: unknown apiVersion {doc.get('apiVersion')!r}"
        )
    value = doc.get("staticPodPath") or ""
    if not isinstance(value, str):
        return KubeletStart(None, f"kubelet config file {where}: staticPodPath is not a string")
    if not value:
        return KubeletStart(None)  # a kubelet without static pods
    # the node's own path ("/.." is "/" there), then where that is on the host
    node_path = posixpath.normpath(str(PurePosixPath("/" + CONFIG).parent / value))
    inside = root / node_path.lstrip("/")
    real, top = inside.resolve(), root.resolve()
    if real != top and top not in real.parents:  # through a symlink
        return KubeletStart(
            None, f"kubelet config file {where}: staticPodPath {value!r} leaves the node's tree"
        )
    return KubeletStart(inside)
