"""The sandbox's own kubeconfig files on the host (admin, kwok, super-admin: through the host's
forward of the cluster endpoint), and a kwok worker's kubelet.conf. A control-plane node's own
files are kubeadm's (its kubeconfig phase)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from kubecare.files import write_atomic
from kubecare.sandbox.pki import SandboxPKI


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
