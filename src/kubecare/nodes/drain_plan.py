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
    observed: bool = True  # its status is of its current spec (observedGeneration == generation)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def stuck(self) -> bool:
        """Allows no disruption although every pod it expects is healthy: nothing will change
        that. A budget whose status is not computed yet (new, or the controller-manager down)
        is not judged stuck: its zeros mean "not known"."""
        return (
            self.observed
            and self.expected_pods > 0
            and self.disruptions_allowed == 0
            and self.current_healthy >= self.expected_pods
        )


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
    # Its PDB will never allow the eviction (kubecare.nodes.surge): "" when not so; else
    # whether a rollout of its Deployment could replace it first, and why (not).
    surge: str = ""
    surge_ok: bool = False
    deployment: str = ""  # "ns/name" of the Deployment a surge would roll out

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
    def stuck_pdbs(self) -> tuple[PdbStatus, ...]:
        """PDBs covering pods to evict that allow no disruption although every pod they expect
        is healthy: nothing will change that, so the drain would wait for ever."""
        return tuple(p for p in self.pdbs if p.stuck)

    @property
    def to_surge(self) -> tuple[str, ...]:
        """``ns/name`` of the Deployments a ``--surge`` drain rolls out, once each."""
        return tuple(dict.fromkeys(p.deployment for p in self.pods if p.surge_ok))

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
        observed=st.get("observedGeneration")
        == meta.get("generation", st.get("observedGeneration")),
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
    surge: bool = False,
) -> DrainPlan:
    """Plan draining ``node``.

    ``workloads`` (optional) resolves each pod's owner chain to its workload and gives its ready
    replicas cluster-wide; without it the plan names direct controllers and skips workload risk.
    With eviction (not ``--disable-eviction``), a pod covered by more than one budget blocks the
    drain: the eviction API would refuse it with a 500. A pod a PDB will never let go is marked
    with whether a rollout of its Deployment could replace it (``surge``: the drain will do it).
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
    plan = DrainPlan(
        node=node,
        pods=tuple(plans),
        errors=tuple(blocking_errors(judged)),
        warnings=tuple(warning_lines(judged)),
        pdbs=tuple(statuses[k] for k in used),
        at_risk=risks,
        holds=tuple(holds),
    )
    by_uid = {f.uid: p for f, p in zip(facts, pods, strict=True)}
    return _with_surges(plan, index, by_uid, surge)


def _with_surges(
    plan: DrainPlan, index: WorkloadIndex, pods: dict[str, JSON], surge: bool
) -> DrainPlan:
    """Mark the pods a stuck PDB holds for ever, and whether ``--surge`` could move them: only
    when every pod to evict that such a budget holds belongs to one Deployment whose rollout
    keeps every replica up (a budget also holding another pod would get its headroom from the
    rollout and let that one go too)."""
    from dataclasses import replace

    from kubecare.nodes.surge import judge_deployment

    stuck = {p.key: p for p in plan.stuck_pdbs}
    if not stuck:
        return plan
    held = [p for p in plan.pods if p.action is Action.EVICT and any(k in stuck for k in p.pdbs)]
    verdicts: dict[str, tuple[bool, str, str]] = {}  # pod uid -> (ok, why, deployment)
    for p in held:
        owner = index.workload_of(pods[p.uid])
        obj = index.objects.get(owner.key) if owner is not None else None
        if not index.objects:
            verdicts[p.uid] = (False, "", "")  # owners not read: say only that --surge exists
        elif owner is None or owner.kind != "Deployment":
            why = f"owned by {owner.short if owner else 'no controller'}, not a Deployment"
            verdicts[p.uid] = (False, why, "")
        elif obj is None:
            why = f"its Deployment {owner.namespace}/{owner.name} was not read"
            verdicts[p.uid] = (False, why, "")
        else:
            v = judge_deployment(obj, plan.node)
            verdicts[p.uid] = (v.ok, v.reason, f"{owner.namespace}/{owner.name}")
    for key in stuck:  # one budget, one Deployment, every pod it holds movable
        mine = [p for p in held if key in p.pdbs]
        targets = {verdicts[p.uid][2] for p in mine}
        if len(targets) > 1 or not all(verdicts[p.uid][0] for p in mine):
            for p in mine:
                if verdicts[p.uid][0]:
                    others = ", ".join(q.key for q in mine if q is not p)
                    why = f"PDB {key} also holds {others}, which its rollout would not replace"
                    verdicts[p.uid] = (False, why, "")
    out: list[PodPlan] = []
    warnings = list(plan.warnings)
    for p in plan.pods:
        if p.uid not in verdicts:
            out.append(p)
            continue
        ok, why, name = verdicts[p.uid]
        out.append(replace(p, surge=why or "owners not read", surge_ok=ok, deployment=name))
        budget = stuck[next(k for k in p.pdbs if k in stuck)]
        forever = (
            f"pod {p.key}: PDB {budget.key} allows no disruption with all "
            f"{budget.expected_pods} pod(s) healthy: the drain would wait for ever"
        )
        if ok and not surge:
            warnings.append(f"{forever}; --surge replaces it first ({why})")
        elif not ok and why:
            warnings.append(f"{forever}; --surge cannot help: {why}")
        elif not ok:
            warnings.append(
                f"{forever}; if its owner is a Deployment, --surge can replace it first "
                "(kubecare drain --plan --surge shows whether)"
            )
    return replace(plan, pods=tuple(out), warnings=tuple(warnings))


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
                surge=opts.surge,
            )
        )
    return plans
