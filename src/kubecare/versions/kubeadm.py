"""What kubeadm pins per Kubernetes release (cmd/kubeadm/app/constants/constants.go)."""

from __future__ import annotations

#: The etcd image the kubeadm of each Kubernetes minor installs: its DefaultEtcdVersion, which
#: is also what EtcdSupportedVersion falls back to for its own minor (kubeadm v1.37.2's
#: SupportedEtcdVersion map ends at 36, so v1.37 gets the nearest entry, 3.7.0-0; kubeadm
#: v1.36.3 maps 34-36 to 3.6.8-0).
KUBEADM_ETCD_TAGS = {36: "3.6.8-0", 37: "3.7.0-0"}


def etcd_tag(minor: int) -> str:
    """The etcd tag for Kubernetes 1.<minor>; beyond the table, the nearest entry (as
    EtcdSupportedVersion falls back, with a warning)."""
    known = sorted(KUBEADM_ETCD_TAGS)
    return KUBEADM_ETCD_TAGS[min(max(minor, known[0]), known[-1])]
