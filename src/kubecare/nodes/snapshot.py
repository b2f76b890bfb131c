"""One read of what outage and risk analysis need: every node, pod, PDB, controller and volume."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

from kubecare.kube import JSON, Kube
from kubecare.nodes.settings import OutageSettings, read_settings
from kubecare.nodes.workloads import WorkloadIndex, list_workloads


@dataclass(frozen=True)
class ClusterSnapshot:
    nodes: list[JSON]
    pods: list[JSON]
    pdbs: list[JSON]
    workloads: WorkloadIndex
    pvs: list[JSON]
    pvcs: list[JSON]
    settings: OutageSettings
    #: what RBAC kept this user from seeing, one line each (empty: everything was read)
    unseen: tuple[str, ...] = ()

    @property
    def daemonsets(self) -> set[str]:
        """``ns/name`` of every DaemonSet (the drain filters need to know which exist)."""
        return {
            key.replace("/DaemonSet/", "/", 1)
            for key in self.workloads.objects
            if "/DaemonSet/" in key
        }


async def take_snapshot(
    kube: Kube, *, volumes: bool = False, chunk_size: int = 500
) -> ClusterSnapshot:
    """List everything in parallel (paged); PVs and PVCs only when ``volumes``. Nodes are
    required; anything else this user may not list is left empty and named in ``unseen``."""
    from kubecare.kube.unseen import or_unseen

    unseen: list[str] = []

    async def items(path: str, what: str) -> list[JSON]:
        listed, _ = await kube.list_all(path, chunk_size=chunk_size, what=what)
        return listed

    def maybe(path: str, what: str, resource: str, consequence: str) -> Awaitable[list[JSON]]:
        return or_unseen(
            items(path, what), [], unseen, what, f"list {resource} in all namespaces", consequence
        )

    async def nothing() -> list[JSON]:
        return []

    nodes, pods, pdbs, workloads, pvs, pvcs = await asyncio.gather(
        items("/api/v1/nodes", "nodes"),
        maybe("/api/v1/pods", "pods", "pods", "what runs on each node is unknown"),
        maybe(
            "/apis/policy/v1/poddisruptionbudgets",
            "PodDisruptionBudgets",
            "poddisruptionbudgets",
            "budgets are not taken into account",
        ),
        list_workloads(kube, chunk_size=chunk_size, unseen=unseen),
        maybe("/api/v1/persistentvolumes", "PersistentVolumes", "persistentvolumes",
              "local volumes are not recognised") if volumes else nothing(),
        maybe("/api/v1/persistentvolumeclaims", "PersistentVolumeClaims",
              "persistentvolumeclaims", "local volumes are not recognised")
        if volumes else nothing(),
    )  # fmt: skip
    settings = await read_settings(kube, pods)
    return ClusterSnapshot(nodes, pods, pdbs, workloads, pvs, pvcs, settings, tuple(sorted(unseen)))
