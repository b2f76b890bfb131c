"""Which workload owns a pod, and how many ready replicas it has: one answer for drain, outage
and risk.

The owner chain is followed through the real objects (pod -> ReplicaSet -> Deployment by their
controller ownerReferences), never guessed from names or labels. :class:`WorkloadIndex` holds the
controllers it knows; it is filled either from cluster-wide lists (outage and risk read them
anyway) or, for one node's pods, by fetching just their controllers (drain ``--plan``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kubecare.errors import Forbidden, NotFound
from kubecare.kube import JSON, Kube

# kind -> (API path prefix, resource) of the controllers that own pods, and how they count ready.
CONTROLLERS: dict[str, tuple[str, str]] = {
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "DaemonSet": ("/apis/apps/v1", "daemonsets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "ReplicationController": ("/api/v1", "replicationcontrollers"),
}


@dataclass(frozen=True)
class Workload:
    """A pod's top-level controller: ``Deployment/web`` in namespace ``shop``."""

    namespace: str
    kind: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.kind}/{self.name}"

    @property
    def short(self) -> str:
        return f"{self.kind}/{self.name}"


def controller_ref(obj: JSON) -> JSON | None:
    """The ownerReference with ``controller: true`` (there is at most one)."""
    return next(
        (
            o
            for o in (obj.get("metadata") or {}).get("ownerReferences") or []
            if o.get("controller")
        ),
        None,
    )


def ready_count(kind: str, obj: JSON) -> int:
    status = obj.get("status") or {}
    if kind == "DaemonSet":
        return int(status.get("numberReady") or 0)
    if kind == "Job":
        return int(status.get("ready") or 0)
    return int(status.get("readyReplicas") or 0)


@dataclass
class WorkloadIndex:
    """Controllers by ``ns/Kind/name``: enough to resolve owner chains and count ready replicas."""

    objects: dict[str, JSON] = field(default_factory=dict)

    @classmethod
    def from_objects(cls, objects: Iterable[tuple[str, JSON]]) -> WorkloadIndex:
        """From (kind, object) pairs, e.g. every ReplicaSet and Deployment listed."""
        index = cls()
        for kind, obj in objects:
            index.add(kind, obj)
        return index

    def add(self, kind: str, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        self.objects[f"{meta.get('namespace', '')}/{kind}/{meta.get('name', '')}"] = obj

    def workload_of(self, pod: JSON) -> Workload | None:
        """The pod's top-level controller, or None for a pod without one."""
        owner = controller_ref(pod)
        if owner is None:
            return None
        ns = (pod.get("metadata") or {}).get("namespace", "")
        current = Workload(ns, str(owner.get("kind", "")), str(owner.get("name", "")))
        for _ in range(5):  # ReplicaSet -> Deployment (and anything else that nests), bounded
            obj = self.objects.get(current.key)
            parent = controller_ref(obj) if obj is not None else None
            if parent is None or parent.get("kind") not in CONTROLLERS:
                return current
            current = Workload(ns, str(parent["kind"]), str(parent.get("name", "")))
        return current

    def ready(self, workload: Workload) -> int | None:
        """Ready replicas of ``workload`` cluster-wide, if its object is known."""
        obj = self.objects.get(workload.key)
        return ready_count(workload.kind, obj) if obj is not None else None


async def list_workloads(
    kube: Kube, *, chunk_size: int = 500, unseen: list[str] | None = None
) -> WorkloadIndex:
    """Every controller object in the cluster (one paged list per kind). With ``unseen``, a
    kind this user may not list is left out and named there instead of failing the read."""

    async def one(kind: str) -> list[tuple[str, JSON]]:
        prefix, resource = CONTROLLERS[kind]
        try:
            items, _ = await kube.list_all(
                f"{prefix}/{resource}", chunk_size=chunk_size, what=resource
            )
        except Forbidden:
            if unseen is None:
                raise
            from kubecare.kube.unseen import note

            unseen.append(
                note(f"{kind}s", f"list {resource} in all namespaces",
                     "pods they own are judged without them")
            )  # fmt: skip
            return []
        return [(kind, i) for i in items]

    lists = await asyncio.gather(*(one(k) for k in CONTROLLERS))
    return WorkloadIndex.from_objects(pair for chunk in lists for pair in chunk)


async def fetch_workloads(kube: Kube, pods: Sequence[JSON]) -> WorkloadIndex:
    """Just the controllers of ``pods`` and their parents (GET each once): cheap for one node."""
    index = WorkloadIndex()
    seen: set[str] = set()

    async def fetch(ns: str, kind: str, name: str) -> None:
        key = f"{ns}/{kind}/{name}"
        if key in seen or kind not in CONTROLLERS:
            return
        seen.add(key)
        prefix, resource = CONTROLLERS[kind]
        try:
            obj = await kube.get_json(
                f"{prefix}/namespaces/{ns}/{resource}/{name}", what=f"{kind} {ns}/{name}"
            )
        except NotFound:
            return
        index.add(kind, obj)
        parent = controller_ref(obj)
        if parent is not None:
            await fetch(ns, str(parent.get("kind", "")), str(parent.get("name", "")))

    owners = {
        (
            (p.get("metadata") or {}).get("namespace", ""),
            str(o.get("kind", "")),
            str(o.get("name", "")),
        )
        for p in pods
        if (o := controller_ref(p)) is not None
    }
    await asyncio.gather(*(fetch(*o) for o in owners))
    return index
