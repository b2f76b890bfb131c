"""The kubeconfig files of a kubeadm control-plane node (admin.conf, super-admin.conf,
controller-manager.conf, scheduler.conf, kubelet.conf), and the sandbox's own kubeconfig."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from kubecare.files import write_atomic
from kubecare.sandbox.pki import KUBELET_CLIENT, SandboxPKI

# file -> (client certificate in clients/, user name, which server: the cluster endpoint or the
# node's own apiserver). kubeadm points controller-manager and scheduler at the local apiserver.
NODE_FILES = {
    "admin.conf": ("admin", "kubernetes-admin", "endpoint"),
    "super-admin.conf": ("super-admin", "kubernetes-super-admin", "endpoint"),
    "controller-manager.conf": ("controller-manager", "system:kube-controller-manager", "local"),
    "scheduler.conf": ("scheduler", "system:kube-scheduler", "local"),
    # the node's own identity, system:node:<node> (kubeadm reads the node's name from it)
    "kubelet.conf": (KUBELET_CLIENT, "system:node:{node}", "endpoint"),
}


def kubeconfig_doc(
    server: str, pki: SandboxPKI, client: str, user: str, cluster: str
) -> dict[str, Any]:
    """A kubeconfig with one context and embedded credentials (as kubeadm writes them)."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    pair = pki.pair(client)
    context = f"{user}@{cluster}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {"server": server, "certificate-authority-data": b64(pki.ca.cert)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pair.cert),
                    "client-key-data": b64(pair.key),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": cluster, "user": user}}],
        "current-context": context,
    }


def write(path: Path, doc: dict[str, Any]) -> None:
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False), mode=0o600)


def write_node_files(
    directory: Path, pki: SandboxPKI, *, node: str, endpoint: str, local: str
) -> None:
    """``/etc/kubernetes/*.conf`` of one control-plane node."""
    for name, (client, user, which) in NODE_FILES.items():
        server = endpoint if which == "endpoint" else local
        if client == KUBELET_CLIENT:
            client, user = client + node, user.format(node=node)
        write(directory / name, kubeconfig_doc(server, pki, client, user, "kubernetes"))


def sandbox_kubeconfig(
    server: str, pki: SandboxPKI, sandbox: str, *, client: str = "admin"
) -> dict[str, Any]:
    """The sandbox's own kubeconfig: admin.conf's credentials under names unique to the sandbox
    (cluster, user and context ``kubecare-<name>``), so several sandboxes can sit in one
    KUBECONFIG without one's user shadowing another's."""
    name = f"kubecare-{sandbox}"
    doc = kubeconfig_doc(server, pki, client, name, name)
    doc["contexts"][0]["name"] = doc["current-context"] = name
    return doc
