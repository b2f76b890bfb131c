"""`kubecare etcd alarm recover`: the way back from NOSPACE, as etcd's maintenance guide gives it
(op-guide/maintenance.md, "Space quota"): compact away the old revisions, defragment every
member so the file shrinks under the quota, disarm the alarm, and only then does etcd take
writes again — which is checked with one write of its own. :func:`plan_recover` is pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import EtcdError
from .cluster import ClusterView, Target, survey
from .defrag import CompactPlan, DefragResult, DefragStep, plan_compact, plan_defrag, run_defrag
from .maintenance import Alarm, compact, disarm, write_check

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RecoverPlan:
    alarms: tuple[Alarm, ...]
    compact: CompactPlan
    defrag: tuple[DefragStep, ...]

    def lines(self, names: dict[int, str] | None = None) -> list[str]:
        who = names or {}
        raised = (
            ", ".join(
                f"{a.alarm} on {who.get(a.member_id) or f'{a.member_id:x}'}" for a in self.alarms
            )
            or "none"
        )
        out = [
            f"alarms raised: {raised}",
            f"1. compact the key space to revision {self.compact.revision} (the current one)",
        ]
        for i, s in enumerate(self.defrag, 2):
            out.append(
                f"{i}. defragment {s.name} ({s.role}): about {s.expected_free / (1 << 20):.1f} "
                "MiB free inside its file now, more after the compaction"
            )
        n = len(self.defrag) + 2
        out.append(f"{n}. disarm {'each alarm' if self.alarms else 'any alarm'}")
        out.append(f"{n + 1}. write and delete one key outside /registry to prove writes work")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "alarms": [a.as_dict() for a in self.alarms],
            "compactRevision": self.compact.revision,
            "defrag": [s.as_dict() for s in self.defrag],
        }


@dataclass
class RecoverReport:
    compacted_to: int = 0
    defrag: list[DefragResult] = field(default_factory=list)
    disarmed: list[Alarm] = field(default_factory=list)
    write_revision: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "compactedTo": self.compacted_to,
            "defrag": [r.as_dict() for r in self.defrag],
            "disarmed": [a.as_dict() for a in self.disarmed],
            "writeRevision": self.write_revision,
        }


#: After the defragmentation each database must be this far under its quota before the alarm
#: is disarmed: etcd refuses a write when size + its cost reaches the quota, and the
#: apiservers write the moment it is disarmed.
HEADROOM = 0.9


def plan_recover(view: ClusterView) -> RecoverPlan:
    """NOSPACE only: any other alarm (CORRUPT) is refused, since disarming it would hide
    corrupted data and let writes go to it."""
    other = [a for a in view.alarms if a.alarm != "NOSPACE"]
    if other:
        a = other[0]
        raise EtcdError(
            f"a {a.alarm} alarm is raised (member {a.member_id:x}): this recovery is for NOSPACE "
            "only; find out which member's data is wrong first (kubecare etcd health)"
        )
    if view.alarms_error is not None:
        raise EtcdError(f"the alarms cannot be read ({view.alarms_error}); nothing done")
    return RecoverPlan(tuple(view.alarms), plan_compact(view), tuple(plan_defrag(view)))


async def run_recover(
    targets: list[Target],
    plan: RecoverPlan,
    *,
    dial_advertised: bool = True,
    progress: Progress | None = None,
) -> RecoverReport:
    say = progress or (lambda _m: None)
    report = RecoverReport()
    view = await survey(targets, dial_advertised=dial_advertised)
    serving = view.serving_voter()
    if serving is None or serving.endpoint is None:
        raise EtcdError("no voting etcd member is serving; nothing can be recovered")
    say(f"compacting to revision {plan.compact.revision}")
    try:
        await compact(serving.endpoint, plan.compact.revision)
    except EtcdError as e:
        if "has been compacted" not in str(e):  # done by the apiserver meanwhile: fine
            raise
    report.compacted_to = plan.compact.revision
    report.defrag = await run_defrag(
        targets, list(plan.defrag), dial_advertised=dial_advertised, progress=progress
    )
    view = await survey(targets, dial_advertised=dial_advertised)
    for m in view.members:
        st = m.status
        if st is not None and st.db_size_quota > 0 and st.db_size >= HEADROOM * st.db_size_quota:
            raise EtcdError(
                f"etcd member {m.name}'s database is still {st.db_size} bytes after the "
                f"defragmentation, {st.db_size / st.db_size_quota:.0%} of its "
                f"{st.db_size_quota}-byte quota: the data itself is too big; raise "
                "--quota-backend-bytes or delete data (the alarm stays raised)"
            )
    serving = view.serving_voter()
    if serving is None or serving.endpoint is None:
        raise EtcdError("no voting etcd member is serving after the defragmentation; stopped")
    for alarm in (a for a in view.alarms if a.alarm == "NOSPACE"):
        owner = view.member(alarm.member_id)
        say(f"disarming {alarm.alarm} of {owner.name if owner else f'{alarm.member_id:x}'}")
        await disarm(serving.endpoint, alarm)
        report.disarmed.append(alarm)
    try:
        report.write_revision = await write_check(serving.endpoint)
    except EtcdError as e:
        if "space quota" in str(e):
            raise EtcdError(
                "disarmed, but etcd refused a write again at once: the database is still too "
                "close to its quota; raise --quota-backend-bytes or delete data"
            ) from None
        raise
    say(f"etcd took a write again (revision {report.write_revision})")
    return report
