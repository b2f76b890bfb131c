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
