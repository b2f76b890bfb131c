"""What a backup's manifest says about where it came from and whether it is whole.

Used where kubecare picks among the backups of a store that several clusters may share: the
upgrade preflight (the newest *complete* backup *of this cluster*) and retention (rules apply per
cluster, as restic applies them per host and paths).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# before manifests had "missing", a type left out was only a warning of this shape
_OLD_MISSING = re.compile(
    r"^([^:\s]+): (forbidden|no longer served|cannot be listed), not backed up"
)


def cluster_of(manifest: Mapping[str, Any]) -> str:
    """The cluster a backup came from: its kube-system UID, else (older backups, or credentials
    that could not read kube-system) ``server:<apiserver URL>``."""
    cluster = manifest.get("cluster") or {}
    if not isinstance(cluster, Mapping):
        return ""
    uid = str(cluster.get("uid") or "")
    return uid or (f"server:{cluster.get('server')}" if cluster.get("server") else "")


def missing_types(manifest: Mapping[str, Any]) -> dict[str, str]:
    """type -> why, for every type the backup could not read (empty: complete)."""
    out: dict[str, str] = {}
    for m in manifest.get("missing") or ():
        if isinstance(m, Mapping) and m.get("type"):
            out[str(m["type"])] = str(m.get("reason") or "")
    if "missing" not in manifest:
        for w in manifest.get("warnings") or ():
            if isinstance(w, str) and (hit := _OLD_MISSING.match(w)):
                out[hit[1]] = hit[2]
    return out


def same_cluster(manifest: Mapping[str, Any], uid: str, server: str) -> bool:
    """Whether the backup is of the cluster with kube-system UID ``uid`` (or, when either side
    lacks a UID, whose apiserver URL is ``server``)."""
    cluster = manifest.get("cluster") or {}
    if not isinstance(cluster, Mapping):
        return False
    theirs = str(cluster.get("uid") or "")
    if uid and theirs:
        return theirs == uid
    return bool(server) and str(cluster.get("server") or "") == server


def describe_missing(missing: Mapping[str, str]) -> str:
    return ", ".join(f"{t} ({why})" for t, why in sorted(missing.items()))
