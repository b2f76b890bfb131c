"""The node table (`kubecare nodes`): what an operator checks before and after maintenance."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

from kubecare.kube import JSON, Kube
from kubecare.kube.objects import parse_time

ROLE_PREFIX = "node-role.kubernetes.io/"


@dataclass(frozen=True)
class NodeRow:
    """One node as `kubecare nodes` shows it."""

    name: str
    status: str  # Ready / NotReady / Unknown, plus ",SchedulingDisabled" like kubectl
    ready: str  # the Ready condition's status: True / False / Unknown
    schedulable: bool
    roles: tuple[str, ...]
    kubelet_version: str
    pods: int | None  # None: this user may not list pods
    taints: tuple[str, ...]
    age_seconds: int
    os_image: str = ""
    container_runtime: str = ""


def ready_status(node: JSON) -> str:
    """The Ready condition's status, "Unknown" when the node never reported one."""
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "Unknown"))
    return "Unknown"


def node_roles(node: JSON) -> tuple[str, ...]:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return tuple(
        sorted(
            k[len(ROLE_PREFIX) :] for k in labels if k.startswith(ROLE_PREFIX) and k != ROLE_PREFIX
        )
    )


def format_taint(taint: JSON) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key', '')}{value}:{taint.get('effect', '')}"


def summarize_nodes(
    nodes: list[JSON], pods: list[JSON] | None, now: datetime | None = None
) -> list[NodeRow]:
    """Pure: one row per node, pods counted per node (terminated pods excluded); ``pods``
    None: not known (every row's count is None)."""
    now = now or datetime.now(UTC)
    per_node = Counter(
        (p.get("spec") or {}).get("nodeName")
        for p in pods or []
        if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    )
    rows = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        meta, spec = node["metadata"], node.get("spec") or {}
        ready = ready_status(node)
        status = {"True": "Ready", "False": "NotReady"}.get(ready, "Unknown")
        schedulable = not spec.get("unschedulable")
        if not schedulable:
            status += ",SchedulingDisabled"
        created = parse_time(meta.get("creationTimestamp"))
        rows.append(
            NodeRow(
                name=meta["name"],
                status=status,
                ready=ready,
                schedulable=schedulable,
                roles=node_roles(node),
                kubelet_version=((node.get("status") or {}).get("nodeInfo") or {}).get(
                    "kubeletVersion", ""
                ),
                pods=per_node.get(meta["name"], 0) if pods is not None else None,
                taints=tuple(format_taint(t) for t in spec.get("taints") or []),
                age_seconds=int((now - created).total_seconds()) if created else 0,
                os_image=((node.get("status") or {}).get("nodeInfo") or {}).get("osImage", ""),
                container_runtime=((node.get("status") or {}).get("nodeInfo") or {}).get(
                    "containerRuntimeVersion", ""
                ),
            )
        )
    return rows


async def list_nodes(
    kube: Kube,
    *,
    selector: str | None = None,
    chunk_size: int = 500,
    notes: list[str] | None = None,
) -> list[NodeRow]:
    """Every node (or those matching ``selector``) with its pod count; a user who may not list
    pods gets the nodes without counts and a line in ``notes``."""
    from kubecare.kube.unseen import or_unseen

    params = {"labelSelector": selector} if selector else None

    async def collect(path: str, p: dict[str, str] | None, what: str) -> list[JSON]:
        return [i async for i in kube.list_items(path, params=p, chunk_size=chunk_size, what=what)]

    unseen: list[str] = [] if notes is None else notes
    pods_read = collect(
        "/api/v1/pods", {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"}, "pods"
    )
    nodes, pods = await asyncio.gather(
        collect("/api/v1/nodes", params, "nodes"),
        or_unseen(pods_read, None, unseen, "pod counts", "list pods in all namespaces"),
    )
    return summarize_nodes(nodes, pods)
