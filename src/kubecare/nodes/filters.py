"""Which pods a drain evicts, skips or is blocked by: kubectl's filters, in kubectl's order.

Mirrors k8s.io/kubectl/pkg/drain (filters.go). Each filter maps a pod to a :class:`Verdict`; the
first filter that says "don't delete" decides. Unlike kubectl, warnings from earlier filters are
kept (kubectl lets a later filter overwrite them), so the plan shows every reason.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from kubecare.kube import JSON
from kubecare.kube.objects import parse_time

# kubectl's wording, so its users recognise the messages (filters.go).
DAEMONSET_FATAL = "DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"
DAEMONSET_WARNING = "ignoring DaemonSet-managed Pods"
LOCAL_STORAGE_FATAL = "Pods with local storage (use --delete-emptydir-data to override)"
LOCAL_STORAGE_WARNING = "deleting Pods with local storage"
UNMANAGED_FATAL = "Pods that declare no controller (use --force to override)"
UNMANAGED_WARNING = "deleting Pods that declare no controller"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


class Action(StrEnum):
    EVICT = "evict"
    SKIP = "skip"
    BLOCK = "block"


@dataclass(frozen=True)
class Verdict:
    """What the drain does with one pod, and why."""

    action: Action
    reason: str = ""  # the deciding filter's message ("" for a plain evict)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class FilterOptions:
    """The drain flags the filters read."""

    ignore_daemonsets: bool = False
    force: bool = False
    delete_emptydir_data: bool = False
    skip_wait_for_delete_timeout: int = 0  # seconds; 0 = never skip terminating pods
    eviction: bool = True  # False with --disable-eviction: pods are deleted, budgets bypassed


@dataclass(frozen=True)
class PodFacts:
    """Everything the filters need about a pod, read once from its JSON."""

    namespace: str
    name: str
    uid: str
    phase: str
    controller_kind: str | None
    controller_api_version: str | None
    controller_name: str | None
    deletion_timestamp: datetime | None
    mirror: bool
    empty_dir: bool
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @property
    def daemonset_managed(self) -> bool:
        return self.controller_kind == "DaemonSet" and self.controller_api_version == "apps/v1"


def pod_facts(pod: JSON) -> PodFacts:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    controller = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), None)
    return PodFacts(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        phase=(pod.get("status") or {}).get("phase", ""),
        controller_kind=controller.get("kind") if controller else None,
        controller_api_version=controller.get("apiVersion") if controller else None,
        controller_name=controller.get("name") if controller else None,
        deletion_timestamp=parse_time(meta.get("deletionTimestamp")),
        mirror=MIRROR_ANNOTATION in (meta.get("annotations") or {}),
        empty_dir=any("emptyDir" in v for v in spec.get("volumes") or []),
        labels=dict(meta.get("labels") or {}),
    )


OK = Verdict(Action.EVICT)
Filter = Callable[[PodFacts], Verdict]


def make_filters(opts: FilterOptions, daemonsets: Collection[str], now: datetime) -> list[Filter]:
    """kubectl's filters in kubectl's order; ``daemonsets`` holds the existing "ns/name"s."""

    def skip_deleted(p: PodFacts) -> Verdict:
        if (
            opts.skip_wait_for_delete_timeout > 0
            and p.deletion_timestamp is not None
            and int((now - p.deletion_timestamp).total_seconds())
            > opts.skip_wait_for_delete_timeout
        ):
            return Verdict(
                Action.SKIP, "terminating for longer than --skip-wait-for-delete-timeout"
            )
        return OK

    def daemonset(p: PodFacts) -> Verdict:
        if not p.daemonset_managed or p.finished:
            return OK
        if f"{p.namespace}/{p.controller_name}" not in daemonsets:
            if opts.force:
                return Verdict(
                    Action.EVICT, warnings=(f'daemonsets.apps "{p.controller_name}" not found',)
                )
            return Verdict(Action.BLOCK, f'daemonsets.apps "{p.controller_name}" not found')
        if not opts.ignore_daemonsets:
            return Verdict(Action.BLOCK, DAEMONSET_FATAL)
        return Verdict(Action.SKIP, DAEMONSET_WARNING, warnings=(DAEMONSET_WARNING,))

    def mirror(p: PodFacts) -> Verdict:
        return Verdict(Action.SKIP, "mirror (static) pod") if p.mirror else OK

    def local_storage(p: PodFacts) -> Verdict:
        if not p.empty_dir or p.finished:
            return OK
        if not opts.delete_emptydir_data:
            return Verdict(Action.BLOCK, LOCAL_STORAGE_FATAL)
        return Verdict(Action.EVICT, warnings=(LOCAL_STORAGE_WARNING,))

    def unreplicated(p: PodFacts) -> Verdict:
        if p.finished or p.controller_kind is not None:
            return OK
        if opts.force:
            return Verdict(Action.EVICT, warnings=(UNMANAGED_WARNING,))
        return Verdict(Action.BLOCK, UNMANAGED_FATAL)

    return [skip_deleted, daemonset, mirror, local_storage, unreplicated]


def judge(pod: PodFacts, filters: Sequence[Filter]) -> Verdict:
    """Run ``filters`` in order; the first that does not evict decides. Warnings accumulate."""
    warnings: list[str] = []
    for f in filters:
        v = f(pod)
        warnings.extend(w for w in v.warnings if w not in warnings)
        if v.action is not Action.EVICT:
            return Verdict(v.action, v.reason, tuple(warnings))
    return Verdict(Action.EVICT, "", tuple(warnings))


def judge_all(
    pods: Sequence[PodFacts],
    opts: FilterOptions,
    daemonsets: Collection[str],
    now: datetime | None = None,
) -> list[tuple[PodFacts, Verdict]]:
    filters = make_filters(opts, daemonsets, now or datetime.now(UTC))
    return [(p, judge(p, filters)) for p in pods]


def blocking_errors(judged: Sequence[tuple[PodFacts, Verdict]]) -> list[str]:
    """kubectl's error lines: "cannot delete <reason>: ns/a, ns/b", one per reason, in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for pod, v in judged:
        if v.action is Action.BLOCK:
            grouped.setdefault(v.reason or "unexpected error", []).append(pod.key)
    return [f"cannot delete {reason}: {', '.join(keys)}" for reason, keys in grouped.items()]


def warning_lines(judged: Sequence[tuple[PodFacts, Verdict]]) -> list[str]:
    """kubectl's warning text, grouped: "ignoring DaemonSet-managed Pods: ns/a, ns/b"."""
    grouped: dict[str, list[str]] = {}
    for pod, v in judged:
        for w in v.warnings:
            grouped.setdefault(w, []).append(pod.key)
    return [f"{w}: {', '.join(keys)}" for w, keys in grouped.items()]
