"""etcd's maintenance RPCs beyond status and snapshots: alarms, defragmentation, HashKV, leader
moves, compaction, member removal and the one write a recovery uses to prove writes work.

Each call is one gRPC request to one member (``grpc.describe`` turns failures into one line
naming the endpoint). The semantics are etcd's own (server/etcdserver/api/v3rpc): Defragment
blocks that member's reads and writes until it is done; Compact with ``physical`` returns only
once the compaction has been applied on the member that answered; MoveLeader must go to the
leader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .grpc import STATUS_TIMEOUT, channel, describe
from .members import Endpoint

#: etcd's AlarmType enum (api/etcdserverpb/rpc.proto)
ALARM_NAMES = {0: "NONE", 1: "NOSPACE", 2: "CORRUPT"}
ALARM_TYPES = {v: k for k, v in ALARM_NAMES.items()}

#: A defragmentation rewrites the whole database: etcdctl's default command timeout (5 s) is
#: far too short for a big member; etcd itself has no limit.
DEFRAG_TIMEOUT = 600.0

#: The key a recovery writes (and deletes) to prove the cluster takes writes again: outside
#: the apiserver's /registry prefix, so no Kubernetes object is ever touched.
WRITE_CHECK_KEY = b"/kubecare/write-check"


@dataclass(frozen=True)
class Alarm:
    member_id: int
    alarm: str  # NOSPACE, CORRUPT

    def as_dict(self) -> dict[str, Any]:
        return {"memberID": f"{self.member_id:x}", "alarm": self.alarm}


@dataclass(frozen=True)
class KVHash:
    """A member's HashKV answer: the hash of its keys up to ``hash_revision``."""

    member_id: int
    hash: int
    compact_revision: int
    hash_revision: int


async def _call(ep: Endpoint, service: str, method: str, request: Any, timeout: float) -> Any:
    from ._proto import maintenance_pb2_grpc as rpc

    try:
        async with channel(ep) as ch:
            stub = getattr(rpc, f"{service}Stub")(ch)
            return await getattr(stub, method)(request, timeout=timeout)
    except Exception as e:
        raise describe(ep, e) from None


async def alarms(ep: Endpoint, timeout: float = STATUS_TIMEOUT) -> list[Alarm]:
    """Every alarm raised in the cluster (any member answers for all: alarms are replicated)."""
    from ._proto import maintenance_pb2 as pb

    req = pb.AlarmRequest(action=pb.AlarmRequest.GET, memberID=0, alarm=pb.NONE)
    resp = await _call(ep, "Maintenance", "Alarm", req, timeout)
    return [Alarm(a.memberID, ALARM_NAMES.get(a.alarm, str(a.alarm))) for a in resp.alarms]


async def disarm(ep: Endpoint, alarm: Alarm, timeout: float = STATUS_TIMEOUT) -> None:
    """Deactivate one alarm (etcdctl alarm disarm deactivates each listed alarm this way)."""
    from ._proto import maintenance_pb2 as pb

    req = pb.AlarmRequest(
        action=pb.AlarmRequest.DEACTIVATE,
        memberID=alarm.member_id,
        # an alarm type newer than these stubs is listed by its number: disarm it by that
        alarm=ALARM_TYPES.get(alarm.alarm, int(alarm.alarm) if alarm.alarm.isdigit() else 0),  # type: ignore[arg-type]
    )
    await _call(ep, "Maintenance", "Alarm", req, timeout)


async def defragment(ep: Endpoint, timeout: float = DEFRAG_TIMEOUT) -> None:
    from ..errors import EtcdError
    from ._proto import maintenance_pb2 as pb

    try:
        await _call(ep, "Maintenance", "Defragment", pb.DefragmentRequest(), timeout)
    except EtcdError as e:
        if "did not answer in time" not in str(e):
            raise
        # the call is cut, not the work: etcd goes on rewriting the file
        raise EtcdError(
            f"etcd at {ep.url} did not finish defragmenting within {timeout:.0f}s; it may still "
            "be at it (it serves nothing until done): wait until `kubecare etcd members` shows "
            "it healthy before defragmenting another member"
        ) from None


async def hash_kv(ep: Endpoint, revision: int, timeout: float = 30.0) -> KVHash:
    from ._proto import maintenance_pb2 as pb

    resp = await _call(ep, "Maintenance", "HashKV", pb.HashKVRequest(revision=revision), timeout)
    return KVHash(resp.header.member_id, resp.hash, resp.compact_revision, resp.hash_revision)


async def move_leader(ep: Endpoint, target_id: int, timeout: float = 30.0) -> None:
    from ._proto import maintenance_pb2 as pb

    req = pb.MoveLeaderRequest(targetID=target_id)
    await _call(ep, "Maintenance", "MoveLeader", req, timeout)


async def compact(ep: Endpoint, revision: int, timeout: float = 120.0) -> None:
    """Compact the key space up to ``revision``, waiting until it is applied (physical)."""
    from ._proto import maintenance_pb2 as pb

    req = pb.CompactionRequest(revision=revision, physical=True)
    await _call(ep, "KV", "Compact", req, timeout)


async def member_remove(ep: Endpoint, member_id: int, timeout: float = STATUS_TIMEOUT) -> None:
    from ._proto import maintenance_pb2 as pb

    req = pb.MemberRemoveRequest(ID=member_id)
    await _call(ep, "Cluster", "MemberRemove", req, timeout)


async def write_check(ep: Endpoint, timeout: float = STATUS_TIMEOUT) -> int:
    """Put and delete :data:`WRITE_CHECK_KEY`: the revision the put got (a NOSPACE cluster
    refuses the put with ``etcdserver: mvcc: database space exceeded``)."""
    from ._proto import maintenance_pb2 as pb

    put = await _call(ep, "KV", "Put", pb.PutRequest(key=WRITE_CHECK_KEY, value=b"ok"), timeout)
    await _call(ep, "KV", "DeleteRange", pb.DeleteRangeRequest(key=WRITE_CHECK_KEY), timeout)
    return int(put.header.revision)


#: etcd's bounds on --quota-backend-bytes (server/storage/quota.go): beyond MaxQuotaBytes etcd
#: only warns, but its docs call 8 GiB the most it supports; below a few MiB a fresh kubeadm
#: cluster's own objects do not fit.
MAX_QUOTA = 8 << 30
MIN_QUOTA = 16 << 20


def check_quota(quota: int, flag: str = "--etcd-quota") -> int:
    from ..errors import UsageError

    if quota > MAX_QUOTA:
        raise UsageError(
            f"{flag} {quota} is more than etcd supports (8 GiB, etcd's MaxQuotaBytes); "
            "give at most 8Gi"
        )
    if quota < MIN_QUOTA:
        raise UsageError(
            f"{flag} {quota} is too small for a cluster's own objects; give at least 16Mi"
        )
    return quota
