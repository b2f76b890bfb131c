"""The version skew policy as rules over an inventory, and kubeadm's upgrade-jump policy.

Sources (read, not guessed):
- https://kubernetes.io/releases/version-skew-policy/ (kubernetes/website
  content/en/releases/version-skew-policy.md): every rule below quotes it.
- kubeadm: cmd/kubeadm/app/phases/upgrade/policy.go (``EnforceVersionPolicies``: one minor at a
  time, pre-releases only when allowed, kubelets at most 3 minors behind the target) and
  preflight/checks.go (``KubeletVersionCheck``: a kubelet newer than the control plane is an
  error; a newer *patch* is fine — only major and minor are compared).
- kubeadm's kubeconfig phase (phases/kubeconfig/kubeconfig.go): controller-manager.conf and
  scheduler.conf point at the node's *local* apiserver, kubelet.conf at the control-plane
  endpoint (the load balancer). So the controller-manager and scheduler are measured against the
  apiserver on their own node when there is one, the kubelet against the oldest apiserver.

kubecare is stricter than kubeadm in one place: kubeadm allows a downgrade of up to one minor
(policy.go ``MaximumAllowedMinorVersionDowngradeSkew``); kubecare never downgrades.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kubecare.versions.semver import Version

APISERVER = "kube-apiserver"
CONTROLLER_MANAGER = "kube-controller-manager"
SCHEDULER = "kube-scheduler"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
KUBECTL = "kubectl"
ETCD = "etcd"
COREDNS = "coredns"
RUNTIME = "container-runtime"
CONTROL_PLANE = (APISERVER, CONTROLLER_MANAGER, SCHEDULER)

#: policy.go: MaximumAllowedMinorVersionUpgradeSkew / MaximumAllowedMinorVersionKubeletSkew
MAX_UPGRADE_SKEW = 1
MAX_KUBELET_SKEW = 3

POLICY_URL = "https://kubernetes.io/releases/version-skew-policy/"
RULES = {
    "apiserver-ha": "the newest and oldest kube-apiserver instances must be within one minor version",
    "kubelet-newer": "kubelet must not be newer than kube-apiserver (the oldest, in HA)",
    "kubelet-older": "kubelet may be up to three minor versions older than kube-apiserver",
    "proxy-newer": "kube-proxy must not be newer than kube-apiserver (the oldest, in HA)",
    "proxy-older": "kube-proxy may be up to three minor versions older than kube-apiserver",
    "proxy-kubelet": "kube-proxy may be up to three minor versions older or newer than the kubelet it runs alongside",
    "cp-newer": "kube-controller-manager and kube-scheduler must not be newer than the kube-apiserver they talk to",
    "cp-older": "kube-controller-manager and kube-scheduler may be up to one minor version older than kube-apiserver",
    "kubectl": "kubectl is supported within one minor version (older or newer) of every kube-apiserver",
}


@dataclass(frozen=True)
class Component:
    """One running component's version and where it was read."""

    name: str
    node: str  # "" for cluster-wide (kubectl, kube-proxy's DaemonSet, CoreDNS)
    version: str  # as reported ("v1.37.2", "3.6.8-0", "containerd://2.1.4")
    source: str  # "mirror pod image", "/version", "nodeInfo", "Status RPC", ...

    @property
    def parsed(self) -> Version | None:
        text = self.version.rpartition("://")[2] if "://" in self.version else self.version
        try:
            return Version.parse(text)
        except ValueError:
            return Version.generic(text)


@dataclass(frozen=True)
class Violation:
    component: str
    node: str
    version: str
    rule: str  # a key of RULES
    detail: str

    @property
    def text(self) -> str:
        where = f" on {self.node}" if self.node else ""
        return f"{self.component} {self.version}{where}: {self.detail} ({RULES[self.rule]})"


def _versions(components: Iterable[Component], name: str) -> list[tuple[Component, Version]]:
    out = []
    for c in components:
        v = c.parsed if c.name == name else None
        if v is not None:
            out.append((c, v))
    return out


def check_skew(components: Sequence[Component]) -> list[Violation]:
    """Every violation of the skew policy in ``components`` (one inventory)."""
    apis = _versions(components, APISERVER)
    if not apis:
        return []
    oldest = min(v for _, v in apis)
    newest = max(v for _, v in apis)
    local_api = {c.node: v for c, v in apis if c.node}
    out: list[Violation] = []

    def add(c: Component, rule: str, detail: str) -> None:
        out.append(Violation(c.name, c.node, c.version, rule, detail))

    if newest.minors_from(oldest) > 1:
        for c, v in apis:
            if v == oldest:
                add(c, "apiserver-ha", f"{newest.minors_from(oldest)} minors behind {newest}")
    kubelets = {c.node: v for c, v in _versions(components, KUBELET)}
    for name, rule in ((KUBELET, "kubelet"), (KUBE_PROXY, "proxy")):
        for c, v in _versions(components, name):
            if (
                v.minors_from(oldest) > 0
            ):  # kubeadm compares major/minor only: a newer patch is fine
                add(c, f"{rule}-newer", f"newer than kube-apiserver {oldest}")
            elif newest.minors_from(v) > MAX_KUBELET_SKEW:
                add(
                    c,
                    f"{rule}-older",
                    f"{newest.minors_from(v)} minors behind kube-apiserver {newest}",
                )
            if name == KUBE_PROXY:
                # A DaemonSet's image (node "") runs beside every kubelet.
                peers = [c.node] if c.node else sorted(kubelets)
                far = [n for n in peers if n in kubelets and abs(v.minors_from(kubelets[n])) > 3]
                if far:
                    add(
                        c,
                        "proxy-kubelet",
                        f"more than 3 minors from the kubelet on {', '.join(far)}",
                    )
    for name in (CONTROLLER_MANAGER, SCHEDULER):
        for c, v in _versions(components, name):
            # kubeadm points controller-manager.conf/scheduler.conf at the local apiserver
            peer_low = local_api.get(c.node, oldest)
            peer_high = local_api.get(c.node, newest)
            if v.minors_from(peer_low) > 0:
                add(c, "cp-newer", f"newer than kube-apiserver {peer_low}")
            elif peer_high.minors_from(v) > 1:
                add(
                    c,
                    "cp-older",
                    f"{peer_high.minors_from(v)} minors behind kube-apiserver {peer_high}",
                )
    for c, v in _versions(components, KUBECTL):
        distant = [a for _, a in apis if abs(v.minors_from(a)) > 1]
        if distant:
            add(c, "kubectl", f"more than one minor from kube-apiserver {min(distant)}")
    return out


@dataclass
class JumpCheck:
    """kubeadm's VersionSkewPolicyErrors: mandatory errors stop an upgrade; skippable ones can
    be overridden (kubeadm --force, kubecare --ignore-version-warnings)."""

    mandatory: list[str] = field(default_factory=list)
    skippable: list[str] = field(default_factory=list)


def check_jump(
    cluster: Version,
    target: Version,
    kubelets: Mapping[str, Version],
    *,
    allow_experimental: bool = False,
    allow_rc: bool = False,
) -> JumpCheck:
    """Whether upgrading a cluster at ``cluster`` to ``target`` is allowed (policy.go's rules
    that do not depend on the kubeadm binary; downgrades refused)."""
    out = JumpCheck()
    unstable = bool(target.pre)
    # policy.go: a skew rule is skippable instead of mandatory for pre-release targets
    too_far = out.skippable if unstable else out.mandatory
    if target.major != cluster.major:
        out.mandatory.append(
            f"upgrading from {cluster} to {target} changes the major version; not supported"
        )
    elif target < cluster:
        out.mandatory.append(
            f"{target} is older than the cluster's {cluster}; kubecare does not downgrade "
            "(restore an etcd snapshot taken before the upgrade instead)"
        )
    elif target.minors_from(cluster) > MAX_UPGRADE_SKEW:
        too_far.append(
            f"{target} is too high: the cluster is at {cluster} and Kubernetes upgrades only "
            f"{MAX_UPGRADE_SKEW} minor version at a time; upgrade to v{cluster.major}."
            f"{cluster.minor + 1}.x first"
        )
    if unstable:
        rc = target.pre.startswith("rc")
        if not (allow_experimental or (allow_rc and rc)):
            out.skippable.append(
                f"{target} is an unstable version; pass --allow-"
                f"{'release-candidate' if rc else 'experimental'}-upgrades to allow it"
            )
    old = sorted(n for n, v in kubelets.items() if target.minors_from(v) > MAX_KUBELET_SKEW)
    if old:
        out.skippable.append(
            f"kubelets more than {MAX_KUBELET_SKEW} minors older than {target}: {', '.join(old)}; "
            "upgrade them first"
        )
    return out
