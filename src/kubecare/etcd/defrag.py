"""Rolling defragmentation and compaction of an etcd cluster.

A member being defragmented serves nothing until it is done (etcd holds its backend's lock
while it rewrites the file). etcdctl's ``defrag`` goes through the endpoints it is given one
after the other, in that order, without looking at quorum or waiting for a member to serve
again. Here: one member at a time, followers first and the leader last (or, with
``move_leader``, leadership handed to an already defragmented follower first); before each
member the cluster is looked at again, and the others must hold quorum without it; after each,
the member must be serving again before the next. Learners are left out: etcd answers only
Status and serializable reads from a learner. :func:`plan_defrag` is pure; :func:`run_defrag`
does it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import EtcdError
from .cluster import ClusterView, MemberView, Target, survey
from .grpc import MemberStatus, member_status
from .maintenance import compact, defragment, move_leader

Progress = Callable[[str], None]

#: How long a member may take to serve again after its defragmentation.
BACK_TIMEOUT = 60.0


@dataclass(frozen=True)
class DefragStep:
    member_id: int
    name: str
    url: str
    role: str  # learner, follower, leader
    db_size: int
    db_size_in_use: int
    move_leader_to: int = 0  # before this step, hand leadership to this member (0: no)

    @property
    def expected_free(self) -> int:
        return max(0, self.db_size - self.db_size_in_use)

    def as_dict(self) -> dict[str, Any]:
        return {
            "member": self.name,
            "memberID": f"{self.member_id:x}",
            "endpoint": self.url,
            "role": self.role,
            "dbSize": self.db_size,
            "dbSizeInUse": self.db_size_in_use,
            "expectedFree": self.expected_free,
            "moveLeaderTo": f"{self.move_leader_to:x}" if self.move_leader_to else None,
        }


@dataclass(frozen=True)
class DefragResult:
    step: DefragStep
    before: int
    after: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.step.as_dict(),
            "dbSizeBefore": self.before,
            "dbSizeAfter": self.after,
            "freed": max(0, self.before - self.after),
            "seconds": round(self.seconds, 2),
        }


def plan_defrag(
    view: ClusterView, only: list[str] | None = None, *, move_leader: bool = False
) -> list[DefragStep]:
    """The order: learners, followers (by name), the leader last. ``only`` names the members to
    do (names or hex IDs; default all). Refused: a member that does not answer (its turn
    would find it so), and any step the others could not hold quorum through."""
    wanted = set(only or [])
    known = {m.label for m in view.members} | {f"{m.id:x}" for m in view.members}
    unknown = sorted(wanted - known)
    if unknown:
        raise EtcdError(
            f"no etcd member {unknown[0]!r}; members: "
            + ", ".join(sorted(m.label for m in view.members))
        )
    chosen = [m for m in view.members if not wanted or {m.label, f"{m.id:x}"} & wanted]
    learners = [m for m in chosen if m.is_learner]
    if learners and wanted:
        raise EtcdError(
            f"etcd member {learners[0].label} is a learner: etcd defragments no learner "
            "(it answers only Status); promote it first"
        )
    chosen = [m for m in chosen if not m.is_learner]
    down = [m for m in chosen if m.status is None or m.endpoint is None]
    if down:
        m = down[0]
        raise EtcdError(
            f"etcd member {m.label} does not answer ({m.error}); bring it back or leave it "
            "out (name the members to defragment)"
        )
    serving = [m for m in view.voting if m.has_leader]
    for m in chosen:
        others = len([v for v in serving if v.id != m.id])
        # A lone member has no one to serve meanwhile: its cluster pauses for the
        # defragmentation (etcdctl defrag's only way too), which is allowed.
        if not m.is_learner and len(view.voting) > 1 and others < view.quorum:
            raise EtcdError(
                f"defragmenting {m.label} would leave {others} of {len(view.voting)} voting "
                f"members serving, below the quorum of {view.quorum}; bring the others back first"
            )
    lead = view.leader

    def role(m: MemberView) -> str:
        return "leader" if m.id == lead else "follower"

    order = {"follower": 1, "leader": 2}
    chosen.sort(key=lambda m: (order[role(m)], m.label))
    steps: list[DefragStep] = []
    for m in chosen:
        st = m.status
        assert st is not None and m.endpoint is not None
        to = 0
        if move_leader and role(m) == "leader":
            done = [s.member_id for s in steps if s.role == "follower"]
            candidates = done or [v.id for v in serving if v.id != m.id]
            to = candidates[0] if candidates else 0
        steps.append(
            DefragStep(m.id, m.label, m.endpoint.url, role(m), st.db_size, st.db_size_in_use, to)
        )
    return steps


async def _serving(view: ClusterView, member_id: int, timeout: float) -> MemberStatus:
    """Wait until the member answers and has a leader again."""
    m = view.member(member_id)
    assert m is not None and m.endpoint is not None
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            st = await member_status(m.endpoint)
            if st.leader:
                return st
            last = "no leader"
        except EtcdError as e:
            last = str(e)
        if time.monotonic() > deadline:
            raise EtcdError(
                f"etcd member {m.label} is not serving {timeout:.0f}s after its "
                f"defragmentation ({last}); the rest was not touched"
            )
        await asyncio.sleep(0.5)


async def run_defrag(
    targets: list[Target],
    steps: list[DefragStep],
    *,
    dial_advertised: bool = True,
    progress: Progress | None = None,
    back_timeout: float = BACK_TIMEOUT,
) -> list[DefragResult]:
    say = progress or (lambda _m: None)
    results = []
    todo = list(steps)
    while todo:
        # the cluster as it is now, not as planned: a member lost meanwhile stops the run
        view = await survey(targets, dial_advertised=dial_advertised)
        step = todo[0]
        if view.leader == step.member_id and len(todo) > 1 and not step.move_leader_to:
            # leadership moved to this member during the run: it goes last, as planned for
            # the leader
            todo.append(todo.pop(0))
            step = todo[0]
        todo.pop(0)
        plan_defrag(view, [f"{step.member_id:x}"])  # the quorum guard, checked again
        m = view.member(step.member_id)
        if m is None or m.endpoint is None or m.status is None:
            raise EtcdError(f"etcd member {step.name} is gone from the cluster; stopped")
        if step.move_leader_to and view.leader == step.member_id:
            to = view.member(step.move_leader_to)
            say(f"moving leadership from {step.name} to {to.name if to else step.move_leader_to}")
            await move_leader(m.endpoint, step.move_leader_to)
            await _new_leader(targets, step.member_id, dial_advertised)
        say(f"defragmenting {step.name} ({step.role}, {m.status.db_size / (1 << 20):.1f} MiB)")
        t0 = time.monotonic()
        await defragment(m.endpoint)
        st = await _serving(view, step.member_id, back_timeout)
        results.append(DefragResult(step, m.status.db_size, st.db_size, time.monotonic() - t0))
    return results


async def _new_leader(targets: list[Target], old: int, dial_advertised: bool) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = await survey(targets, dial_advertised=dial_advertised)
        if view.leader and view.leader != old:
            return
        await asyncio.sleep(0.3)
    raise EtcdError("leadership did not move within 30s; nothing was defragmented on the leader")


@dataclass(frozen=True)
class CompactPlan:
    revision: int  # compact up to (excluding) this revision
    current: int


def plan_compact(view: ClusterView, keep: int = 0) -> CompactPlan:
    """Compact to the current revision minus ``keep`` (etcd keeps the revision compacted to)."""
    if keep < 0:
        from ..errors import UsageError

        raise UsageError(f"--keep must be 0 or more, not {keep}")
    up = [m.status for m in view.voting if m.status is not None and m.status.leader]
    if not up:
        raise EtcdError("no etcd member is serving; nothing can be compacted")
    current = max(st.revision for st in up)
    revision = current - keep
    if revision < 1:
        raise EtcdError(f"--keep {keep} keeps every revision (the current one is {current})")
    return CompactPlan(revision, current)


async def run_compact(view: ClusterView, plan: CompactPlan) -> None:
    m = view.serving_voter()
    if m is None or m.endpoint is None:
        raise EtcdError("no voting etcd member is serving; nothing can be compacted")
    try:
        await compact(m.endpoint, plan.revision)
    except EtcdError as e:
        if "has been compacted" in str(e):
            raise EtcdError(
                f"etcd is already compacted past revision {plan.revision}; nothing to do"
            ) from None
        raise
