"""Everything ``etcd restore`` decides before it changes anything: the snapshot is readable and
whole, the members come from the manifests, the plan is made, and the checks that keep a
restore whole pass (each member here once, every member etcd has covered, new data dirs empty).

:func:`prepare` reads files only; :func:`check` asks etcd (or reads the old data dirs) who
its members are. :mod:`.restore` then runs the plan. The CLI only parses and renders: the
order — a per-node plan may be shown before the checks, a whole-cluster plan only after
them — is the caller's, told by :attr:`Prepared.per_node`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import SnapshotError, UsageError
from . import membership
from .members import Member, Reach, Trees, as_written, on_the_node, read_members
from .restore import QUORUM_TIMEOUT, RestoreFailed, RestorePlan, plan_restore, probe_url

Say = Callable[[str], None]


@dataclass(frozen=True)
class RestoreRequest:
    """What the user asked for, as parameters (the CLI's flags, parsed)."""

    snapshot: Path  # as named (shown in messages)
    readable: Path  # the plain bbolt file (a zstd file decompressed beside it)
    dirs: list[Path]  # the manifests dirs of the members restored here
    etcdutl: Callable[[list[Member]], Path]  # chosen once the members (their images) are known
    stamp: str
    trees: Trees = on_the_node
    reach: Reach = as_written
    data_dir: Path | None = None
    skip_hash_check: bool = False
    restart_controllers: bool = True
    bump: int = 0
    cluster: str | None = None  # --initial-cluster: a per-node restore of the whole cluster
    token: str | None = None
    quorum_timeout: float = QUORUM_TIMEOUT


@dataclass(frozen=True)
class Prepared:
    plan: RestorePlan
    members: list[Member]
    cluster: list[membership.Known] | None  # the whole cluster of a per-node restore

    @property
    def per_node(self) -> bool:
        """A per-node plan restores this node into the whole cluster: safe to show before the
        checks (it is what a person restoring node by node follows). A whole-cluster plan is
        shown only once it is known to cover every member: shown first, a refused one would
        be a recipe for the split the refusal prevents."""
        return self.cluster is not None


def prepare(req: RestoreRequest, say: Say) -> Prepared:
    """Check the snapshot and make the plan (files only; nothing is changed)."""
    from .snapshot import status

    cluster = membership.parse_initial_cluster(req.cluster, single=True) if req.cluster else None
    if cluster is not None and not req.token:
        raise UsageError(
            "--initial-cluster restores this node's members only: give every node's run the "
            "same --initial-cluster-token TOKEN"
        )
    say(f"checking {req.snapshot}")
    st = status(req.readable)  # structure and SHA-256: a bad file stops here, before anything
    if st.sha256 == "absent" and not req.skip_hash_check:
        raise SnapshotError(
            f"{req.snapshot} has no SHA-256 trailer (not saved by etcdctl or kubecare); add "
            "--skip-hash-check to restore it anyway"
        )
    members = read_members(req.dirs, req.reach, req.trees)
    plan = plan_restore(
        req.readable,
        st.revision,
        members,
        etcdutl=req.etcdutl(members),
        stamp=req.stamp,
        data_dir=req.data_dir,
        skip_hash_check=req.skip_hash_check,
        restart_controllers=req.restart_controllers,
        bump=req.bump,
        cluster=[(k.name, k.peer_urls[0]) for k in cluster] if cluster else None,
        token=req.token,
        reach=req.reach,
        snapshot_digest=st.sha256 if st.sha256 != "absent" else f"revision-{st.revision}",
        quorum_timeout=req.quorum_timeout,
    )
    return Prepared(plan, members, cluster)


async def check(prepared: Prepared, say: Say) -> None:
    """Refuse a restore that would not be whole: a member named twice (manifests copied from
    other machines), a member etcd has left out, a new data dir already in use."""
    members, cluster = prepared.members, prepared.cluster
    try:
        probes = {m.name: probe_url(m.manifest, prepared.plan.reach) for m in members}
    except RestoreFailed:
        probes = {}  # no probe to compare; the run itself stops on it, before any change
    membership.check_distinct(members, probes)  # each member here only once
    # Every member etcd has must be restored.
    known = await membership.known_members(members, say, cluster_given=cluster is not None)
    if cluster is None:
        membership.check_membership(members, known)
    else:
        membership.check_cluster(members, cluster, known)
    for m in prepared.plan.members:
        if m.new_data_dir.exists() and any(m.new_data_dir.iterdir()):
            raise UsageError(f"{m.new_data_dir} exists and is not empty; choose another --data-dir")
