"""What if a node went down now, or were drained now? Blast radius per node; nothing changes.

Pure: a :class:`~kubecare.nodes.snapshot.ClusterSnapshot` in, :class:`NodeRisk` out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubecare.kube import JSON
from kubecare.kube.objects import is_pod_ready, ref
from kubecare.nodes.drain_plan import DrainPlan, pdbs_by_namespace, plan_drain
from kubecare.nodes.filters import FilterOptions
from kubecare.nodes.outage import Fate, NodeOutage, PodIndex, node_taints, outlook
from kubecare.nodes.selectors import selector_matches
from kubecare.nodes.settings import UNREACHABLE_TAINT
from kubecare.nodes.snapshot import ClusterSnapshot


@dataclass(frozen=True)
class NodeRisk:
    """The blast radius of losing (or draining) one node now."""

    node: str
    pods: int
    lost_for_good: tuple[str, ...]
    lose_all_ready_replicas: tuple[str, ...]
    below_pdb: tuple[str, ...]
    stuck: tuple[str, ...]
    local_data: tuple[str, ...]
    timeline: tuple[str, ...]
    drain_verdict: str
    score: int
    outage: NodeOutage
    drain: DrainPlan


def local_data(pod: JSON, node: str, pvs: dict[str, JSON], pvcs: dict[str, JSON]) -> list[str]:
    """Data that lives on the node: emptyDir, hostPath, and PVCs bound to local/hostPath PVs there
    — except a hostPath that is mounted, and only ever read-only: the node's own files the pod
    reads (kubeadm's control plane mounts the host's CA dirs and its kubeconfig files so;
    counted, they made every kubeadm control-plane node look the riskiest). A local PV stays
    counted however it is mounted (its data is the node's alone), and so does a volume no
    container mounts (nothing says what uses it)."""
    key = ref(pod)
    out = []
    spec = pod.get("spec") or {}
    mounts = [
        m
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])
        for m in c.get("volumeMounts") or []
    ]
    read_only = {m.get("name") for m in mounts if m.get("readOnly")} - {
        m.get("name") for m in mounts if not m.get("readOnly")
    }
    for vol in spec.get("volumes") or []:
        if "hostPath" in vol and vol.get("name") in read_only:
            continue
        if "emptyDir" in vol:
            out.append(f"{key}: emptyDir {vol.get('name')}")
        elif "hostPath" in vol:
            out.append(f"{key}: hostPath {(vol['hostPath'] or {}).get('path')}")
        elif "persistentVolumeClaim" in vol:
            claim = pvcs.get(
                f"{pod['metadata'].get('namespace')}/{vol['persistentVolumeClaim'].get('claimName')}"
            )
            pv = pvs.get(((claim or {}).get("spec") or {}).get("volumeName", "")) if claim else None
            if pv and _pv_on_node(pv, node):
                out.append(f"{key}: local PersistentVolume {pv['metadata']['name']}")
    return out


def _pv_on_node(pv: JSON, node: str) -> bool:
    spec = pv.get("spec") or {}
    if "local" not in spec and "hostPath" not in spec:
        return False
    terms = ((spec.get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms") or []
    if not terms:
        return "hostPath" in spec  # a hostPath PV without affinity lives wherever its pod ran
    for term in terms:
        for expr in term.get("matchExpressions") or []:
            if expr.get("key") == "kubernetes.io/hostname" and node in (expr.get("values") or []):
                return True
    return False


def pdbs_broken(pods_here: Sequence[JSON], pdbs: Sequence[JSON]) -> list[str]:
    """PDBs that losing these pods at once would push below their minimum."""
    out = []
    namespaces = {(p.get("metadata") or {}).get("namespace") for p in pods_here}
    for pdb in pdbs:
        if (pdb.get("metadata") or {}).get("namespace") not in namespaces:
            continue
        meta, status = pdb.get("metadata") or {}, pdb.get("status") or {}
        selector = (pdb.get("spec") or {}).get("selector")
        covered = [
            p
            for p in pods_here
            if (p.get("metadata") or {}).get("namespace") == meta.get("namespace")
            and selector_matches(selector, (p.get("metadata") or {}).get("labels") or {})
            and is_pod_ready(p)
        ]
        allowed = int(status.get("disruptionsAllowed") or 0)
        if len(covered) > allowed:
            out.append(
                f"{ref(pdb)}: {len(covered)} healthy pod(s) here, {allowed} disruption(s) allowed "
                f"(would fall to {int(status.get('currentHealthy') or 0) - len(covered)} of {int(status.get('desiredHealthy') or 0)} desired)"
            )
    return out


def timeline(outage: NodeOutage, grace: int) -> tuple[str, ...]:
    lines = [f"+{grace}s: node tainted {UNREACHABLE_TAINT}:NoExecute (node-monitor grace period)"]
    groups: dict[int, list[str]] = defaultdict(list)
    forever = 0
    for p in outage.pods:
        if p.toleration_seconds is None:
            forever += 1
        else:
            groups[p.toleration_seconds].append(p.toleration_source)
    for delay in sorted(groups):
        sources = sorted(set(groups[delay]))
        lines.append(
            f"+{grace + delay}s: {len(groups[delay])} pod(s) evicted (toleration {delay}s: {', '.join(sources)})"
        )
    if forever:
        lines.append(
            f"never: {forever} pod(s) tolerate the taint without a time limit (DaemonSets and the like)"
        )
    return tuple(lines)


def assess(
    node: str | JSON,
    snap: ClusterSnapshot,
    now: datetime | None = None,
    index: PodIndex | None = None,
) -> NodeRisk:
    """The blast radius of ``node`` (a name, or the Node); pass ``index`` when assessing many
    nodes of one snapshot."""
    now = now or datetime.now(UTC)
    index = index or PodIndex(snap.pods, snap.workloads)
    if isinstance(node, str):
        node_obj = next((n for n in snap.nodes if n["metadata"]["name"] == node), {})
    else:
        node_obj, node = node, str(node["metadata"]["name"])
    pods_here = index.by_node.get(node, [])
    grace = snap.settings.node_monitor_grace_period.seconds
    out = outlook(
        node=node,
        condition="Ready (what-if: down now)",
        since=None,
        taints=node_taints(node_obj),
        taint_key=UNREACHABLE_TAINT,
        taint_time=now + timedelta(seconds=grace),
        index=index,
        failing={node},
        settings=snap.settings,
        now=now,
    )
    pvs = {p["metadata"]["name"]: p for p in snap.pvs}
    pvcs = {ref(c): c for c in snap.pvcs}
    data = [d for p in pods_here for d in local_data(p, node, pvs, pvcs)]
    by_ns = pdbs_by_namespace(snap.pdbs)
    namespaces = {(p.get("metadata") or {}).get("namespace", "") for p in pods_here}
    pdbs_here = [pdb for ns in namespaces for pdb in by_ns.get(ns, [])]
    drain = plan_drain(
        node,
        pods_here,
        FilterOptions(),
        daemonsets=snap.daemonsets,
        pdbs=pdbs_here,
        workloads=snap.workloads,
        now=now,
    )
    if drain.blocked:
        verdict = "blocked without overrides: " + "; ".join(drain.errors)
    elif drain.holds:
        verdict = "would wait: " + "; ".join(drain.holds)
    else:
        verdict = "could finish now"
    lost = tuple(p.key for p in out.pods if p.fate is Fate.LOST)
    stuck = tuple(p.key for p in out.pods if p.fate is Fate.STUCK)
    below = tuple(pdbs_broken(pods_here, pdbs_here))
    lose_all = out.workloads_without_ready_replica
    score = (
        10 * len(lost)
        + 8 * len(lose_all)
        + 5 * len(below)
        + 4 * len(stuck)
        + 3 * len(data)
        + len(pods_here)
    )
    return NodeRisk(
        node=node,
        pods=len(pods_here),
        lost_for_good=lost,
        lose_all_ready_replicas=lose_all,
        below_pdb=below,
        stuck=stuck,
        local_data=tuple(data),
        timeline=timeline(out, grace),
        drain_verdict=verdict,
        score=score,
        outage=out,
        drain=drain,
    )


def rank(snap: ClusterSnapshot, now: datetime | None = None) -> list[NodeRisk]:
    """Every node, biggest blast radius first (one index for all: linear in pods)."""
    index = PodIndex(snap.pods, snap.workloads)
    risks = [assess(n, snap, now, index) for n in snap.nodes]
    return sorted(risks, key=lambda r: (-r.score, r.node))
