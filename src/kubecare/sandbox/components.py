"""The sandbox's cluster as kubeadm is told it: the control-plane nodes (names, addresses,
kubeadm's ports, each node's tree) and the ClusterConfiguration (v1beta4) their kubeadm phases
read (:mod:`kubecare.sandbox.kubeadm_init`) — the static pod manifests, certificates and
kubeconfigs are then kubeadm's own. The sandbox's settings are what a kubeadm user writes:
``extraArgs``, ``extraVolumes``, ``certSANs``, each saying why.

Each control-plane node has a network of its own (:mod:`kubecare.sandbox.network`), so every
component listens where kubeadm puts it: the node's 192.0.2.x address and loopback, on kubeadm's
ports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PKI = "/etc/kubernetes/pki"
ETCD_DATA = "/var/lib/etcd"
AUDIT_POLICY = "/etc/kubernetes/audit-policy.yaml"
AUDIT_LOG_DIR = "/var/log/kubernetes/audit"
SERVICE_SUBNET = "10.96.0.0/12"
POD_SUBNET = "10.244.0.0/16"
CLUSTER_NAME = "kubernetes"


@dataclass(frozen=True)
class Ports:
    """The ports of one control-plane node's components (in its own network namespace)."""

    etcd_client: int
    etcd_peer: int
    etcd_metrics: int
    apiserver: int
    controller_manager: int
    scheduler: int


DEFAULT_PORTS = Ports(2379, 2380, 2381, 6443, 10257, 10259)  # kubeadm's


@dataclass(frozen=True)
class ControlPlaneNode:
    """One control-plane node of the sandbox and its kubeadm-shaped tree."""

    name: str
    ports: Ports
    root: Path  # <sandbox>/nodes/<name>
    ip: str = "127.0.0.1"
    # the host's loopback port forwarded to each port of the node (network.FORWARDED)
    forward: tuple[tuple[int, int], ...] = ()

    @property
    def kubernetes_dir(self) -> Path:
        return self.root / "etc" / "kubernetes"

    @property
    def manifests(self) -> Path:
        return self.kubernetes_dir / "manifests"

    @property
    def pki(self) -> Path:
        return self.kubernetes_dir / "pki"


@dataclass(frozen=True)
class ClusterShape:
    """What every node's components are derived from."""

    version: str  # "1.37.2"
    nodes: tuple[ControlPlaneNode, ...]
    endpoint: str  # controlPlaneEndpoint: host:port the cluster is reached at (LB in HA)
    extra_args: dict[str, tuple[tuple[str, str], ...]]  # component -> the sandbox's extraArgs
    sandbox_dir: Path
    audit: bool = False
    pod_subnet: str | None = POD_SUBNET  # kubeadm init --pod-network-cidr
    cert_validity: int | None = None  # seconds: certificateValidityPeriod (None: kubeadm's year)

    @property
    def minor(self) -> int:
        return int(self.version.split(".")[1])


@dataclass(frozen=True)
class Mount:
    name: str
    mount_path: str
    host_path: Path
    type: str = "DirectoryOrCreate"
    read_only: bool = False


def sandbox_extra_args(
    *,
    pod_eviction_timeout: int | None,
    node_monitor_grace_period: int | None,
    audit: bool,
    etcd_quota: int | None = None,
) -> dict[str, tuple[tuple[str, str], ...]]:
    """The sandbox's own settings, as a kubeadm user writes them in ClusterConfiguration
    extraArgs (the single source of both the manifests and kubeadm-config)."""
    api: list[tuple[str, str]] = [("profiling", "false")]
    if pod_eviction_timeout is not None:
        # What --pod-eviction-timeout used to set: DefaultTolerationSeconds' injected tolerations.
        api += [
            ("default-not-ready-toleration-seconds", str(pod_eviction_timeout)),
            ("default-unreachable-toleration-seconds", str(pod_eviction_timeout)),
        ]
    if audit:
        api += [
            ("audit-policy-file", AUDIT_POLICY),
            ("audit-log-path", f"{AUDIT_LOG_DIR}/audit.log"),
            ("audit-log-format", "json"),
            ("audit-log-maxsize", "10000"),  # MB: never rotated under a benchmark's feet
        ]
    cm: list[tuple[str, str]] = [("profiling", "false")]
    if node_monitor_grace_period is not None:
        grace = node_monitor_grace_period
        cm += [
            ("node-monitor-grace-period", f"{grace}s"),
            ("node-monitor-period", f"{max(1, min(5, grace // 4))}s"),
        ]
    return {
        "kube-apiserver": tuple(api),
        "kube-controller-manager": tuple(cm),
        "kube-scheduler": (("profiling", "false"),),
        "etcd": (("log-level", "warn"), ("unsafe-no-fsync", "true"))
        + ((("quota-backend-bytes", str(etcd_quota)),) if etcd_quota else ()),
    }


def go_duration(seconds: int) -> str:
    """Seconds as Go's time.Duration.String() writes whole seconds ("8760h0m0s")."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s"


def audit_mounts(shape: ClusterShape) -> tuple[Mount, ...]:
    """The audit policy and log volumes, as a kubeadm user declares them in ClusterConfiguration
    ``apiServer.extraVolumes`` (so ``kubeadm upgrade`` writes them into the manifest it
    regenerates): the policy at the node's own ``/etc/kubernetes/audit-policy.yaml`` (the runner
    resolves it in the node's tree), the log in the sandbox's ``logs/audit`` (one for all)."""
    if not shape.audit:
        return ()
    return (
        Mount("audit-policy", AUDIT_POLICY, Path(AUDIT_POLICY), "File", True),
        Mount("audit-log", AUDIT_LOG_DIR, shape.sandbox_dir / "logs" / "audit"),
    )


def cluster_configuration(shape: ClusterShape) -> dict[str, Any]:
    """kubeadm's ClusterConfiguration (v1beta4) for this shape: what ``kubeadm-config`` holds."""

    def extra(component: str) -> list[dict[str, str]]:
        return [{"name": k, "value": v} for k, v in shape.extra_args.get(component, ())]

    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "ClusterConfiguration",
        "apiServer": {
            # the host reaches each apiserver through a loopback forward (sandbox.network)
            "certSANs": ["127.0.0.1", "::1", "localhost"],
            "extraArgs": extra("kube-apiserver"),
            **(
                {
                    "extraVolumes": [
                        {
                            "name": m.name,
                            "hostPath": str(m.host_path),
                            "mountPath": m.mount_path,
                            "readOnly": m.read_only,
                            "pathType": m.type,
                        }
                        for m in audit_mounts(shape)
                    ]
                }
                if shape.audit
                else {}
            ),
        },
        "caCertificateValidityPeriod": "87600h0m0s",
        "certificateValidityPeriod": go_duration(shape.cert_validity or 8760 * 3600),
        "certificatesDir": PKI,
        "clusterName": CLUSTER_NAME,
        "controlPlaneEndpoint": shape.endpoint,
        "controllerManager": {"extraArgs": extra("kube-controller-manager")},
        "dns": {},
        "encryptionAlgorithm": "ECDSA-P256",
        "etcd": {"local": {"dataDir": ETCD_DATA, "extraArgs": extra("etcd")}},
        "imageRepository": "registry.k8s.io",
        "kubernetesVersion": f"v{shape.version}",
        "networking": {
            "dnsDomain": "cluster.local",
            **({"podSubnet": shape.pod_subnet} if shape.pod_subnet else {}),
            "serviceSubnet": SERVICE_SUBNET,
        },
        "proxy": {},
        "scheduler": {"extraArgs": extra("kube-scheduler")},
    }
