"""One read of what outage and risk analysis need: every node, pod, PDB, controller and volume."""

from __future__ import annotations

import asyncio
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
    """List everything in parallel (paged); PVs and PVCs only when ``volumes``."""

    async def items(path: str, what: str) -> list[JSON]:
        listed, _ = await kube.list_all(path, chunk_size=chunk_size, what=what)
        return listed

    async def nothing() -> list[JSON]:
        return []

    nodes, pods, pdbs, workloads, pvs, pvcs = await asyncio.gather(
        items("/api/v1/nodes", "nodes"),
        items("/api/v1/pods", "pods"),
        items("/apis/policy/v1/poddisruptionbudgets", "PodDisruptionBudgets"),
        list_workloads(kube, chunk_size=chunk_size),
        items("/api/v1/persistentvolumes", "PersistentVolumes") if volumes else nothing(),
        items("/api/v1/persistentvolumeclaims", "PersistentVolumeClaims") if volumes else nothing(),
    )
    settings = await read_settings(kube, pods)
    return ClusterSnapshot(nodes, pods, pdbs, workloads, pvs, pvcs, settings)
