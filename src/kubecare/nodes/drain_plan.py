"""The drain plan: what draining a node would do, computed without changing anything.

:func:`plan_drain` is pure: the node's pods, the DaemonSets and PDBs that exist, and (for the
detailed preflight report) the pods' owners go in; a :class:`DrainPlan` comes out. :func:`collect`
reads those inputs from the cluster. The executor (:mod:`kubecare.nodes.drain`) only acts on a
plan, and ``kubecare drain --plan`` prints one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kubecare.errors import NotFound
from kubecare.kube import JSON, Kube
from kubecare.kube.objects import is_pod_ready, ref
from kubecare.nodes.filters import (
    Action,
    FilterOptions,
    PodFacts,
    blocking_errors,
    judge_all,
    pod_facts,
    warning_lines,
)
from kubecare.nodes.selectors import selector_matches


@dataclass(frozen=True)
class PdbStatus:
    """A PodDisruptionBudget and how many disruptions it allows right now."""

    namespace: str
    name: str
    disruptions_allowed: int
    current_healthy: int
    desired_healthy: int
    expected_pods: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PodPlan:
    """One pod in the plan: its verdict and what it belongs to."""

    namespace: str
    name: str
    uid: str
    action: Action
    reason: str
    warnings: tuple[str, ...]
    owner: str  # "Deployment/web", "StatefulSet/db", "DaemonSet/agent", "<none>"
    pdbs: tuple[str, ...]  # "ns/name" of every PDB whose selector covers the pod
    data_loss: tuple[str, ...]  # "emptyDir", "unmanaged pod"
    ready: bool

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class WorkloadRisk:
    """A workload all of whose ready replicas run on the node being drained."""

    workload: str  # "ns/Deployment/web"
    ready_total: int
    ready_on_node: int


@dataclass(frozen=True)
class DrainPlan:
    """What draining ``node`` would do. ``errors`` non-empty means the drain is blocked."""

    node: str
    pods: tuple[PodPlan, ...]
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    pdbs: tuple[PdbStatus, ...] = ()
    at_risk: tuple[WorkloadRisk, ...] = ()
    holds: tuple[str, ...] = field(default=())

    @property
    def to_evict(self) -> tuple[PodPlan, ...]:
        return tuple(p for p in self.pods if p.action is Action.EVICT)

    @property
    def blocked(self) -> bool:
        return bool(self.errors)

    @property
    def can_finish_now(self) -> bool:
        """No blocking pod and no PDB that would hold an eviction at this moment."""
        return not self.errors and not self.holds


def pdb_status(pdb: JSON) -> PdbStatus:
    st = pdb.get("status") or {}
    meta = pdb.get("metadata") or {}
    return PdbStatus(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        disruptions_allowed=int(st.get("disruptionsAllowed") or 0),
        current_healthy=int(st.get("currentHealthy") or 0),
        desired_healthy=int(st.get("desiredHealthy") or 0),
        expected_pods=int(st.get("expectedPods") or 0),
    )


def covering_pdbs(pod: PodFacts, pdbs: Sequence[JSON]) -> tuple[str, ...]:
    """The PDBs (ns/name) in the pod's namespace whose selector matches its labels."""
    return tuple(
        ref(p)
        for p in pdbs
        if (p.get("metadata") or {}).get("namespace") == pod.namespace
        and selector_matches((p.get("spec") or {}).get("selector"), pod.labels)
    )


def plan_drain(
    node: str,
    pods: Sequence[JSON],
    opts: FilterOptions,
    *,
    daemonsets: Collection[str],
    pdbs: Sequence[JSON] = (),
    owners: Mapping[str, str] | None = None,
    ready_replicas: Mapping[str, int] | None = None,
    now: datetime | None = None,
) -> DrainPlan:
    """Plan draining ``node``.

    ``owners`` maps a controller ("ns/ReplicaSet/web-5d9c") to the workload above it
    ("ns/Deployment/web"); ``ready_replicas`` maps a workload to its ready replicas cluster-wide.
    Both are optional: without them the plan names direct controllers and skips workload risk.
    """
    owners = owners or {}
    facts = [pod_facts(p) for p in pods]
    ready = {pod_facts(p).uid: is_pod_ready(p) for p in pods}
    judged = judge_all(facts, opts, daemonsets, now)
    plans: list[PodPlan] = []
    ready_on_node: dict[str, int] = defaultdict(int)
    for pod, verdict in judged:
        controller = (
            f"{pod.namespace}/{pod.controller_kind}/{pod.controller_name}"
            if pod.controller_kind
            else ""
        )
        workload = owners.get(controller, controller)
        loss = []
        if pod.empty_dir and not pod.finished:
            loss.append("emptyDir")
        if pod.controller_kind is None and not pod.finished:
            loss.append("unmanaged pod")
        plans.append(
            PodPlan(
                namespace=pod.namespace,
                name=pod.name,
                uid=pod.uid,
                action=verdict.action,
                reason=verdict.reason,
                warnings=verdict.warnings,
                owner=workload.split("/", 1)[1] if workload else "<none>",
                pdbs=covering_pdbs(pod, pdbs),
                data_loss=tuple(loss) if verdict.action is Action.EVICT else (),
                ready=ready[pod.uid],
            )
        )
        if verdict.action is Action.EVICT and workload and ready[pod.uid]:
            ready_on_node[workload] += 1
    risks = tuple(
        WorkloadRisk(w, ready_replicas[w], n)
        for w, n in sorted(ready_on_node.items())
        if ready_replicas is not None and w in ready_replicas and n >= ready_replicas[w] > 0
    )
    statuses = {ref(p): pdb_status(p) for p in pdbs}
    used = sorted({k for p in plans if p.action is Action.EVICT for k in p.pdbs})
    holds = []
    for key in used:
        st = statuses[key]
        wanted = sum(1 for p in plans if p.action is Action.EVICT and key in p.pdbs)
        if st.disruptions_allowed == 0:
            holds.append(
                f"PDB {key} allows 0 disruptions now: {wanted} pod(s) will wait for replacements to become ready"
            )
        elif st.disruptions_allowed < wanted:
            holds.append(
                f"PDB {key} allows {st.disruptions_allowed} disruption(s) for {wanted} pod(s): the rest will wait for replacements"
            )
    return DrainPlan(
        node=node,
        pods=tuple(plans),
        errors=tuple(blocking_errors(judged)),
        warnings=tuple(warning_lines(judged)),
        pdbs=tuple(statuses[k] for k in used),
        at_risk=risks,
        holds=tuple(holds),
    )


@dataclass(frozen=True)
class ClusterFacts:
    """What :func:`collect` read: the inputs of :func:`plan_drain`, and where to watch from."""

    pods: list[JSON]
    pods_version: str
    daemonsets: set[str]
    pdbs: list[JSON]
    owners: dict[str, str]
    ready_replicas: dict[str, int] | None


async def collect(
    kube: Kube,
    node: str,
    *,
    pod_selector: str | None = None,
    chunk_size: int = 500,
    detailed: bool = False,
) -> ClusterFacts:
    """Read the node's pods, DaemonSets, PDBs (and, if ``detailed``, the pods' workloads)."""
    params = {"fieldSelector": f"spec.nodeName={node}"}
    if pod_selector:
        params["labelSelector"] = pod_selector
    (pods, version), daemonsets, (pdbs, _) = await asyncio.gather(
        kube.list_all(
            "/api/v1/pods", params=params, chunk_size=chunk_size, what=f'pods on node "{node}"'
        ),
        _daemonsets(kube),
        kube.list_all(
            "/apis/policy/v1/poddisruptionbudgets",
            chunk_size=chunk_size,
            what="PodDisruptionBudgets",
        ),
    )
    owners: dict[str, str] = {}
    ready: dict[str, int] | None = None
    if detailed:
        owners, ready = await _workloads(kube, pods)
    return ClusterFacts(pods, version, daemonsets, pdbs, owners, ready)


async def _daemonsets(kube: Kube) -> set[str]:
    items, _ = await kube.list_all("/apis/apps/v1/daemonsets", what="DaemonSets")
    return {ref(d) for d in items}


_WORKLOAD_PATHS = {
    "ReplicaSet": "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets/{name}",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs/{name}",
}


async def _workloads(kube: Kube, pods: Sequence[JSON]) -> tuple[dict[str, str], dict[str, int]]:
    """Owner chain (ReplicaSet -> Deployment) and ready replicas of each workload, one GET each."""
    controllers = {
        (f.namespace, f.controller_kind, f.controller_name)
        for f in map(pod_facts, pods)
        if f.controller_kind in _WORKLOAD_PATHS and f.controller_name
    }
    owners: dict[str, str] = {}
    ready: dict[str, int] = {}

    async def one(ns: str, kind: str, name: str) -> None:
        key = f"{ns}/{kind}/{name}"
        try:
            obj = await kube.get_json(
                _WORKLOAD_PATHS[kind].format(ns=ns, name=name), what=f"{kind} {ns}/{name}"
            )
        except NotFound:
            return
        parent = next(
            (
                o
                for o in (obj.get("metadata") or {}).get("ownerReferences") or []
                if o.get("controller")
            ),
            None,
        )
        if kind == "ReplicaSet" and parent and parent.get("kind") == "Deployment":
            dep_key = f"{ns}/Deployment/{parent['name']}"
            owners[key] = dep_key
            try:
                dep = await kube.get_json(
                    _WORKLOAD_PATHS["Deployment"].format(ns=ns, name=parent["name"])
                )
                ready[dep_key] = int((dep.get("status") or {}).get("readyReplicas") or 0)
            except NotFound:
                pass
            return
        status = obj.get("status") or {}
        ready[key] = int(
            status.get("readyReplicas") or status.get("numberReady") or status.get("ready") or 0
        )

    await asyncio.gather(*(one(*c) for c in controllers))
    return owners, ready
