"""Which cluster this is: the UID of its kube-system namespace.

Backups, snapshots and retention rules are scoped to one cluster by it (two sandboxes, or staging
and production, may share a directory or a bucket); the apiserver's URL is not an identity (a
load balancer, a port reused by the next sandbox). The kube-system namespace exists from the first
minute of a kubeadm cluster and is never re-created; tools that need a cluster ID (Velero's
restore checks, Argo CD, kubecost) use the same UID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLUSTER_NAMESPACE = "kube-system"


async def cluster_uid(kube: Any) -> str:
    """The cluster's UID, or "" when the credentials may not read the kube-system namespace."""
    from kubecare.errors import Forbidden, NotFound

    try:
        ns = await kube.get_json(f"/api/v1/namespaces/{CLUSTER_NAMESPACE}")
    except (Forbidden, NotFound):
        return ""
    return str((ns.get("metadata") or {}).get("uid") or "")


def snapshot_cluster_uid(path: Path) -> str:
    """The kube-system namespace's UID inside an etcd snapshot file, "" when the snapshot does
    not hold a readable one (not a Kubernetes etcd, the namespace encrypted at rest).

    The namespace is written at the cluster's first minutes, so the scan of the key bucket (in
    revision order) usually stops within its first pages."""
    from kubecare.etcd.bbolt import open_bolt
    from kubecare.etcd.mvcc import key_value_meta, parse_key_value, revisions

    key = f"/registry/namespaces/{CLUSTER_NAMESPACE}".encode()
    with open_bolt(path) as db:
        for rev, _, raw in revisions(db):
            if rev.tombstone or key_value_meta(raw).key != key:
                continue
            return _namespace_uid(parse_key_value(raw).value)
    return ""


def _namespace_uid(value: bytes) -> str:
    from kubecare.etcd.k8sproto import DecodeError, Decoder

    try:
        obj = Decoder().decode(value, None).object()
    except (DecodeError, ValueError):
        return ""
    return str((obj.get("metadata") or {}).get("uid") or "")
