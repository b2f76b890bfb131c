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


#: The CoreDNS image each kubeadm minor installs and upgrades to in its addon phase
#: (constants.CoreDNSVersion: v1.36.3 "v1.14.2", v1.37.2 "v1.14.6").
KUBEADM_COREDNS_TAGS = {36: "v1.14.2", 37: "v1.14.6"}


def coredns_tag(minor: int) -> str:
    """The CoreDNS tag kubeadm of Kubernetes 1.<minor> installs; beyond the table, the nearest."""
    known = sorted(KUBEADM_COREDNS_TAGS)
    return KUBEADM_COREDNS_TAGS[min(max(minor, known[0]), known[-1])]
