"""`kubecare etcd health`: a go/no-go for an etcd cluster, each verdict with the number that
decided it. Pure: a :class:`ClusterView` (two of them, taken a moment apart, for the leader's
stability) and the members' HashKV answers in, :class:`Check` out.

Thresholds, and where they come from:

- quorum: a raft majority of the voting members (learners do not vote);
- space: etcd raises NOSPACE when the backend would outgrow ``--quota-backend-bytes`` (its
  Status reports the quota since 3.6); 80% is the warning the etcd docs' space-quota section
  advises alerting on;
- applied lag: a member refuses requests once its own committed - applied index exceeds 5000
  entries (``maxGapBetweenApplyAndCommitIndex``, server/etcdserver/v3_server.go);
- hashes: etcd's own corruption check (server/etcdserver/corrupt.go, checkPeerHashes): voting
  members are compared at the leader's revision (one behind it is skipped), a member whose compact revision differs from the reference's is
  skipped (not comparable), and different hashes with the same compact revision are corruption.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .cluster import ClusterView
from .maintenance import KVHash

Level = Literal["ok", "warn", "fail"]

SPACE_WARN = 0.8
APPLY_GAP_LIMIT = 5000  # etcd's maxGapBetweenApplyAndCommitIndex
APPLY_GAP_WARN = 1000
REVISION_LAG_WARN = 1000
FRAGMENTED_SHARE = 0.5
FRAGMENTED_BYTES = 32 << 20  # under this, a defragmentation frees too little to advise


@dataclass(frozen=True)
class Check:
    name: str
    level: Level
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.name, "level": self.level, "detail": self.detail}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _label(view: ClusterView, member_id: int) -> str:
    m = view.member(member_id)
    return m.name if m is not None and m.name else f"{member_id:x}"


def quorum(view: ClusterView) -> Check:
    voting = view.voting
    up = [m for m in voting if m.has_leader]
    need = view.quorum
    detail = f"{len(up)} of {len(voting)} voting members serve; quorum is {need}"
    down = [m.name or f"{m.id:x}" for m in voting if not m.has_leader]
    if down:
        detail += f" (not serving: {', '.join(down)})"
    if len(up) < need:
        return Check("quorum", "fail", detail)
    if len(up) == need and len(voting) > 1:
        return Check("quorum", "warn", detail + "; one more failure stops the cluster")
    return Check("quorum", "ok", detail)


def leader(view: ClusterView, before: ClusterView | None = None) -> Check:
    named = {m.status.leader for m in view.members if m.status is not None}
    if not named or named == {0}:
        return Check("leader", "fail", "no member has a leader")
    if len(named - {0}) > 1:
        seen = ", ".join(sorted(_label(view, i) for i in named - {0}))
        return Check("leader", "fail", f"members name different leaders: {seen}")
    lead = view.leader
    terms = sorted({m.status.raft_term for m in view.members if m.status is not None})
    detail = f"{_label(view, lead)} leads at raft term {terms[-1]}"
    if before is not None and before.leader and before.leader != lead:
        return Check(
            "leader",
            "warn",
            f"the leader changed during the check ({_label(before, before.leader)} -> "
            f"{_label(view, lead)}, term {terms[-1]})",
        )
    if before is not None:
        old = max((m.status.raft_term for m in before.members if m.status), default=0)
        if old and terms[-1] > old:
            return Check("leader", "warn", detail + f"; the term moved from {old} during the check")
    return Check("leader", "ok", detail)


def alarms(view: ClusterView) -> Check:
    if view.alarms_error is not None:
        return Check("alarms", "fail", f"unknown: {view.alarms_error}")
    if not view.alarms:
        return Check("alarms", "ok", "none")
    said = ", ".join(f"{a.alarm} on {_label(view, a.member_id)}" for a in view.alarms)
    fix = (
        "; `kubecare etcd alarm recover` frees space and disarms it"
        if any(a.alarm == "NOSPACE" for a in view.alarms)
        else ""
    )
    return Check("alarms", "fail", said + fix)


def space(view: ClusterView) -> Check:
    rows = [(m, m.status) for m in view.members if m.status is not None]
    known = [(m, st) for m, st in rows if st.db_size_quota > 0]
    if not known:
        if any(st.db_size_quota < 0 for _, st in rows):
            return Check("space", "warn", "no quota (--quota-backend-bytes is negative)")
        return Check("space", "warn", "the quota is unknown (etcd before 3.6 does not report it)")
    m, st = max(known, key=lambda r: r[1].db_size / r[1].db_size_quota)
    share = st.db_size / st.db_size_quota
    detail = (
        f"largest database {_mib(st.db_size)} of the {_mib(st.db_size_quota)} quota "
        f"({share:.0%}, on {m.name or f'{m.id:x}'})"
    )
    if share >= 1:
        return Check("space", "fail", detail)
    if share >= SPACE_WARN:
        return Check("space", "warn", detail + "; compact and defragment before NOSPACE")
    return Check("space", "ok", detail)


def fragmentation(view: ClusterView) -> Check:
    rows = [(m, m.status) for m in view.members if m.status is not None and m.status.db_size]
    if not rows:
        return Check("fragmentation", "warn", "no member answered")
    m, st = max(rows, key=lambda r: r[1].db_size - r[1].db_size_in_use)
    free = st.db_size - st.db_size_in_use
    detail = (
        f"{_mib(free)} of {_mib(st.db_size)} free inside {m.name or f'{m.id:x}'}'s database "
        f"({free / st.db_size:.0%})"
    )
    if free >= FRAGMENTED_BYTES and free / st.db_size >= FRAGMENTED_SHARE:
        return Check("fragmentation", "warn", detail + "; `kubecare etcd defrag` gives it back")
    return Check("fragmentation", "ok", detail)


def lag(view: ClusterView) -> Check:
    rows = [(m, m.status) for m in view.members if m.status is not None]
    if not rows:
        return Check("lag", "fail", "no member answered")
    revs = [st.revision for _, st in rows]
    # etcd's limit is per member: its own committed index against its own applied one
    gap_m, gap_st = max(rows, key=lambda r: r[1].raft_index - r[1].raft_applied_index)
    gap = max(0, gap_st.raft_index - gap_st.raft_applied_index)
    detail = (
        f"revisions {min(revs)}..{max(revs)} (lag {max(revs) - min(revs)}); "
        f"applied lag {gap} entries ({gap_m.name or f'{gap_m.id:x}'})"
    )
    if gap > APPLY_GAP_LIMIT:
        return Check("lag", "fail", detail + f"; etcd refuses requests past {APPLY_GAP_LIMIT}")
    if gap > APPLY_GAP_WARN or max(revs) - min(revs) > REVISION_LAG_WARN:
        return Check("lag", "warn", detail)
    return Check("lag", "ok", detail)


@dataclass(frozen=True)
class HashVerdict:
    consistent: bool
    checked: int  # members compared with the reference (the reference not counted)
    skipped: dict[int, str]  # member -> why it was not compared
    groups: dict[int, list[int]]  # hash -> members with it
    corrupt: list[int]  # the members outside the majority; [0]: no majority, all suspect


def compare_hashes(reference: KVHash, peers: list[KVHash | None], ids: list[int]) -> HashVerdict:
    """etcd's checkPeerHashes (server/etcdserver/corrupt.go): group members by hash, skipping a
    peer that did not answer or whose compact revision differs from the reference's; on a
    mismatch, the members outside a group of a quorum (counted over every member, answering or
    not) are the corrupt ones, and with no such group the whole cluster (member 0) is.
    ``ids`` names each peer (same order)."""
    groups: dict[int, list[int]] = {reference.hash: [reference.member_id]}
    skipped: dict[int, str] = {}
    checked = 0
    for member_id, peer in zip(ids, peers, strict=True):
        if peer is None:
            skipped[member_id] = "no response"
            continue
        if peer.compact_revision != reference.compact_revision:
            skipped[member_id] = (
                f"the peer's CompactRevision {peer.compact_revision} doesn't match "
                f"the reference's CompactRevision {reference.compact_revision}"
            )
            continue
        checked += 1
        groups.setdefault(peer.hash, []).append(member_id)
    if len(groups) == 1:
        return HashVerdict(True, checked, skipped, groups, [])
    quorum = (len(peers) + 1) // 2 + 1
    majority = next((h for h, members in groups.items() if len(members) >= quorum), None)
    if majority is None:
        return HashVerdict(False, checked, skipped, groups, [0])
    corrupt = sorted(i for h, members in groups.items() if h != majority for i in members)
    return HashVerdict(False, checked, skipped, groups, corrupt)


def hashes(view: ClusterView, reference: KVHash | None, peers: dict[int, KVHash | None]) -> Check:
    if reference is None:
        return Check("hashes", "warn", "not compared: no member answered HashKV")
    ids = list(peers)
    verdict = compare_hashes(reference, [peers[i] for i in ids], ids)
    at = f"at revision {reference.hash_revision}"
    if not verdict.consistent:
        if verdict.corrupt == [0]:
            return Check(
                "hashes",
                "fail",
                f"the key-value hashes differ {at} and no quorum of members agrees: "
                "which data is right cannot be told",
            )
        odd = ", ".join(_label(view, i) for i in verdict.corrupt)
        return Check("hashes", "fail", f"the key-value hashes differ {at}: {odd} disagree(s)")
    detail = f"{verdict.checked + 1} members agree {at}"
    if verdict.skipped:
        names = ", ".join(f"{_label(view, i)}: {why}" for i, why in verdict.skipped.items())
        return Check("hashes", "warn", detail + f"; not compared: {names}")
    return Check("hashes", "ok", detail)


def assess(
    view: ClusterView,
    before: ClusterView | None = None,
    reference: KVHash | None = None,
    peers: dict[int, KVHash | None] | None = None,
) -> list[Check]:
    return [
        quorum(view),
        leader(view, before),
        alarms(view),
        space(view),
        fragmentation(view),
        lag(view),
        hashes(view, reference, peers or {}),
    ]


def go(checks: list[Check]) -> bool:
    return all(c.level != "fail" for c in checks)
