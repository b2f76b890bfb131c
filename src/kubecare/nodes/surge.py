"""``--surge``: drain a pod no PodDisruptionBudget will ever let go, without losing availability.

A Deployment with one replica (or replicas == minAvailable) under a PDB blocks every drain for
ever: the budget allows no disruption while all its pods are healthy, and nothing will change
that. kubectl can only wait. With ``--surge`` kubecare first brings up a replacement elsewhere
by a rollout of the pod's Deployment — the ``kubectl rollout restart`` annotation on its pod
template, with the node already cordoned — and lets the Deployment controller retire the old
pod once the new one is available. The eviction API is never asked to break the budget.

That is only safe when the Deployment's rolling update never goes below its replica count:
``maxUnavailable`` resolving to 0 (so ``maxSurge`` to at least 1), not paused, strategy
RollingUpdate. Anything else (Recreate, a percentage that resolves to 1 pod down, a StatefulSet,
a bare pod) is refused with the reason; the drain then waits as it would without ``--surge``.
A rollout is one patch, nothing to undo: a crash after it leaves a finished rollout, and a
rerun finds the old pod gone. What it costs: every pod of that Deployment is replaced, not only
the one on this node (the rollout is the Deployment's own, one pod at a time).

Pure: no I/O here; :mod:`kubecare.nodes.drain` acts on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kubecare.kube import JSON

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class FencepostError(ValueError):
    """An IntOrString the deployment controller would reject (``"oops"``, ``"5"``)."""


def scaled_value(value: int | str, total: int, round_up: bool) -> int:
    """apimachinery's ``intstr.GetScaledValueFromIntOrPercent``: an int as is; ``"N%"`` of
    ``total``, rounded up or down; any other string an error."""
    if isinstance(value, bool):
        raise FencepostError(f"invalid value {value!r}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not value.endswith("%"):
        raise FencepostError("invalid type: string is not a percentage")
    try:
        pct = int(value[:-1])
    except ValueError:
        raise FencepostError(f"invalid value {value!r}") from None
    scaled = pct * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def resolve_fenceposts(
    max_surge: int | str | None, max_unavailable: int | str | None, desired: int
) -> tuple[int, int]:
    """The deployment controller's ``ResolveFenceposts`` (pkg/controller/deployment/util):
    (surge, unavailable) in pods; both resolving to 0 makes unavailable 1."""
    surge = scaled_value(0 if max_surge is None else max_surge, desired, True)
    unavailable = scaled_value(0 if max_unavailable is None else max_unavailable, desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


@dataclass(frozen=True)
class SurgeVerdict:
    ok: bool
    reason: str  # why it can or cannot be surged, for the plan and the events


def judge_deployment(deployment: JSON, node: str = "") -> SurgeVerdict:
    """Whether a rollout of ``deployment`` keeps every replica available while it runs, and
    its new pods can start somewhere other than ``node`` (the one being drained)."""
    meta, spec = deployment.get("metadata") or {}, deployment.get("spec") or {}
    name = f"Deployment {meta.get('namespace', '')}/{meta.get('name', '')}"
    if spec.get("paused"):
        return SurgeVerdict(False, f"{name} is paused: a rollout would not start")
    pod = ((spec.get("template") or {}).get("spec")) or {}
    claims = [
        str((v.get("persistentVolumeClaim") or {}).get("claimName"))
        for v in pod.get("volumes") or []
        if isinstance(v, dict) and v.get("persistentVolumeClaim")
    ]
    if claims:
        # A ReadWriteOnce or local volume cannot be attached to the new pod while the old one
        # holds it: the rollout would stall with the old pod still here.
        return SurgeVerdict(
            False,
            f"{name} mounts PersistentVolumeClaim {', '.join(claims)}: its new pod may not "
            "attach it while the old one holds it",
        )
    if node and node in _pinned_hosts(pod):
        return SurgeVerdict(
            False, f"{name}'s pods must run on node {node}: a new one cannot start elsewhere"
        )
    strategy = spec.get("strategy") or {}
    kind = strategy.get("type") or "RollingUpdate"
    if kind != "RollingUpdate":
        return SurgeVerdict(
            False, f"{name} uses the {kind} strategy: a rollout stops every pod first"
        )
    rolling = strategy.get("rollingUpdate") or {}
    replicas = spec.get("replicas")
    desired = 1 if replicas is None else int(replicas)
    try:
        surge, unavailable = resolve_fenceposts(
            rolling.get("maxSurge"), rolling.get("maxUnavailable"), desired
        )
    except FencepostError as e:
        return SurgeVerdict(False, f"{name}: its rolling update cannot be resolved ({e})")
    if unavailable > 0:
        return SurgeVerdict(
            False,
            f"{name}'s rolling update lets {unavailable} of {desired} pod(s) go down "
            f"(maxUnavailable {rolling.get('maxUnavailable')!s}); with maxUnavailable: 0 a "
            "rollout would replace them without that",
        )
    return SurgeVerdict(
        True, f"a rollout of {name} brings up {surge} new pod(s) before each old one goes"
    )


def _pinned_hosts(pod: JSON) -> set[str]:
    """Node names the pod template pins its pods to (nodeName, a kubernetes.io/hostname
    nodeSelector, or a required node affinity on it whose every term names hosts)."""
    hosts: set[str] = set()
    if pod.get("nodeName"):
        hosts.add(str(pod["nodeName"]))
    selector = pod.get("nodeSelector") or {}
    if isinstance(selector, dict) and selector.get("kubernetes.io/hostname"):
        hosts.add(str(selector["kubernetes.io/hostname"]))
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or [] if isinstance(required, dict) else []
    named: list[set[str]] = []
    for term in terms:
        exprs = [e for e in (term or {}).get("matchExpressions") or []
                 if e.get("key") == "kubernetes.io/hostname" and e.get("operator") == "In"]  # fmt: skip
        named.append({str(v) for e in exprs for v in e.get("values") or []})
    if terms and all(named):  # terms are ORed: pinned when together they allow one host
        allowed = set().union(*named)
        if len(allowed) == 1:
            hosts |= allowed
    return hosts


def restart_patch(stamp: str, resource_version: str = "") -> JSON:
    """What ``kubectl rollout restart`` sends (a patch of the pod template); with
    ``resource_version``, only if the Deployment is still the one judged (409 otherwise)."""
    patch: JSON = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    return patch
