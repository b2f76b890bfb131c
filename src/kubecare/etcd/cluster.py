"""One look at a whole etcd cluster: its member list joined with each member's own status.

etcdctl shows the two separately (``member list`` and ``endpoint status --cluster``) and drops a
member that does not answer. Here every member of the list is a row: answered, or with the
error that says why not. Endpoints come from the caller (a kubeadm manifest per member, or
--endpoints); a member no endpoint covers is dialled at its advertised client URL with the same
certificates, as ``etcdctl --cluster`` does, unless the caller says those URLs are not
reachable from here (a sandbox's members, seen from the host).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import EtcdError
from .grpc import MemberStatus, member_list, member_status
from .maintenance import Alarm, KVHash, alarms, hash_kv
from .members import Endpoint


@dataclass(frozen=True)
class Target:
    """An endpoint to ask, and the member name it is known to be (from a manifest), if any."""

    endpoint: Endpoint | None
    name: str | None = None
    missing: str | None = None  # why there is no endpoint for this member (endpoint None)


@dataclass(frozen=True)
class MemberView:
    id: int
    name: str  # "" for a member added but never started
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool
    endpoint: Endpoint | None = None
    status: MemberStatus | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        """Its name, or its hex ID while it has none (added but never started)."""
        return self.name or f"{self.id:x}"

    @property
    def answered(self) -> bool:
        return self.status is not None

    @property
    def has_leader(self) -> bool:
        return self.status is not None and self.status.leader != 0

    def as_dict(self) -> dict[str, Any]:
        st = self.status
        out: dict[str, Any] = {
            "id": f"{self.id:x}",
            "name": self.name,
            "peerURLs": list(self.peer_urls),
            "clientURLs": list(self.client_urls),
            "isLearner": self.is_learner,
            "endpoint": self.endpoint.url if self.endpoint else None,
            "healthy": self.has_leader,
        }
        if st is not None:
            out.update(
                {
                    "isLeader": st.leader == self.id,
                    "version": st.version,
                    "dbSize": st.db_size,
                    "dbSizeInUse": st.db_size_in_use,
                    "dbSizeQuota": st.db_size_quota,
                    "revision": st.revision,
                    "raftIndex": st.raft_index,
                    "raftAppliedIndex": st.raft_applied_index,
                    "raftTerm": st.raft_term,
                    "errors": st.errors,
                }
            )
        else:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class ClusterView:
    cluster_id: int
    members: tuple[MemberView, ...]
    alarms: tuple[Alarm, ...] = field(default=())
    alarms_error: str | None = None  # why the alarms could not be read (None: they were)

    @property
    def voting(self) -> list[MemberView]:
        return [m for m in self.members if not m.is_learner]

    @property
    def quorum(self) -> int:
        return len(self.voting) // 2 + 1

    @property
    def leader(self) -> int:
        """The leader most answering members name (0: none)."""
        seen = Counter(m.status.leader for m in self.members if m.status and m.status.leader)
        return seen.most_common(1)[0][0] if seen else 0

    def serving_voter(self) -> MemberView | None:
        """A voting member with a leader to send requests to, the leader first: etcd answers
        only Status and serializable reads from a learner (v3rpc isRPCSupportedForLearner)."""
        ok = [m for m in self.voting if m.has_leader and m.endpoint is not None]
        return next((m for m in ok if m.id == self.leader), ok[0] if ok else None)

    def member(self, member_id: int) -> MemberView | None:
        return next((m for m in self.members if m.id == member_id), None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clusterID": f"{self.cluster_id:x}",
            "leader": f"{self.leader:x}" if self.leader else None,
            "members": [m.as_dict() for m in self.members],
            "alarms": [a.as_dict() for a in self.alarms],
        }


async def survey(targets: list[Target], *, dial_advertised: bool = True) -> ClusterView:
    """The member list (asked of the first member that answers), each member's status and the
    cluster's alarms. No member answering is an :class:`EtcdError` naming each failure."""
    failed: list[tuple[Target, str]] = [(t, t.missing or "") for t in targets if not t.endpoint]
    asking = [t for t in targets if t.endpoint is not None]
    if not asking:
        raise EtcdError(
            "no etcd endpoint to ask: " + "; ".join(f"{t.name}: {why}" for t, why in failed)
        )
    first = await asyncio.gather(
        *(member_status(t.endpoint) for t in asking if t.endpoint), return_exceptions=True
    )
    by_id: dict[int, tuple[Endpoint, MemberStatus]] = {}
    for t, res in zip(asking, first, strict=True):
        assert t.endpoint is not None
        if isinstance(res, MemberStatus):
            by_id.setdefault(res.member_id, (t.endpoint, res))
        elif isinstance(res, EtcdError | OSError):
            failed.append((t, str(res)))
        elif isinstance(res, BaseException):
            raise res
    if not by_id:
        raise EtcdError("no etcd member answered: " + " | ".join(why for _, why in failed))
    # the member list and the alarms from a voter with a leader when there is one: a learner
    # refuses both, and the alarms go through raft (no leader: no answer)
    ranked = sorted(by_id.values(), key=lambda r: (r[1].is_learner, r[1].leader == 0))
    asked_ep, asked = ranked[0]
    listed = await member_list(asked_ep)
    raised: list[Alarm] = []
    alarms_error = None
    try:
        raised = await alarms(asked_ep)
    except EtcdError as e:
        alarms_error = str(e)
    views: list[MemberView] = []
    for m in sorted(listed, key=lambda m: (m.name == "", m.name, m.id)):
        view = MemberView(m.id, m.name, m.peer_urls, m.client_urls, m.is_learner)
        if m.id in by_id:
            ep, st = by_id[m.id]
            if st.cluster_id != asked.cluster_id:
                views.append(replace(view, endpoint=ep, error=_foreign(st)))
            else:
                views.append(replace(view, endpoint=ep, status=st))
            continue
        # the target that should have been this member: its manifest's name, or its client URL
        mine = next(
            (
                (t, why)
                for t, why in failed
                if (t.name is not None and t.name == m.name)
                or (t.endpoint is not None and t.endpoint.url in m.client_urls)
            ),
            None,
        )
        if mine is not None:
            views.append(replace(view, endpoint=mine[0].endpoint, error=mine[1] or "no answer"))
        elif not m.name:
            views.append(replace(view, error="added but never started (no name yet)"))
        elif dial_advertised and m.client_urls:
            views.append(view)  # asked below, at its advertised URL
        else:
            views.append(replace(view, error="no endpoint for it here (give its client URL)"))
    todo = [
        (i, replace(asked_ep, url=v.client_urls[0]))
        for i, v in enumerate(views)
        if v.status is None and v.error is None
    ]
    more = await asyncio.gather(*(member_status(ep) for _, ep in todo), return_exceptions=True)
    for (i, ep), res in zip(todo, more, strict=True):
        if isinstance(res, MemberStatus):
            # what answers at a member's URL must be that member, of this cluster
            if res.member_id != views[i].id or res.cluster_id != asked.cluster_id:
                views[i] = replace(views[i], endpoint=ep, error=_foreign(res))
            else:
                views[i] = replace(views[i], endpoint=ep, status=res)
        elif isinstance(res, EtcdError | OSError):
            views[i] = replace(views[i], endpoint=ep, error=str(res))
        elif isinstance(res, BaseException):
            raise res
    # statuses from members the list does not have (a removed member still running, another
    # cluster's member at a given endpoint) count for nothing, and are said
    strangers = [(ep, st) for i, (ep, st) in by_id.items() if i not in {v.id for v in views}]
    for ep, st in strangers:
        views.append(
            MemberView(
                st.member_id, "", (), (), st.is_learner, ep, None, _foreign(st, listed=False)
            )
        )
    return ClusterView(asked.cluster_id, tuple(views), tuple(raised), alarms_error)


def _foreign(st: MemberStatus, *, listed: bool = True) -> str:
    where = "not in this cluster's member list" if not listed else "another member"
    return f"answers as member {st.member_id:x} of cluster {st.cluster_id:x} ({where})"


async def hash_all(view: ClusterView) -> tuple[KVHash | None, dict[int, KVHash | None]]:
    """HashKV of every answering member at one revision (the lowest any of them is at, so each
    has it): the leader's answer (the reference, as in etcd's own check) and the others'."""
    up = [
        m for m in view.voting if m.status is not None and m.endpoint is not None
    ]  # learners answer no HashKV
    if not up:
        return None, {}
    # etcd compares at the leader's revision; a member behind it answers ErrFutureRev and is
    # skipped, as in etcd's own check
    lead = view.member(view.leader)
    revision = (
        lead.status.revision
        if lead is not None and lead.status is not None
        else max(m.status.revision for m in up if m.status is not None)
    )
    got = await asyncio.gather(
        *(hash_kv(m.endpoint, revision) for m in up if m.endpoint is not None),
        return_exceptions=True,
    )
    for g in got:
        if isinstance(g, BaseException) and not isinstance(g, EtcdError):
            raise g
    # a member that does not answer still counts, as in etcd's check: it is in the quorum's
    # denominator
    answers: dict[int, KVHash | None] = {m.id: None for m in view.members if not m.is_learner}
    answers.update(
        {m.id: (g if isinstance(g, KVHash) else None) for m, g in zip(up, got, strict=True)}
    )
    ref_id = view.leader if answers.get(view.leader) is not None else None
    if ref_id is None:
        ref_id = next((i for i, h in answers.items() if h is not None), None)
    if ref_id is None:
        return None, answers
    reference = answers.pop(ref_id)
    return reference, answers
