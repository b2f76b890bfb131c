"""What a stopped etcd member's data dir says about its cluster: the membership records.

etcd 3.5+ keeps the cluster's membership in its backend (``member/snap/db``), applied from raft
like any write: bucket ``members`` holds one JSON record per member, keyed by its ID in hex
(``membership.Member``: ``id``, ``peerURLs``, ``name``, ``clientURLs``, ``isLearner``); bucket
``members_removed`` the IDs removed since (server/storage/schema/membership.go,
``readMembersFromBackend``). When etcd is down — the usual reason to restore — these records,
not the manifest, are the cluster: kubeadm writes ``--initial-cluster=<self>`` on the first
control plane, so its manifest alone names one member of three.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import EtcdError, SnapshotError
from .bbolt import open_bolt


@dataclass(frozen=True)
class RecordedMember:
    id: str  # hex, as etcdctl prints it
    name: str  # empty for a member added but never started
    peer_urls: tuple[str, ...]
    learner: bool = False


def backend_path(data_dir: Path) -> Path:
    return data_dir / "member" / "snap" / "db"


def recorded_members(data_dir: Path) -> list[RecordedMember] | None:
    """The members the data dir's backend records (removed ones left out), sorted by ID; None
    when the dir holds no backend (a member that never started, or not an etcd data dir)."""
    db_path = backend_path(data_dir)
    if not db_path.is_file():
        return None
    try:
        with open_bolt(db_path, snapshot=False) as db:
            members = db.bucket(b"members")
            removed = db.bucket(b"members_removed")
            records = list(db.items(members)) if members is not None else []
            gone = {k.decode() for k, _, _ in db.items(removed)} if removed is not None else set()
    except SnapshotError as e:
        raise EtcdError(f"cannot read the membership of {data_dir}: {e}") from None
    out = []
    for key, value, _ in records:
        ident = key.decode(errors="replace")
        if ident in gone:
            continue
        try:
            doc = json.loads(value)
        except ValueError:
            raise EtcdError(
                f"{db_path}: member record {ident} is not JSON; the data dir is damaged"
            ) from None
        out.append(
            RecordedMember(
                id=ident,
                name=str(doc.get("name") or ""),
                peer_urls=tuple(str(u) for u in doc.get("peerURLs") or ()),
                learner=bool(doc.get("isLearner")),
            )
        )
    return sorted(out, key=lambda m: m.id)
