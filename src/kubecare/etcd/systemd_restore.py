"""The restore of an etcd that kubeadm does not run (``etcd restore --endpoints``): kubecare
restores static-pod members itself; for a systemd unit it prints the steps to follow by hand
(pure, and light: no gRPC, no asyncio).
"""

from __future__ import annotations

from pathlib import Path

#: etcd's disaster-recovery guide, for an etcd run by systemd.
SYSTEMD_STEPS = (
    "on every etcd node: etcdutl snapshot restore {snapshot} --name <this member's name> "
    "--initial-cluster <name>=<peer URL>,... --initial-cluster-token restore-{stamp} "
    "--initial-advertise-peer-urls <this member's peer URL> --data-dir /var/lib/etcd-restore-{stamp}",
    "on every control-plane node: systemctl stop kube-apiserver (no apiserver may run meanwhile)",
    "on every etcd node: systemctl stop etcd",
    "on every etcd node: point --data-dir (or ETCD_DATA_DIR) in the etcd unit at "
    "/var/lib/etcd-restore-{stamp}; systemctl daemon-reload; systemctl start etcd",
    "check: etcdctl endpoint health --cluster; etcdctl endpoint status -w table (one leader, "
    "the snapshot's revision)",
    "start kube-apiserver again, then restart kube-controller-manager, kube-scheduler and the "
    "kubelets (their caches predate the restore); the old data dir is untouched for a rollback",
)


def systemd_steps(snapshot: Path, stamp: str) -> list[str]:
    """What to do by hand for an etcd kubeadm does not run (``--endpoints``)."""
    return [text.format(snapshot=snapshot, stamp=stamp) for text in SYSTEMD_STEPS]
