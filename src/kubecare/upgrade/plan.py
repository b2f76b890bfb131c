"""The upgrade plan: pure data computed from an inventory, the nodes and the preflight facts.

The order is kubeadm's (kubernetes.io "Upgrading kubeadm clusters"): the first control-plane
node (``kubeadm upgrade apply``), the other control-plane nodes one at a time (``kubeadm upgrade
node``), then the workers — in batches of ``--max-unavailable`` (rolling), all together
(all-at-once), or one at a time with a new node added first (surge). On each control-plane node
etcd goes first, then kube-apiserver, kube-controller-manager, kube-scheduler
(phases/upgrade/staticpods.go), then the kubelet. kube-proxy (an addon) follows once every
control-plane node is done (cmd/phases/upgrade/addons.go): ``addons`` lists kube-proxy and
CoreDNS with the targets kubeadm's addon phase gives them, as ``kubeadm upgrade plan`` does. The
skew is checked after every step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kubecare.errors import UsageError
from kubecare.versions import skew
from kubecare.versions.deprecations import DeprecatedUse
from kubecare.versions.kubeadm import coredns_tag, etcd_tag
from kubecare.versions.semver import Version
from kubecare.versions.skew import Component, JumpCheck

#: The check no flag overrides: a jump kubeadm's policy never allows.
MANDATORY = "version"

FIRST_CONTROL_PLANE = "first-control-plane"
CONTROL_PLANE = "control-plane"
WORKER = "worker"


#: kubeadm's order on a control-plane node: etcd first (staticpods.go), then
#: constants.ControlPlaneComponents, then the kubelet.
ORDER = (skew.ETCD, skew.APISERVER, skew.CONTROLLER_MANAGER, skew.SCHEDULER, skew.KUBELET)


class Strategy(StrEnum):
    ROLLING = "rolling"
    ALL_AT_ONCE = "all-at-once"
    SURGE = "surge"


def parse_max_unavailable(text: str, workers: int) -> int:
    """``N`` or ``N%`` of the workers (rounded down, as a Deployment's maxUnavailable), at
    least 1: a batch of 0 nodes would never finish."""
    value = text.strip()
    try:
        if value.endswith("%"):
            pct = int(value[:-1])
            if not 0 < pct <= 100:
                raise ValueError
            return max(1, workers * pct // 100)
        n = int(value)
        if n < 1:
            raise ValueError
        return n
    except ValueError:
        raise UsageError(
            f"--max-unavailable {text!r}: give a number of nodes (>= 1) or a percentage (1%-100%)"
        ) from None


@dataclass(frozen=True)
class NodeFacts:
    name: str
    control_plane: bool
    ready: bool
    kubelet: str
    unschedulable: bool = False


@dataclass(frozen=True)
class Change:
    component: str
    current: str
    target: str


@dataclass(frozen=True)
class NodeStep:
    """One node's upgrade: its place in the order and what changes on it."""

    node: str
    role: str  # first-control-plane | control-plane | worker
    batch: int  # nodes of one batch are upgraded together; batches in order
    changes: tuple[Change, ...]
    skew_after: tuple[str, ...] = ()  # violations once this node's batch is done
    up_to_date: bool = False
    cordoned: bool = False  # cordoned before the upgrade: left cordoned after it


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    blocking: bool  # a failed blocking check is a no-go
    detail: str


@dataclass(frozen=True)
class Preflight:
    """What the preflight read from the cluster (plain data, so the plan stays pure)."""

    drain_errors: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> errors
    pdb_blocked: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> PDBs
    pdb_waits: dict[str, tuple[str, ...]] = field(default_factory=dict)  # node -> waits
    single_node_workloads: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # node -> "ns/DaemonSet/name" of each DaemonSet pod its drain leaves running
    daemonset_pods: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # node -> "ns/name" of each Deployment its drain rolls out first (--surge)
    surges: dict[str, tuple[str, ...]] = field(default_factory=dict)
    deprecated: tuple[DeprecatedUse, ...] = ()
    snapshot_age: float | None = None  # seconds since the newest etcd snapshot; None: none
    snapshot_where: str = ""
    backup_age: float | None = None
    backup_where: str = ""
    notes: tuple[str, ...] = ()
    #: what RBAC kept the preflight from reading: each a blocking check (a plan that could not
    #: look is not a go), the rest of the plan still shown
    unseen: tuple[str, ...] = ()


@dataclass
class UpgradePlan:
    target: str
    current: str  # the oldest kube-apiserver
    etcd_target: str
    strategy: Strategy
    max_unavailable: int
    steps: list[NodeStep]
    checks: list[Check]
    jump: JumpCheck
    skew_now: list[str]
    # kubeadm's addon phase, run by `kubeadm upgrade apply` once the first control plane is done
    addons: list[Change] = field(default_factory=list)
    # why this target, when the user gave none (``upgrade plan`` without --to)
    target_reason: str = ""

    @property
    def go(self) -> bool:
        return not self.reasons

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks if c.blocking and not c.ok]

    @property
    def pending(self) -> list[NodeStep]:
        return [s for s in self.steps if not s.up_to_date]


DAY = 86400.0


def _ver(text: str) -> Version | None:
    return Component("", "", text, "").parsed


def _older(version: str, target: Version) -> bool:
    """Whether a component at ``version`` needs the upgrade. A newer patch (or anything
    newer) is left alone: kubecare never downgrades; an unreadable version is upgraded."""
    v = _ver(version)
    return v is None or v < target


def _apiservers(components: Sequence[Component]) -> list[Version]:
    apis = [v for c in components if c.name == skew.APISERVER and (v := c.parsed) is not None]
    if not apis:
        raise UsageError("no kube-apiserver version found; is this a Kubernetes cluster?")
    return apis


def oldest_apiserver(components: Sequence[Component]) -> Version:
    """The version the cluster is at: its oldest kube-apiserver."""
    return min(_apiservers(components))


def build_plan(
    components: Sequence[Component],
    nodes: Sequence[NodeFacts],
    target: Version,
    preflight: Preflight,
    *,
    strategy: Strategy = Strategy.ROLLING,
    max_unavailable: str = "1",
    ignore_version_warnings: bool = False,
    allow_experimental: bool = False,
    allow_rc: bool = False,
    exempt: frozenset[str] = frozenset(),
) -> UpgradePlan:
    """``exempt``: nodes a resumed run left cordoned or NotReady itself (its journal says
    which): their drain and readiness findings are the run's own doing, not a reason to stop."""
    if exempt:
        nodes = [dataclasses.replace(n, ready=True) if n.name in exempt else n for n in nodes]
        preflight = dataclasses.replace(
            preflight,
            drain_errors={k: v for k, v in preflight.drain_errors.items() if k not in exempt},
            pdb_blocked={k: v for k, v in preflight.pdb_blocked.items() if k not in exempt},
            pdb_waits={k: v for k, v in preflight.pdb_waits.items() if k not in exempt},
        )
    apis = _apiservers(components)
    oldest, newest = min(apis), max(apis)
    kubelets = {n.name: v for n in nodes if (v := _ver(n.kubelet)) is not None}
    jump = skew.check_jump(
        oldest, target, kubelets, allow_experimental=allow_experimental, allow_rc=allow_rc
    )
    if newest > target and not jump.mandatory:  # an HA member already past the target
        jump.mandatory.append(f"kube-apiserver {newest} is newer than {target}; no downgrades")
    etcd_target = etcd_tag(target.minor)
    by_node: dict[str, list[Component]] = {}
    for c in components:
        by_node.setdefault(c.node, []).append(c)
    cps = sorted((n for n in nodes if n.control_plane), key=lambda n: n.name)
    workers = sorted((n for n in nodes if not n.control_plane), key=lambda n: n.name)
    batch_size = {
        Strategy.ROLLING: parse_max_unavailable(max_unavailable, len(workers)),
        Strategy.ALL_AT_ONCE: max(1, len(workers)),
        Strategy.SURGE: 1,
    }[strategy]
    tv = str(target)
    steps: list[NodeStep] = []
    for i, n in enumerate(cps):
        changes: list[Change] = []
        for c in by_node.get(n.name, []):
            if c.name == skew.ETCD and c.source == "mirror pod image":
                cur = _ver(c.version)
                want = _ver(etcd_target)
                # kubeadm never downgrades etcd (staticpods.go: "Skipping etcd upgrade")
                if cur is not None and want is not None and cur < want:
                    changes.append(Change(c.name, c.version, etcd_target))
            elif c.name in skew.CONTROL_PLANE and _older(c.version, target):
                changes.append(Change(c.name, c.version, tv))
        if _older(n.kubelet, target):
            changes.append(Change(skew.KUBELET, n.kubelet, tv))
        changes.sort(key=lambda c: ORDER.index(c.component))
        role = FIRST_CONTROL_PLANE if i == 0 else CONTROL_PLANE
        steps.append(
            NodeStep(
                n.name, role, i, tuple(changes), up_to_date=not changes, cordoned=n.unschedulable
            )
        )
    first_worker_batch = len(cps)
    for j, n in enumerate(workers):
        kubelet = (Change(skew.KUBELET, n.kubelet, tv),) if _older(n.kubelet, target) else ()
        steps.append(
            NodeStep(
                n.name, WORKER, first_worker_batch + j // batch_size, kubelet,
                up_to_date=not kubelet, cordoned=n.unschedulable,
            )
        )  # fmt: skip
    violations_now = skew.check_skew(components)
    skew_now = [v.text for v in violations_now]
    now_keys = {(v.component, v.node, v.rule) for v in violations_now}
    steps, final = _with_skew(components, steps, tv, len(cps), now_keys)
    checks = _checks(jump, nodes, preflight, target, skew_now, ignore_version_warnings)
    transient = sorted({v for s in steps for v in s.skew_after} - {v.text for v in final})
    if transient:
        checks.append(
            Check(
                "skew-during",
                False,
                False,
                "while the upgrade runs (the kubeadm order): " + "; ".join(transient),
            )
        )
    for left in final:
        # kubectl is the operator's client, not part of the cluster: a warning
        client = left.component == skew.KUBECTL
        checks.append(Check("skew-after", False, not client, f"after the upgrade: {left.text}"))
    return UpgradePlan(
        tv, str(oldest), etcd_target, strategy, batch_size, steps, checks, jump, skew_now,
        addon_changes(components, target),
    )  # fmt: skip


def addon_changes(components: Sequence[Component], target: Version) -> list[Change]:
    """kube-proxy to the target version and CoreDNS to the tag the target's kubeadm pins, as
    ``kubeadm upgrade plan`` lists them; each only when older (no plan of kubecare's
    downgrades)."""
    out = []
    for c in components:
        if c.name == skew.KUBE_PROXY and _older(c.version, target):
            out.append(Change(c.name, c.version, str(target)))
        elif c.name == skew.COREDNS:
            want, cur = coredns_tag(target.minor), _ver(c.version)
            wanted = _ver(want)
            if wanted is not None and (cur is None or cur < wanted):
                out.append(Change(c.name, c.version, want))
    return out


def _with_skew(
    components: Sequence[Component],
    steps: list[NodeStep],
    target: str,
    cp_count: int,
    now: set[tuple[str, str, str]],
) -> tuple[list[NodeStep], list[skew.Violation]]:
    """Each step with the violations (beyond those of today) of the cluster as it is once its
    batch is done; and those left at the end."""
    state = list(components)
    out: list[NodeStep] = []
    last_cp_batch = cp_count - 1
    after: list[skew.Violation] = []
    for batch in sorted({s.batch for s in steps}):
        group = [s for s in steps if s.batch == batch]
        for s in group:
            changed = {c.component: c.target for c in s.changes}
            state = [
                dataclasses.replace(c, version=changed[c.name])
                if c.node == s.node and c.name in changed
                else c
                for c in state
            ]
        if batch == last_cp_batch:  # kubeadm's addon phase: once every control plane is done
            state = [
                dataclasses.replace(c, version=target) if c.name == skew.KUBE_PROXY else c
                for c in state
            ]
        after = [v for v in skew.check_skew(state) if (v.component, v.node, v.rule) not in now]
        texts = tuple(v.text for v in after)
        out += [dataclasses.replace(s, skew_after=texts) for s in group]
    return out, after


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "none found"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min old"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.1f} h old"
    return f"{seconds / DAY:.0f} days old"


def daemonset_detail(pods: dict[str, tuple[str, ...]]) -> str:
    """One line naming each DaemonSet whose pods the drains leave running, and on how many
    nodes: kube-proxy and a CNI run on every node of a real cluster."""
    nodes_of: dict[str, set[str]] = {}
    for node, owners in pods.items():
        for owner in owners:
            nodes_of.setdefault(owner, set()).add(node)
    listed = ", ".join(
        f"{owner} ({len(ns)} node{'s' if len(ns) != 1 else ''})"
        for owner, ns in sorted(nodes_of.items())
    )
    return f"DaemonSet pods stay running while their node drains: {listed}"


def _checks(
    jump: JumpCheck,
    nodes: Sequence[NodeFacts],
    pre: Preflight,
    target: Version,
    skew_now: list[str],
    ignore_version_warnings: bool,
) -> list[Check]:
    out = [Check("version", True, True, f"the jump to {target} is allowed")]
    if jump.mandatory or jump.skippable:
        # kubeadm: mandatory errors can never be overridden; skippable ones with --force
        out = [Check(MANDATORY, False, True, m) for m in jump.mandatory]
        out += [
            Check(
                "version-warning",
                False,
                not ignore_version_warnings,
                m + ("" if ignore_version_warnings else " (--ignore-version-warnings to go on)"),
            )
            for m in jump.skippable
        ]
    not_ready = sorted(n.name for n in nodes if not n.ready)
    out.append(
        Check(
            "nodes-ready",
            not not_ready,
            True,
            f"nodes not Ready: {', '.join(not_ready)}" if not_ready else "every node is Ready",
        )
    )
    for node, errors in sorted(pre.drain_errors.items()):
        out.append(
            Check("drain", False, True, f"node {node} cannot be drained: {'; '.join(errors)}")
        )
    for node, blocked in sorted(pre.pdb_blocked.items()):
        out.append(
            Check("pdb", False, True, f"node {node} can never be drained: {'; '.join(blocked)}")
        )
    for node, deployments in sorted(pre.surges.items()):
        out.append(
            Check(
                "surge",
                True,
                False,
                f"node {node}: its drain first rolls out Deployment {', '.join(deployments)} "
                "(--surge: a new pod Ready elsewhere before the old one goes)",
            )
        )
    for node, waits in sorted(pre.pdb_waits.items()):
        out.append(Check("pdb-wait", False, False, f"node {node}: {'; '.join(waits)}"))
    for node, workloads in sorted(pre.single_node_workloads.items()):
        out.append(
            Check(
                "single-node",
                False,
                False,
                f"node {node} runs every ready replica of {', '.join(workloads)}: down while it drains",
            )
        )
    if pre.daemonset_pods:
        out.append(Check("daemonsets", True, False, daemonset_detail(pre.daemonset_pods)))
    removed = [d for d in pre.deprecated if d.removed_by(target)]
    others = [d for d in pre.deprecated if not d.removed_by(target)]
    for d in removed:
        out.append(
            Check(
                "removed-api",
                False,
                True,
                f"{d.group_version} {d.resource} is still used ({d.source}) and is not served in "
                f"{target.minor_line}; migrate its clients first",
            )
        )
    for d in others:
        extra = f": {d.warning}" if d.warning else ""
        out.append(
            Check(
                "deprecated-api",
                False,
                False,
                f"{d.group_version} {d.resource} is deprecated and still used ({d.source}){extra}",
            )
        )
    for v in skew_now:
        out.append(Check("skew", False, False, f"skew now: {v}"))
    for name, age, where in (
        ("etcd-snapshot", pre.snapshot_age, pre.snapshot_where),
        ("backup", pre.backup_age, pre.backup_where),
    ):
        fresh = age is not None and age < DAY
        out.append(
            Check(name, fresh, False, f"last {name.replace('-', ' ')}: {_age(age)} ({where})")
        )
    for note in pre.notes:
        out.append(Check("note", True, False, note))
    for gap in pre.unseen:
        out.append(Check("unseen", False, True, f"not checked: {gap}"))
    return out
