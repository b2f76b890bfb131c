"""The sandbox's fake nodes: Node objects that look like kubeadm's, all kept alive by one kwok.

kwok manages the nodes labelled ``kubecare.io/kwok=on`` (``--manage-nodes-with-label-selector``,
a server-side selector). Taking a node down sets the label to ``off``: the apiserver's watch tells
kwok the node left its selection, kwok stops renewing its Lease and its status, and the real node
lifecycle controller reacts as it would to a dead kubelet. Setting it back to ``on`` brings the
node back. One process serves a hundred nodes (each kwok used to cost ~50 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from kubecare.errors import Conflict, NotFound, OperationFailed
from kubecare.kube import JSON, Kube
from kubecare.nodes.inventory import ready_status

CONTROL_PLANE_NODE = "control-plane"
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
OS_IMAGE = "Debian GNU/Linux 12 (bookworm)"
CONTAINER_RUNTIME = "containerd://2.1.4"
KERNEL = "6.1.0-kwok-amd64"


KWOK_LABEL = "kubecare.io/kwok"


@dataclass(frozen=True)
class NodeSpec:
    """One sandbox node: its name, position (for its address) and role."""

    name: str
    index: int
    control_plane: bool

    @property
    def ip(self) -> str:
        if self.control_plane:  # the node's own address in its network namespace
            from kubecare.sandbox.network import node_ip

            return node_ip(self.index)
        # kwok's workers have no network: loopback addresses nothing ever connects to.
        return f"127.1.{self.index // 250}.{self.index % 250 + 1}"


def node_manifest(spec: NodeSpec, kube_version: str, *, max_pods: int) -> JSON:
    """A Node object as a kubeadm-joined kubelet would register it."""
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        "type": "kwok",
        KWOK_LABEL: "on",
    }
    taints = []
    if spec.control_plane:
        labels[CONTROL_PLANE_LABEL] = ""
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
        taints.append({"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"})
    resources_ = {"cpu": "4", "memory": "16Gi", "pods": str(max_pods), "ephemeral-storage": "100Gi"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": labels,
            "annotations": {
                "kwok.x-k8s.io/node": "fake",
                "node.alpha.kubernetes.io/ttl": "0",
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
            },
        },
        # No podCIDR: kube-controller-manager allocates one from the cluster CIDR, as on kubeadm.
        "spec": {"taints": taints},
        "status": {
            "capacity": resources_,
            "allocatable": resources_,
            "nodeInfo": node_info(spec.name, kube_version),
            "addresses": [
                {"type": "InternalIP", "address": spec.ip},
                {"type": "Hostname", "address": spec.name},
            ],
        },
    }


def node_info(name: str, kube_version: str) -> JSON:
    return {
        "architecture": "amd64",
        "bootID": str(uuid.uuid4()),
        "containerRuntimeVersion": CONTAINER_RUNTIME,
        "kernelVersion": KERNEL,
        "kubeProxyVersion": f"v{kube_version.removeprefix('v')}",
        "kubeletVersion": f"v{kube_version.removeprefix('v')}",
        "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, name).hex,
        "operatingSystem": "linux",
        "osImage": OS_IMAGE,
        "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
    }


def stages_file() -> Path:
    """The kwok Stage configs shipped with kubecare."""
    return Path(str(resources.files("kubecare.sandbox") / "data" / "stages.yaml"))


def kwok_args(binary: str, *, kubeconfig: Path, port: int, lease_seconds: int) -> list[str]:
    """One kwok for every node labelled ``kubecare.io/kwok=on``."""
    return [
        binary,
        "--kubeconfig",
        str(kubeconfig),
        "--config",
        str(stages_file()),
        "--manage-nodes-with-label-selector",
        f"{KWOK_LABEL}=on",
        "--cidr",
        "10.244.0.0/16",
        "--node-lease-duration-seconds",
        str(lease_seconds),
        "--server-address",
        f"127.0.0.1:{port}",
    ]


async def set_kwok_managed(kube: Kube, node: str, managed: bool) -> None:
    """Hand the node to kwok (it reports and renews its lease) or take it away (it goes silent)."""
    await kube.request_json(
        "PATCH",
        f"/api/v1/nodes/{node}",
        body={"metadata": {"labels": {KWOK_LABEL: "on" if managed else "off"}}},
        content_type="application/merge-patch+json",
        what=f'node "{node}"',
    )


async def register_node(kube: Kube, manifest: JSON) -> None:
    """Create the Node (kept if it exists) and set its status the way a kubelet reports it."""
    name = manifest["metadata"]["name"]
    with contextlib.suppress(Conflict):  # a restarted sandbox keeps its nodes
        await kube.request_json("POST", "/api/v1/nodes", body=manifest, what=f'node "{name}"')
    # Create ignores status (a subresource), so it is patched in as a kubelet would report it.
    await patch_status(kube, name, manifest["status"])


async def patch_status(kube: Kube, name: str, status: JSON) -> None:
    """Merge-patch the node's status subresource."""
    await kube.request_json(
        "PATCH",
        f"/api/v1/nodes/{name}/status",
        body={"status": status},
        content_type="application/merge-patch+json",
        what=f'node "{name}" status',
    )


async def set_kubelet_version(kube: Kube, node: str, version: str) -> None:
    """Report ``version`` as the node's kubelet and kube-proxy version (as after a node upgrade)."""
    v = f"v{version.removeprefix('v')}"
    await patch_status(kube, node, {"nodeInfo": {"kubeletVersion": v, "kubeProxyVersion": v}})


async def set_boot_id(kube: Kube, node: str) -> str:
    """Give the node a new boot ID, as a reboot does; returns it."""
    boot = str(uuid.uuid4())
    await patch_status(kube, node, {"nodeInfo": {"bootID": boot}})
    return boot


async def wait_ready(
    kube: Kube,
    names: list[str],
    *,
    ready: bool = True,
    timeout: float = 120.0,
    registering: bool = False,
) -> float:
    """Wait until every node in ``names`` is Ready (or, with ``ready=False``, not Ready).
    ``registering``: a node not there yet is one whose kubelet has still to register."""
    started = time.monotonic()
    while True:
        pending = []
        for name in names:
            try:
                node = await kube.get_json(f"/api/v1/nodes/{name}", what=f'node "{name}"')
            except NotFound:
                if not registering:
                    raise
                pending.append(name)
                continue
            if (ready_status(node) == "True") != ready:
                pending.append(name)
        if not pending:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            state = "Ready" if ready else "NotReady"
            raise OperationFailed(
                f"nodes {', '.join(pending)} did not become {state} within {timeout:.0f}s"
            )
        await asyncio.sleep(0.25)
