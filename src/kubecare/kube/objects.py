"""Reading fields of API objects (plain JSON dicts) the same way everywhere."""

from __future__ import annotations

from datetime import datetime

from kubecare.kube.client import JSON


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API (seconds or microseconds), or None."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ref(obj: JSON) -> str:
    """``namespace/name`` (or ``name`` for cluster-scoped objects)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


def is_pod_ready(pod: JSON) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def volume_node(volume: JSON) -> str | None:
    """The one node a PersistentVolume's required node affinity names
    (``kubernetes.io/hostname In [node]``, as a local or hostPath volume is pinned), or None."""
    spec = volume.get("spec") or {}
    terms = ((spec.get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms")
    for term in terms or []:
        for expr in term.get("matchExpressions") or []:
            values = expr.get("values") or []
            key, op = expr.get("key"), expr.get("operator")
            if key == "kubernetes.io/hostname" and op == "In" and len(values) == 1:
                return str(values[0])
    return None
