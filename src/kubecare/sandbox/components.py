"""The control plane described once, as data: every component of every control-plane node, with
its flags, mounts and probes as kubeadm v1.37 generates them (cmd/kubeadm/app/phases/controlplane/
manifests.go, phases/etcd/local.go, util/staticpod). From this one description come the static
pod manifests (:mod:`kubecare.sandbox.manifests`) and the ``kubeadm-config`` ClusterConfiguration,
so a flag is written once.

Each control-plane node has a network of its own (:mod:`kubecare.sandbox.network`), so every
component listens where kubeadm puts it: the node's 192.0.2.x address and loopback, on kubeadm's
ports. Where the sandbox differs from a kubeadm node, it is here and it says why: the host CA
mounts (/etc/ssl/certs, ...) are left out (the sandbox never mounts paths outside its own tree),
and the sandbox's own settings are ``extraArgs`` as a kubeadm user would set them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubecare.versions.kubeadm import etcd_tag

PKI = "/etc/kubernetes/pki"
ETCD_PKI = "/etc/kubernetes/pki/etcd"
ETCD_DATA = "/var/lib/etcd"
AUDIT_POLICY = "/etc/kubernetes/audit-policy.yaml"
AUDIT_LOG_DIR = "/var/log/kubernetes/audit"
SERVICE_SUBNET = "10.96.0.0/12"
POD_SUBNET = "10.244.0.0/16"
CLUSTER_NAME = "kubernetes"
STARTUP_TIMEOUT = 240  # kubeadm's ControlPlaneComponentHealthCheckTimeout (4 min)


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

    def host_port(self, port: int) -> int:
        """The loopback port a client on the host dials for the node's ``port``."""
        return dict(self.forward).get(port, port)

    @property
    def kubernetes_dir(self) -> Path:
        return self.root / "etc" / "kubernetes"

    @property
    def manifests(self) -> Path:
        return self.kubernetes_dir / "manifests"

    @property
    def pki(self) -> Path:
        return self.kubernetes_dir / "pki"

    @property
    def etcd_data(self) -> Path:
        return self.root / "var" / "lib" / "etcd"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://{self.ip}:{self.ports.etcd_peer}"

    @property
    def etcd_client_url(self) -> str:
        return f"https://{self.ip}:{self.ports.etcd_client}"


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

    @property
    def minor(self) -> int:
        return int(self.version.split(".")[1])

    @property
    def etcd_tag(self) -> str:
        return etcd_tag(self.minor)  # the sandbox runs its one etcd build for any tag


@dataclass(frozen=True)
class Mount:
    name: str
    mount_path: str
    host_path: Path
    type: str = "DirectoryOrCreate"
    read_only: bool = False


@dataclass(frozen=True)
class HttpProbe:
    path: str
    scheme: str
    host: str
    initial_delay: int
    timeout: int
    failure_threshold: int
    period: int


def liveness(host: str, path: str, scheme: str) -> HttpProbe:
    return HttpProbe(path, scheme, host, 10, 15, 8, 10)  # staticpod.LivenessProbe


def readiness(host: str, path: str, scheme: str) -> HttpProbe:
    return HttpProbe(path, scheme, host, 0, 15, 3, 1)  # staticpod.ReadinessProbe


def startup(host: str, path: str, scheme: str) -> HttpProbe:
    return HttpProbe(path, scheme, host, 10, 15, -(-STARTUP_TIMEOUT // 10), 10)  # StartupProbe


@dataclass(frozen=True)
class Component:
    """One static pod: everything its manifest says, as data."""

    name: str  # etcd, kube-apiserver, kube-controller-manager, kube-scheduler
    image: str
    flags: tuple[tuple[str, str], ...]  # in command order (kubeadm sorts them by name)
    probe_port: int
    mounts: tuple[Mount, ...]
    liveness: HttpProbe
    readiness: HttpProbe | None
    startup: HttpProbe
    cpu: str
    memory: str | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def command(self) -> list[str]:
        return [self.name, *(f"--{k}={v}" for k, v in self.flags)]

    def flag(self, name: str) -> str | None:
        return next((v for k, v in self.flags if k == name), None)


def arguments(
    defaults: list[tuple[str, str]], extra: tuple[tuple[str, str], ...]
) -> tuple[tuple[str, str], ...]:
    """kubeadmutil.ArgumentsToCommand (replace-style extraArgs): the defaults sorted by name then
    value, without those an extraArg names, then the extraArgs in the order given."""
    overridden = {k for k, _ in extra}
    base = sorted((kv for kv in defaults if kv[0] not in overridden), key=lambda kv: (kv[0], kv[1]))
    return (*base, *extra)


def etcd(
    shape: ClusterShape, node: ControlPlaneNode, joined: Sequence[tuple[str, str]] = ()
) -> Component:
    """kubeadm's etcd.yaml (phases/etcd/local.go, getEtcdCommand). ``joined``: the members
    (name, peer URL) after this node's MemberAdd, itself included, as ``kubeadm join
    --control-plane`` writes them, with --initial-cluster-state=existing; empty: the first
    control plane, a cluster of its own (``kubeadm init``)."""
    p = node.ports
    if joined:
        cluster = [
            ("initial-cluster", ",".join(f"{name}={url}" for name, url in joined)),
            ("initial-cluster-state", "existing"),
        ]
    else:
        cluster = [("initial-cluster", f"{node.name}={node.etcd_peer_url}")]
    local = f"https://127.0.0.1:{p.etcd_client}"
    # kubeadm listens on localhost and the node's address; on loopback that is one URL (etcd
    # refuses to bind the same address twice).
    listen = local if node.ip == "127.0.0.1" else f"{local},{node.etcd_client_url}"
    defaults = [
        ("name", node.name),
        ("listen-client-urls", listen),
        ("advertise-client-urls", node.etcd_client_url),
        ("listen-peer-urls", node.etcd_peer_url),
        ("initial-advertise-peer-urls", node.etcd_peer_url),
        ("data-dir", ETCD_DATA),
        ("cert-file", f"{ETCD_PKI}/server.crt"),
        ("key-file", f"{ETCD_PKI}/server.key"),
        ("trusted-ca-file", f"{ETCD_PKI}/ca.crt"),
        ("client-cert-auth", "true"),
        ("peer-cert-file", f"{ETCD_PKI}/peer.crt"),
        ("peer-key-file", f"{ETCD_PKI}/peer.key"),
        ("peer-trusted-ca-file", f"{ETCD_PKI}/ca.crt"),
        ("peer-client-cert-auth", "true"),
        ("snapshot-count", "10000"),
        ("listen-metrics-urls", f"http://127.0.0.1:{p.etcd_metrics}"),
        ("feature-gates", "InitialCorruptCheck=true"),
        ("watch-progress-notify-interval", "5s"),
        *cluster,
    ]
    return Component(
        name="etcd",
        image=f"registry.k8s.io/etcd:{shape.etcd_tag}",
        flags=arguments(defaults, shape.extra_args.get("etcd", ())),
        probe_port=p.etcd_metrics,
        mounts=(  # kubeadm's order
            Mount("etcd-data", ETCD_DATA, node.etcd_data),
            Mount("etcd-certs", ETCD_PKI, node.pki / "etcd"),
        ),
        liveness=liveness("127.0.0.1", "/livez", "HTTP"),
        readiness=readiness("127.0.0.1", "/readyz", "HTTP"),
        startup=startup("127.0.0.1", "/readyz", "HTTP"),
        cpu="100m",
        memory="100Mi",
        annotations=(("kubeadm.kubernetes.io/etcd.advertise-client-urls", node.etcd_client_url),),
    )


def apiserver(shape: ClusterShape, node: ControlPlaneNode) -> Component:
    p = node.ports
    defaults = [
        ("advertise-address", node.ip),
        ("enable-admission-plugins", "NodeRestriction"),
        ("service-cluster-ip-range", SERVICE_SUBNET),
        ("service-account-key-file", f"{PKI}/sa.pub"),
        ("service-account-signing-key-file", f"{PKI}/sa.key"),
        ("service-account-issuer", "https://kubernetes.default.svc.cluster.local"),
        ("client-ca-file", f"{PKI}/ca.crt"),
        ("tls-cert-file", f"{PKI}/apiserver.crt"),
        ("tls-private-key-file", f"{PKI}/apiserver.key"),
        ("kubelet-client-certificate", f"{PKI}/apiserver-kubelet-client.crt"),
        ("kubelet-client-key", f"{PKI}/apiserver-kubelet-client.key"),
        ("enable-bootstrap-token-auth", "true"),
        ("secure-port", str(p.apiserver)),
        ("allow-privileged", "true"),
        ("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname"),
        ("requestheader-username-headers", "X-Remote-User"),
        ("requestheader-group-headers", "X-Remote-Group"),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        ("requestheader-client-ca-file", f"{PKI}/front-proxy-ca.crt"),
        ("requestheader-allowed-names", "front-proxy-client"),
        ("proxy-client-cert-file", f"{PKI}/front-proxy-client.crt"),
        ("proxy-client-key-file", f"{PKI}/front-proxy-client.key"),
        # stacked etcd: the local member only, as kubeadm does
        ("etcd-servers", f"https://127.0.0.1:{p.etcd_client}"),
        ("etcd-cafile", f"{ETCD_PKI}/ca.crt"),
        ("etcd-certfile", f"{PKI}/apiserver-etcd-client.crt"),
        ("etcd-keyfile", f"{PKI}/apiserver-etcd-client.key"),
        ("authorization-mode", "Node,RBAC"),
    ]
    mounts = [Mount("k8s-certs", PKI, node.pki, read_only=True), *audit_mounts(shape)]
    return Component(
        name="kube-apiserver",
        image=f"registry.k8s.io/kube-apiserver:v{shape.version}",
        flags=arguments(defaults, shape.extra_args.get("kube-apiserver", ())),
        probe_port=p.apiserver,
        mounts=tuple(mounts),
        liveness=liveness(node.ip, "/livez", "HTTPS"),
        readiness=readiness(node.ip, "/readyz", "HTTPS"),
        startup=startup(node.ip, "/livez", "HTTPS"),
        cpu="250m",
        annotations=(
            (
                "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint",
                f"{node.ip}:{p.apiserver}",
            ),
        ),
    )


def controller_manager(shape: ClusterShape, node: ControlPlaneNode) -> Component:
    kubeconfig = "/etc/kubernetes/controller-manager.conf"
    defaults = [
        ("bind-address", "127.0.0.1"),
        ("leader-elect", "true"),
        ("kubeconfig", kubeconfig),
        ("authentication-kubeconfig", kubeconfig),
        ("authorization-kubeconfig", kubeconfig),
        ("client-ca-file", f"{PKI}/ca.crt"),
        ("requestheader-client-ca-file", f"{PKI}/front-proxy-ca.crt"),
        ("root-ca-file", f"{PKI}/ca.crt"),
        ("service-account-private-key-file", f"{PKI}/sa.key"),
        ("cluster-signing-cert-file", f"{PKI}/ca.crt"),
        ("cluster-signing-key-file", f"{PKI}/ca.key"),
        ("use-service-account-credentials", "true"),
        ("controllers", "*,bootstrapsigner,tokencleaner"),
        ("cluster-name", CLUSTER_NAME),
    ]
    if shape.pod_subnet:
        defaults += [
            ("allocate-node-cidrs", "true"),
            ("cluster-cidr", shape.pod_subnet),
            ("service-cluster-ip-range", SERVICE_SUBNET),
        ]
    if node.ports.controller_manager != DEFAULT_PORTS.controller_manager:
        # Several sandboxes (and control-plane nodes) share one loopback: each gets its own port.
        defaults.append(("secure-port", str(node.ports.controller_manager)))
    return Component(
        name="kube-controller-manager",
        image=f"registry.k8s.io/kube-controller-manager:v{shape.version}",
        flags=arguments(defaults, shape.extra_args.get("kube-controller-manager", ())),
        probe_port=node.ports.controller_manager,
        mounts=(
            Mount("k8s-certs", PKI, node.pki, read_only=True),
            Mount(
                "kubeconfig",
                kubeconfig,
                node.kubernetes_dir / "controller-manager.conf",
                "FileOrCreate",
                True,
            ),
        ),
        liveness=liveness("127.0.0.1", "/healthz", "HTTPS"),
        readiness=None,
        startup=startup("127.0.0.1", "/healthz", "HTTPS"),
        cpu="200m",
    )


def scheduler(shape: ClusterShape, node: ControlPlaneNode) -> Component:
    kubeconfig = "/etc/kubernetes/scheduler.conf"
    defaults = [
        ("bind-address", "127.0.0.1"),
        ("leader-elect", "true"),
        ("kubeconfig", kubeconfig),
        ("authentication-kubeconfig", kubeconfig),
        ("authorization-kubeconfig", kubeconfig),
    ]
    if node.ports.scheduler != DEFAULT_PORTS.scheduler:
        defaults.append(("secure-port", str(node.ports.scheduler)))
    return Component(
        name="kube-scheduler",
        image=f"registry.k8s.io/kube-scheduler:v{shape.version}",
        flags=arguments(defaults, shape.extra_args.get("kube-scheduler", ())),
        probe_port=node.ports.scheduler,
        mounts=(
            Mount(
                "kubeconfig",
                kubeconfig,
                node.kubernetes_dir / "scheduler.conf",
                "FileOrCreate",
                True,
            ),
        ),
        liveness=liveness("127.0.0.1", "/livez", "HTTPS"),
        readiness=readiness("127.0.0.1", "/readyz", "HTTPS"),
        startup=startup("127.0.0.1", "/livez", "HTTPS"),
        cpu="100m",
    )


def components(shape: ClusterShape, node: ControlPlaneNode) -> list[Component]:
    """The four static pods of the first control-plane node, etcd first."""
    return [etcd(shape, node), *control_plane(shape, node)]


def control_plane(shape: ClusterShape, node: ControlPlaneNode) -> list[Component]:
    """kube-apiserver, kube-controller-manager and kube-scheduler: what ``kubeadm join
    --control-plane`` writes before its etcd member joins."""
    return [apiserver(shape, node), controller_manager(shape, node), scheduler(shape, node)]


def sandbox_extra_args(
    *, pod_eviction_timeout: int | None, node_monitor_grace_period: int | None, audit: bool
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
        "etcd": (("log-level", "warn"), ("unsafe-no-fsync", "true")),
    }


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
        "certificateValidityPeriod": "8760h0m0s",
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
