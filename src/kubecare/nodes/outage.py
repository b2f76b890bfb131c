"""Node outages: when will a dead node's pods be evicted, and what will be lost for good.

The node lifecycle controller taints a node that stops reporting (``unreachable``) or reports
NotReady (``not-ready``) with NoExecute after the node-monitor grace period — unless its zone is
in a disruption mode that pauses tainting. The taint eviction controller then evicts each pod
when its toleration runs out, computed as the controller computes it (``GetMatchingTolerations``
and ``getMinTolerationTime``): for every NoExecute taint on the node, the *first* toleration in
the pod's list that tolerates it; a taint without one means eviction at once; otherwise the
smallest ``tolerationSeconds`` among those (<= 0: at once; none with seconds: never).

What happens next depends on the owner: ReplicaSets and Jobs replace the pod elsewhere at once;
DaemonSet pods tolerate the taints; a StatefulSet waits until the old pod is really gone, which on
an unreachable node means until the node returns or someone force-deletes it; a pod without a
controller is gone for good.

Everything here is pure: the API objects and the settings go in, a report comes out, in time
linear in the number of pods.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from kubecare.kube import JSON
from kubecare.kube.objects import is_pod_ready, parse_time
from kubecare.nodes.inventory import ready_status
from kubecare.nodes.settings import NOT_READY_TAINT, UNREACHABLE_TAINT, OutageSettings
from kubecare.nodes.workloads import Workload, WorkloadIndex

OUTAGE_TAINTS = (NOT_READY_TAINT, UNREACHABLE_TAINT)
EXCLUDE_DISRUPTION_LABEL = "node.kubernetes.io/exclude-disruption"  # node_lifecycle_controller.go


class Fate(StrEnum):
    RECREATED = "recreated"  # its controller makes a replacement elsewhere
    STUCK = "stuck"  # StatefulSet pod on an unreachable node: Terminating until the node returns
    LOST = "lost"  # no controller: gone for good
    STAYS = "stays"  # tolerates the taint forever (DaemonSet pods do)
    UNKNOWN = "depends"  # owned by a controller kubecare does not know


class ZoneState(StrEnum):
    """The node lifecycle controller's zone states (ComputeZoneState)."""

    NORMAL = "Normal"
    PARTIAL = "PartialDisruption"
    FULL = "FullDisruption"


@dataclass(frozen=True)
class Taint:
    key: str
    effect: str
    time_added: datetime | None
    value: str = ""


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
    zone: str = ""
    tainting_paused: str = ""  # why the controller will not taint this node now ("" if it will)


@dataclass(frozen=True)
class OutageReport:
    nodes: tuple[NodeOutage, ...]
    settings: OutageSettings
    notes: tuple[str, ...]


# -- tolerations (k8s.io/api core/v1 toleration.go, pkg/apis/core/v1/helper, tainteviction) ------
def tolerates_taint(toleration: JSON, taint: JSON) -> bool:
    """``Toleration.ToleratesTaint`` with the alpha comparison operators off (their default)."""
    effect = toleration.get("effect") or ""
    if effect and effect != (taint.get("effect") or ""):
        return False
    key = toleration.get("key") or ""
    if key and key != (taint.get("key") or ""):
        return False
    op = toleration.get("operator") or ""
    if op in ("", "Equal"):
        return (toleration.get("value") or "") == (taint.get("value") or "")
    return op == "Exists"  # Lt/Gt need the TaintTolerationComparisonOperators gate (alpha, off)


def matching_tolerations(
    taints: Sequence[JSON], tolerations: Sequence[JSON]
) -> tuple[bool, list[JSON]]:
    """``GetMatchingTolerations``: whether every taint is tolerated, and for each taint the first
    toleration (in the pod's order) that tolerates it."""
    if not taints:
        return True, []
    used = []
    for taint in taints:
        first = next((t for t in tolerations if tolerates_taint(t, taint)), None)
        if first is None:
            return False, []
        used.append(first)
    return True, used


def min_toleration_seconds(tolerations: Sequence[JSON]) -> int:
    """``getMinTolerationTime``: 0 for none (or any <= 0), -1 for forever, else the minimum."""
    if not tolerations:
        return 0
    found: int | None = None
    for t in tolerations:
        seconds = t.get("tolerationSeconds")
        if seconds is None:
            continue
        if int(seconds) <= 0:
            return 0
        found = int(seconds) if found is None else min(found, int(seconds))
    return -1 if found is None else found


def eviction_delay(tolerations: Sequence[JSON], taints: Sequence[JSON]) -> int | None:
    """Seconds a pod stays once ``taints`` (NoExecute) are on its node: 0 if one is not
    tolerated, None if it stays forever — as processPodOnNode decides."""
    all_tolerated, used = matching_tolerations(taints, tolerations)
    if not all_tolerated:
        return 0
    seconds = min_toleration_seconds(used)
    return None if seconds < 0 else seconds


def toleration_source(
    tolerations: Sequence[JSON], taint: JSON, delay: int | None, settings: OutageSettings
) -> str:
    first = next((t for t in tolerations if tolerates_taint(t, taint)), None)
    if first is None:
        return "none: evicted as soon as the node is tainted"
    default = (
        settings.unreachable_toleration.seconds
        if taint.get("key") == UNREACHABLE_TAINT
        else settings.not_ready_toleration.seconds
    )
    if (
        first.get("key") == taint.get("key")
        and first.get("operator") == "Exists"
        and first.get("tolerationSeconds") == default == delay
    ):
        return "default (DefaultTolerationSeconds)"
    return "own"


# -- zones (node lifecycle controller) -----------------------------------------------------------
def zone_key(node: JSON) -> str:
    """``topology.GetZoneKey``: region and zone labels (beta names first), "" when neither."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    zone = labels.get(
        "failure-domain.beta.kubernetes.io/zone", labels.get("topology.kubernetes.io/zone", "")
    )
    region = labels.get(
        "failure-domain.beta.kubernetes.io/region", labels.get("topology.kubernetes.io/region", "")
    )
    if not region and not zone:
        return ""
    return f"{region}:\x00:{zone}"


def zone_name(key: str) -> str:
    return key.replace(":\x00:", "/").strip("/") or "(no zone label)"


def compute_zone_state(ready: Sequence[str | None], threshold: float) -> tuple[int, ZoneState]:
    """``ComputeZoneState``: (not-ready count, state) from the nodes' Ready condition statuses."""
    ready_nodes = sum(1 for r in ready if r == "True")
    not_ready = len(ready) - ready_nodes
    if ready_nodes == 0 and not_ready > 0:
        return not_ready, ZoneState.FULL
    if not_ready > 2 and not_ready / (not_ready + ready_nodes) >= threshold:
        return not_ready, ZoneState.PARTIAL
    return not_ready, ZoneState.NORMAL


def _ready_condition(node: JSON) -> str | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return None


@dataclass(frozen=True)
class ZoneReport:
    zone: str
    nodes: int
    not_ready: int
    state: ZoneState
    tainting: str  # what the controller does about new NoExecute taints in this zone


def zone_states(
    nodes: Sequence[JSON], *, threshold: float, large_cluster: int
) -> dict[str, ZoneReport]:
    """Every zone's state and what it means for tainting (handleDisruption, setLimiterInZone)."""
    by_zone: dict[str, list[str | None]] = defaultdict(list)
    for n in nodes:
        if EXCLUDE_DISRUPTION_LABEL in ((n.get("metadata") or {}).get("labels") or {}):
            continue
        by_zone[zone_key(n)].append(_ready_condition(n))
    states = {z: compute_zone_state(r, threshold) for z, r in by_zone.items()}
    # handleDisruption starts from "all fully disrupted" and clears it for any zone that is not
    all_full = all(s is ZoneState.FULL for _, s in states.values())
    out = {}
    for z, (not_ready, state) in states.items():
        size = len(by_zone[z])
        if all_full:
            tainting = (
                "every node of every zone is NotReady: the controller assumes a control-plane "
                "problem, stops all evictions and removes the outage taints (full disruption)"
            )
        elif state is ZoneState.PARTIAL:
            tainting = (
                f"{not_ready} of {size} nodes NotReady (>= {threshold:.0%}): "
                + (
                    f"tainting in this zone stops (zone of <= {large_cluster} nodes)"
                    if size <= large_cluster
                    else "tainting in this zone slows to the secondary rate"
                )
                + " (partial disruption)"
            )
        elif state is ZoneState.FULL:
            tainting = "every node of the zone is NotReady; other zones are healthy, so tainting goes on at the normal rate (full disruption)"
        else:
            tainting = ""
        out[z] = ZoneReport(zone_name(z), size, not_ready, state, tainting)
    return out


def tainting_paused(report: ZoneReport | None, large_cluster: int) -> str:
    """Why new outage taints will not be added in this zone now ("" if they will)."""
    if report is None:
        return ""
    if report.state is ZoneState.FULL and "every zone" in report.tainting:
        return report.tainting
    if report.state is ZoneState.PARTIAL and report.nodes <= large_cluster:
        return report.tainting
    return ""


# -- owners and fates ----------------------------------------------------------------------------
def fate_of(workload: Workload | None, taint_key: str, delay: int | None) -> tuple[Fate, str]:
    kind, name = (workload.kind, workload.name) if workload else ("", "")
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


class PodIndex:
    """Pods by node and ready replicas per workload and node, built once per snapshot, so every
    node's outlook costs only its own pods (outage and ``risk --all`` stay linear in pods)."""

    def __init__(self, pods: Sequence[JSON], workloads: WorkloadIndex) -> None:
        self.workloads = workloads
        self.by_node: dict[str, list[JSON]] = defaultdict(list)
        self.owner: dict[str, Workload | None] = {}  # by pod UID
        self.ready: dict[str, Counter[str]] = defaultdict(Counter)  # workload -> node -> ready
        for p in pods:
            node = (p.get("spec") or {}).get("nodeName") or ""
            owner = workloads.workload_of(p)
            self.owner[_uid(p)] = owner
            if (p.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            if node:
                self.by_node[node].append(p)
            if owner and is_pod_ready(p) and not (p.get("metadata") or {}).get("deletionTimestamp"):
                self.ready[owner.key][node] += 1

    def workload_of(self, pod: JSON) -> Workload | None:
        uid = _uid(pod)
        return self.owner[uid] if uid in self.owner else self.workloads.workload_of(pod)

    def ready_outside(self, workload: Workload, nodes: set[str]) -> int:
        counts = self.ready.get(workload.key, Counter())
        return sum(n for node, n in counts.items() if node not in nodes)


def _uid(pod: JSON) -> str:
    meta = pod.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


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
    """The node's NoExecute taints (the only ones the taint eviction controller looks at)."""
    return tuple(
        Taint(
            t.get("key", ""),
            t.get("effect", ""),
            parse_time(t.get("timeAdded")),
            t.get("value") or "",
        )
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("effect") == "NoExecute"
    )


def ready_since(node: JSON) -> datetime | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return parse_time(c.get("lastTransitionTime"))
    return None


def outlook(
    *,
    node: str,
    condition: str,
    since: datetime | None,
    taints: tuple[Taint, ...],
    taint_key: str,
    taint_time: datetime,
    index: PodIndex,
    failing: set[str],
    settings: OutageSettings,
    now: datetime,
    paused: str = "",
    stopped: bool = False,
    zone: str = "",
) -> NodeOutage:
    """What happens to the pods of ``node`` once ``taint_key`` is on it (from ``taint_time``),
    besides the NoExecute taints it already has. ``paused``: why the controller adds no new
    outage taint now; ``stopped``: it even takes the existing ones away (every zone down)."""
    effective = [{"key": t.key, "value": t.value, "effect": "NoExecute"} for t in taints]
    if taint_key not in {t.key for t in taints}:
        effective.append({"key": taint_key, "value": "", "effect": "NoExecute"})
    outage_taint = next(t for t in effective if t["key"] == taint_key)
    outlooks = []
    affected: dict[str, Workload] = {}
    for pod in index.by_node.get(node, []):
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        tolerations = spec.get("tolerations") or []
        delay = eviction_delay(tolerations, effective)
        workload = index.workload_of(pod)
        fate, detail = fate_of(workload, taint_key, delay)
        evict_at = taint_time + timedelta(seconds=delay) if delay is not None else None
        if paused and delay is not None and (stopped or taint_key not in {t.key for t in taints}):
            evict_at = None
            detail = f"not evicted while tainting is paused ({paused}); then: {detail}"
        terminating = bool(meta.get("deletionTimestamp"))
        if terminating and fate is Fate.RECREATED:
            detail = "evicted (Terminating); " + detail
        outlooks.append(
            PodOutlook(
                namespace=meta.get("namespace", ""),
                name=meta.get("name", ""),
                workload=workload.short if workload else "<none>",
                toleration_seconds=delay,
                toleration_source=toleration_source(tolerations, outage_taint, delay, settings),
                evict_at=evict_at,
                seconds_left=(evict_at - now).total_seconds() if evict_at else None,
                terminating=terminating,
                fate=fate,
                detail=detail,
            )
        )
        if workload and fate is not Fate.STAYS:
            affected[workload.key] = workload
    without = tuple(sorted(k for k, w in affected.items() if index.ready_outside(w, failing) == 0))
    return NodeOutage(
        node,
        condition,
        since,
        taints,
        tuple(sorted(outlooks, key=_order)),
        without,
        zone=zone,
        tainting_paused=paused,
    )


def _order(p: PodOutlook) -> tuple[float, str]:
    return (p.seconds_left if p.seconds_left is not None else float("inf"), p.key)


def outage_report(
    nodes: Sequence[JSON],
    pods: Sequence[JSON],
    settings: OutageSettings,
    *,
    workloads: WorkloadIndex | None = None,
    now: datetime | None = None,
) -> OutageReport:
    """Every NotReady/Unknown (or outage-tainted) node, with its pods' outlook."""
    now = now or datetime.now(UTC)
    index = PodIndex(pods, workloads or WorkloadIndex())
    zones = zone_states(
        nodes,
        threshold=settings.unhealthy_zone_threshold.value,
        large_cluster=int(settings.large_cluster_size_threshold.value),
    )
    large = int(settings.large_cluster_size_threshold.value)
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
        # Not tainted yet: the controller taints in the same pass that marks the node NotReady or
        # Unknown, so the Ready condition's transition time is when the clock started.
        taint_time = (
            (present.time_added if present and present.time_added else None) or since or now
        )
        condition = {"False": "NotReady", "Unknown": "Unknown (unreachable)"}.get(
            ready_status(node), "Ready (tainted)"
        )
        zone = zones.get(zone_key(node))
        out.append(
            outlook(
                node=name,
                condition=condition,
                since=since,
                taints=taints,
                taint_key=key,
                taint_time=taint_time,
                index=index,
                failing=failing,
                settings=settings,
                now=now,
                paused=tainting_paused(zone, large),
                stopped=bool(zone and "every zone" in zone.tainting),
                zone=zone.zone if zone else "",
            )
        )
    notes = tuple(f"zone {z.zone}: {z.tainting}" for z in zones.values() if z.tainting)
    return OutageReport(tuple(out), settings, notes + settings.warnings)


def _in_outage(node: JSON) -> bool:
    return outage_taint_key(node) is not None or any(
        t.key in OUTAGE_TAINTS for t in node_taints(node)
    )
