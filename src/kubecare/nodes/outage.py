"""Node outages: when will a dead node's pods be evicted, and what will be lost for good.

The node lifecycle controller taints a node that stops reporting (``unreachable``) or reports
NotReady (``not-ready``) with NoExecute after the node-monitor grace period; the taint eviction
controller then evicts each pod when its toleration for the taint runs out (the smallest matching
tolerationSeconds; no matching toleration: at once; matching without seconds: never). What
happens next depends on the owner: ReplicaSets and Jobs replace the pod elsewhere at once;
DaemonSet pods tolerate the taints; a StatefulSet waits until the old pod is really gone, which on
an unreachable node means until the node returns or someone force-deletes it; a pod without a
controller is gone for good.

Everything here is pure: the API objects and the settings go in, a report comes out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from kubecare.kube import JSON
from kubecare.kube.objects import is_pod_ready, parse_time
from kubecare.nodes.inventory import ready_status
from kubecare.nodes.settings import NOT_READY_TAINT, UNREACHABLE_TAINT, OutageSettings

OUTAGE_TAINTS = (NOT_READY_TAINT, UNREACHABLE_TAINT)


class Fate(StrEnum):
    RECREATED = "recreated"  # its controller makes a replacement elsewhere
    STUCK = "stuck"  # StatefulSet pod on an unreachable node: Terminating until the node returns
    LOST = "lost"  # no controller: gone for good
    STAYS = "stays"  # tolerates the taint forever (DaemonSet pods do)
    UNKNOWN = "depends"  # owned by a controller kubecare does not know


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    time_added: datetime | None


@dataclass(frozen=True)
class PodOutlook:
    """One pod on a failing node: when it goes and what becomes of it."""

    namespace: str
    name: str
    workload: str  # "Deployment/web", "StatefulSet/db", "<none>"
    toleration_seconds: int | None  # None: tolerates forever
    toleration_source: str  # "own", "default (DefaultTolerationSeconds)", "none: evicted at once"
    evict_at: datetime | None
    seconds_left: float | None
    terminating: bool
    fate: Fate
    detail: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeOutage:
    node: str
    condition: str  # NotReady / Unknown (unreachable) / Ready (what-if)
    since: datetime | None
    taints: tuple[Taint, ...]
    pods: tuple[PodOutlook, ...]
    workloads_without_ready_replica: tuple[str, ...]


@dataclass(frozen=True)
class OutageReport:
    nodes: tuple[NodeOutage, ...]
    settings: OutageSettings
    notes: tuple[str, ...]


# -- tolerations ---------------------------------------------------------------------------------
def tolerates(toleration: JSON, taint_key: str) -> bool:
    """Whether a toleration matches a NoExecute taint with this key and no value."""
    if toleration.get("effect") not in (None, "", "NoExecute"):
        return False
    op = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if not key:
        return op == "Exists"  # an empty key with Exists tolerates everything
    if key != taint_key:
        return False
    return op == "Exists" or (toleration.get("value") or "") == ""


def eviction_delay(tolerations: Sequence[JSON], taint_keys: Sequence[str]) -> int | None:
    """Seconds a pod stays after the taints appear: 0 if one is not tolerated, None if forever.

    As the taint eviction controller computes it: the smallest tolerationSeconds among the
    tolerations that match; a matching toleration without seconds does not limit.
    """
    used = []
    for key in taint_keys:
        matching = [t for t in tolerations if tolerates(t, key)]
        if not matching:
            return 0
        used.extend(matching)
    seconds = [int(t["tolerationSeconds"]) for t in used if t.get("tolerationSeconds") is not None]
    if not seconds:
        return None
    return max(0, min(seconds))


def toleration_source(
    tolerations: Sequence[JSON], key: str, delay: int | None, settings: OutageSettings
) -> str:
    if delay == 0 and not any(tolerates(t, key) for t in tolerations):
        return "none: evicted as soon as the node is tainted"
    default = (
        settings.unreachable_toleration.seconds
        if key == UNREACHABLE_TAINT
        else settings.not_ready_toleration.seconds
    )
    for t in tolerations:
        if (
            t.get("key") == key
            and t.get("operator") == "Exists"
            and t.get("tolerationSeconds") == default == delay
        ):
            return "default (DefaultTolerationSeconds)"
    return "own"


# -- owners --------------------------------------------------------------------------------------
def workload_of(pod: JSON) -> tuple[str, str]:
    """(kind, name) of the pod's workload: a ReplicaSet's Deployment is derived from the
    pod-template-hash label, which the Deployment controller sets on every pod it makes."""
    meta = pod.get("metadata") or {}
    owner = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    if owner is None:
        return "", ""
    kind, name = str(owner.get("kind", "")), str(owner.get("name", ""))
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
        return "Deployment", name[: -len(template_hash) - 1]
    return kind, name


def fate_of(kind: str, name: str, taint_key: str, delay: int | None) -> tuple[Fate, str]:
    if delay is None:
        why = (
            "DaemonSet pods tolerate node outages"
            if kind == "DaemonSet"
            else "it tolerates the taint without a time limit"
        )
        return Fate.STAYS, f"not evicted: {why}"
    if kind in ("ReplicaSet", "Deployment", "Job", "ReplicationController"):
        return (
            Fate.RECREATED,
            f"{kind} {name} creates a replacement on another node as soon as it is marked for deletion",
        )
    if kind == "StatefulSet":
        if taint_key == UNREACHABLE_TAINT:
            return Fate.STUCK, (
                f"StatefulSet {name} does not replace it until the old pod is really gone: it stays Terminating "
                "until the node returns, or until someone force-deletes it — safe only if the node is truly dead "
                "(it may still be running the pod and writing its volume)"
            )
        return Fate.RECREATED, f"StatefulSet {name} recreates it once the kubelet has stopped it"
    if kind == "DaemonSet":
        return Fate.RECREATED, f"DaemonSet {name} recreates it when the node is back"
    if not kind:
        return Fate.LOST, "no controller: gone for good"
    return Fate.UNKNOWN, f"depends on its {kind} controller"


# -- the report ----------------------------------------------------------------------------------
def outage_taint_key(node: JSON) -> str | None:
    """The taint the lifecycle controller puts on this node now: by its Ready condition."""
    status = ready_status(node)
    if status == "False":
        return NOT_READY_TAINT
    if status == "Unknown":
        return UNREACHABLE_TAINT
    return None


def node_taints(node: JSON) -> tuple[Taint, ...]:
    return tuple(
        Taint(t.get("key", ""), t.get("effect", ""), parse_time(t.get("timeAdded")))
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("effect") == "NoExecute"
    )


def ready_since(node: JSON) -> datetime | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return parse_time(c.get("lastTransitionTime"))
    return None


def outlook(
    node: str,
    condition: str,
    since: datetime | None,
    taints: tuple[Taint, ...],
    taint_key: str,
    taint_time: datetime,
    pods_here: Sequence[JSON],
    all_pods: Sequence[JSON],
    failing_nodes: set[str],
    settings: OutageSettings,
    now: datetime,
) -> NodeOutage:
    """What happens to ``pods_here`` once ``taint_key`` is added at ``taint_time``."""
    keys = sorted({t.key for t in taints if t.key in OUTAGE_TAINTS} | {taint_key})
    outlooks = []
    affected: set[tuple[str, str, str]] = set()
    for pod in pods_here:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        tolerations = spec.get("tolerations") or []
        delay = eviction_delay(tolerations, keys)
        kind, wname = workload_of(pod)
        fate, detail = fate_of(kind, wname, taint_key, delay)
        evict_at = taint_time + timedelta(seconds=delay) if delay is not None else None
        terminating = bool(meta.get("deletionTimestamp"))
        if terminating and fate is Fate.RECREATED:
            detail = "evicted (Terminating); " + detail
        outlooks.append(
            PodOutlook(
                namespace=meta.get("namespace", ""),
                name=meta.get("name", ""),
                workload=f"{kind}/{wname}" if kind else "<none>",
                toleration_seconds=delay,
                toleration_source=toleration_source(tolerations, taint_key, delay, settings),
                evict_at=evict_at,
                seconds_left=(evict_at - now).total_seconds() if evict_at else None,
                terminating=terminating,
                fate=fate,
                detail=detail,
            )
        )
        if kind and fate is not Fate.STAYS:
            affected.add((meta.get("namespace", ""), kind, wname))
    ready_elsewhere: dict[tuple[str, str, str], int] = defaultdict(int)
    for pod in all_pods:
        kind, wname = workload_of(pod)
        if not kind or (pod.get("spec") or {}).get("nodeName") in failing_nodes:
            continue
        if is_pod_ready(pod) and not (pod.get("metadata") or {}).get("deletionTimestamp"):
            ready_elsewhere[((pod.get("metadata") or {}).get("namespace", ""), kind, wname)] += 1
    without = tuple(
        sorted(f"{ns}/{k}/{n}" for ns, k, n in affected if ready_elsewhere[(ns, k, n)] == 0)
    )
    return NodeOutage(node, condition, since, taints, tuple(sorted(outlooks, key=_order)), without)


def _order(p: PodOutlook) -> tuple[float, str]:
    return (p.seconds_left if p.seconds_left is not None else float("inf"), p.key)


def disruption_notes(nodes: Sequence[JSON]) -> tuple[str, ...]:
    """The lifecycle controller's disruption modes (one zone assumed)."""
    if not nodes:
        return ()
    unhealthy = sum(1 for n in nodes if ready_status(n) != "True")
    if unhealthy == 0:
        return ()
    if unhealthy == len(nodes):
        return (
            "every node is NotReady: the node lifecycle controller assumes a control-plane problem and evicts nothing (full disruption)",
        )
    if unhealthy / len(nodes) > 0.55:
        mode = "stops evicting" if len(nodes) <= 50 else "evicts at the secondary (slow) rate"
        return (
            f"{unhealthy} of {len(nodes)} nodes are NotReady (more than 55%): the node lifecycle controller {mode} (partial disruption)",
        )
    return ()


def outage_report(
    nodes: Sequence[JSON],
    pods: Sequence[JSON],
    settings: OutageSettings,
    now: datetime | None = None,
) -> OutageReport:
    """Every NotReady/Unknown (or outage-tainted) node, with its pods' outlook."""
    now = now or datetime.now(UTC)
    by_node: Mapping[str, list[JSON]] = _pods_by_node(pods)
    failing = {n["metadata"]["name"] for n in nodes if _in_outage(n)}
    out = []
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        name = node["metadata"]["name"]
        if name not in failing:
            continue
        taints = node_taints(node)
        key = outage_taint_key(node) or next(
            (t.key for t in taints if t.key in OUTAGE_TAINTS), UNREACHABLE_TAINT
        )
        present = next((t for t in taints if t.key == key), None)
        since = ready_since(node)
        taint_time = (
            (present.time_added if present and present.time_added else None) or since or now
        )
        condition = {"False": "NotReady", "Unknown": "Unknown (unreachable)"}.get(
            ready_status(node), "Ready (tainted)"
        )
        out.append(
            outlook(
                name,
                condition,
                since,
                taints,
                key,
                taint_time,
                by_node.get(name, []),
                pods,
                failing,
                settings,
                now,
            )
        )
    return OutageReport(tuple(out), settings, disruption_notes(nodes))


def _in_outage(node: JSON) -> bool:
    return outage_taint_key(node) is not None or any(
        t.key in OUTAGE_TAINTS for t in node_taints(node)
    )


def _pods_by_node(pods: Sequence[JSON]) -> dict[str, list[JSON]]:
    out: dict[str, list[JSON]] = defaultdict(list)
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        if node and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            out[node].append(p)
    return out
