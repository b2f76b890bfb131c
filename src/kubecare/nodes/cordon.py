"""Cordon and uncordon: mark nodes (un)schedulable, idempotently.

:func:`plan_cordon` is pure (node objects in, a :class:`CordonPlan` out); :func:`apply_cordon`
acts on it. A node already in the wanted state is reported "already cordoned" and not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kubecare.kube import JSON, Kube


class DryRun(StrEnum):
    """kubectl's --dry-run values: none acts, client only plans, server asks the apiserver."""

    NONE = "none"
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True)
class CordonChange:
    """One node's planned change."""

    node: str
    was_unschedulable: bool
    unschedulable: bool

    @property
    def needed(self) -> bool:
        return self.was_unschedulable != self.unschedulable


@dataclass(frozen=True)
class CordonPlan:
    """What cordon (``unschedulable=True``) or uncordon would do to each node."""

    unschedulable: bool
    changes: tuple[CordonChange, ...]


@dataclass(frozen=True)
class CordonResult:
    """What happened to one node: ``cordoned``/``uncordoned``, or ``already ...``."""

    node: str
    outcome: str
    changed: bool
    dry_run: DryRun


def is_unschedulable(node: JSON) -> bool:
    return bool((node.get("spec") or {}).get("unschedulable"))


def plan_cordon(nodes: list[JSON], *, unschedulable: bool) -> CordonPlan:
    """Plan setting ``spec.unschedulable`` on ``nodes``."""
    return CordonPlan(
        unschedulable=unschedulable,
        changes=tuple(
            CordonChange(n["metadata"]["name"], is_unschedulable(n), unschedulable) for n in nodes
        ),
    )


async def set_unschedulable(
    kube: Kube, node: str, unschedulable: bool, *, dry_run: bool = False
) -> None:
    """Patch one node's ``spec.unschedulable`` (the single write behind cordon, uncordon, drain)."""
    await kube.request_json(
        "PATCH",
        f"/api/v1/nodes/{node}",
        body={"spec": {"unschedulable": True if unschedulable else None}},
        params={"dryRun": "All"} if dry_run else None,
        content_type="application/merge-patch+json",
        what=f'node "{node}"',
    )


async def apply_cordon(
    kube: Kube, plan: CordonPlan, *, dry_run: DryRun = DryRun.NONE
) -> list[CordonResult]:
    """Carry out ``plan``; nodes already in the wanted state are left alone."""
    verb = "cordoned" if plan.unschedulable else "uncordoned"
    results = []
    for change in plan.changes:
        if not change.needed:
            results.append(CordonResult(change.node, f"already {verb}", False, dry_run))
            continue
        if dry_run is not DryRun.CLIENT:
            await set_unschedulable(
                kube, change.node, plan.unschedulable, dry_run=dry_run is DryRun.SERVER
            )
        results.append(CordonResult(change.node, verb, True, dry_run))
    return results
