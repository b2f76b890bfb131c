"""The drain plan: what draining a node would do, computed without changing anything.

:func:`plan_drain` is pure: the node's pods, the DaemonSets and PDBs that exist, and (for the
detailed preflight report) the pods' owners go in; a :class:`DrainPlan` comes out. :func:`collect`
reads those inputs from the cluster. The executor (:mod:`kubecare.nodes.drain`) only acts on a
plan, and ``kubecare drain --plan`` prints one.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kubecare.kube import JSON, Kube
from kubecare.kube.objects import is_pod_ready, ref
from kubecare.nodes.drain_options import DrainOptions
from kubecare.nodes.filters import (
    Action,
    FilterOptions,
    PodFacts,
    Verdict,
    blocking_errors,
    judge_all,
    pod_facts,
    warning_lines,
)
from kubecare.nodes.selectors import selector_matches
from kubecare.nodes.workloads import WorkloadIndex, fetch_workloads

OVERLAP_FATAL = (
    "Pods covered by more than one PodDisruptionBudget ({pdbs}), which the eviction API refuses "
    "(make the budgets not overlap, or use --disable-eviction to bypass them)"
)


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


def pdbs_by_namespace(pdbs: Sequence[JSON]) -> dict[str, list[JSON]]:
    out: dict[str, list[JSON]] = defaultdict(list)
    for p in pdbs:
        out[(p.get("metadata") or {}).get("namespace", "")].append(p)
    return out


def covering_pdbs(pod: PodFacts, pdbs: Sequence[JSON]) -> tuple[str, ...]:
    """The PDBs (ns/name) of the pod's namespace that the eviction API applies to it."""
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
    workloads: WorkloadIndex | None = None,
    now: datetime | None = None,
) -> DrainPlan:
    """Plan draining ``node``.

    ``workloads`` (optional) resolves each pod's owner chain to its workload and gives its ready
    replicas cluster-wide; without it the plan names direct controllers and skips workload risk.
    With eviction (not ``--disable-eviction``), a pod covered by more than one budget blocks the
    drain: the eviction API would refuse it with a 500.
    """
    index = workloads or WorkloadIndex()
    facts = [pod_facts(p) for p in pods]
    ready = {f.uid: is_pod_ready(p) for f, p in zip(facts, pods, strict=True)}
    owners = {f.uid: index.workload_of(p) for f, p in zip(facts, pods, strict=True)}
    judged = judge_all(facts, opts, daemonsets, now)
    by_ns = pdbs_by_namespace(pdbs)
    covering = {pod.uid: covering_pdbs(pod, by_ns.get(pod.namespace, ())) for pod, _ in judged}
    if opts.eviction:
        judged = [
            (
                pod,
                Verdict(
                    Action.BLOCK,
                    OVERLAP_FATAL.format(pdbs=", ".join(covering[pod.uid])),
                    verdict.warnings,
                ),
            )
            if verdict.action is Action.EVICT and len(covering[pod.uid]) > 1
            else (pod, verdict)
            for pod, verdict in judged
        ]
    plans: list[PodPlan] = []
    ready_on_node: dict[str, int] = defaultdict(int)
    for pod, verdict in judged:
        owner = owners[pod.uid]
        workload = owner.key if owner else ""
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
                owner=owner.short if owner else "<none>",
                pdbs=covering[pod.uid],
                data_loss=tuple(loss) if verdict.action is Action.EVICT else (),
                ready=ready[pod.uid],
            )
        )
        if verdict.action is Action.EVICT and workload and ready[pod.uid]:
            ready_on_node[workload] += 1
    totals = {o.key: index.ready(o) for o in owners.values() if o is not None}
    risks = tuple(
        WorkloadRisk(w, total, n)
        for w, n in sorted(ready_on_node.items())
        if (total := totals.get(w)) is not None and n >= total > 0
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
    workloads: WorkloadIndex | None


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
    workloads = await fetch_workloads(kube, pods) if detailed else None
    return ClusterFacts(pods, version, daemonsets, pdbs, workloads)


async def _daemonsets(kube: Kube) -> set[str]:
    items, _ = await kube.list_all("/apis/apps/v1/daemonsets", what="DaemonSets")
    return {ref(d) for d in items}


async def plan_nodes(kube: Kube, nodes: Sequence[str], opts: DrainOptions) -> list[DrainPlan]:
    """The detailed preflight plan for each node (``drain --plan``); changes nothing."""
    plans = []
    for node in nodes:
        facts = await collect(
            kube, node, pod_selector=opts.pod_selector, chunk_size=opts.chunk_size, detailed=True
        )
        plans.append(
            plan_drain(
                node,
                facts.pods,
                opts.filters(),
                daemonsets=facts.daemonsets,
                pdbs=facts.pdbs,
                workloads=facts.workloads,
            )
        )
    return plans
