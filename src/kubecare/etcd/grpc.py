"""etcd's Maintenance API over gRPC (grpc.aio): Status and the Snapshot stream.

The stubs are generated from etcd's own rpc.proto (scripts/gen_etcd_proto.py). Errors become
:class:`EtcdError` naming the endpoint and the likely fix; grpc is imported only here, so only
the etcd commands pay for it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EtcdError
from .members import Endpoint

if TYPE_CHECKING:
    import grpc.aio

STATUS_TIMEOUT = 5.0


@dataclass(frozen=True)
class MemberStatus:
    """One member's answer to Maintenance.Status."""

    endpoint: str
    member_id: int
    leader: int
    version: str  # the etcd binary's version ("3.6.16")
    storage_version: str  # "3.6.0"
    db_size: int
    db_size_in_use: int
    revision: int
    raft_index: int
    is_learner: bool
    errors: list[str] = field(default_factory=list)
    cluster_id: int = 0
    raft_term: int = 0
    raft_applied_index: int = 0
    db_size_quota: int = 0  # etcd 3.6 reports its --quota-backend-bytes (0: an older etcd)

    @property
    def healthy(self) -> bool:
        return self.leader != 0 and not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "memberID": f"{self.member_id:x}",
            "leader": f"{self.leader:x}",
            "isLeader": self.leader == self.member_id,
            "version": self.version,
            "storageVersion": self.storage_version,
            "dbSize": self.db_size,
            "dbSizeInUse": self.db_size_in_use,
            "revision": self.revision,
            "raftIndex": self.raft_index,
            "isLearner": self.is_learner,
            "errors": self.errors,
            "raftTerm": self.raft_term,
            "raftAppliedIndex": self.raft_applied_index,
            "dbSizeQuota": self.db_size_quota,
        }


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise EtcdError(f"{what} {path} not found; check --{what}") from None
    except PermissionError:
        raise EtcdError(f"{what} {path}: permission denied (run as root on the node)") from None
    except OSError as e:
        raise EtcdError(f"{what} {path}: {e.strerror or e}") from None


# grpc's C core logs TLS failures to stderr itself; off before anything imports grpc (the
# generated stubs do), so a failure reaches the user as our one line.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _grpc() -> Any:
    import grpc

    return grpc


TLS_WORDS = ("ssl", "tls", "tsi_", "handshake", "certificate", "unwrap")


_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.enable_retries", 0),
    # etcdctl's keepalive: a member that dies mid-snapshot ends the stream instead of hanging
    # it (etcd allows pings every 5 s: --grpc-keepalive-min-time)
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def _credentials(ep: Endpoint) -> Any:
    """TLS credentials from etcdctl's --cacert/--cert/--key (None for http://)."""
    if not ep.tls:
        return None
    if (ep.cert is None) != (ep.key is None):
        raise EtcdError("give both --cert and --key (a client certificate and its key)")
    return _grpc().ssl_channel_credentials(
        root_certificates=_read(ep.cacert, "cacert"),
        private_key=_read(ep.key, "key"),
        certificate_chain=_read(ep.cert, "cert"),
    )


def channel(ep: Endpoint) -> grpc.aio.Channel:
    """An asyncio channel to one member (for the small RPCs)."""
    grpc = _grpc()
    creds = _credentials(ep)
    if creds is None:
        return grpc.aio.insecure_channel(ep.target, options=_OPTIONS)
    return grpc.aio.secure_channel(ep.target, creds, options=_OPTIONS)


def sync_channel(ep: Endpoint) -> Any:
    """A blocking channel: the snapshot stream runs in a thread, where grpc's own iterator
    costs a fraction of the asyncio one per 32 KiB message."""
    grpc = _grpc()
    creds = _credentials(ep)
    if creds is None:
        return grpc.insecure_channel(ep.target, options=_OPTIONS)
    return grpc.secure_channel(ep.target, creds, options=_OPTIONS)


def describe(ep: Endpoint, e: Exception) -> EtcdError:
    """A gRPC failure as one line naming the endpoint and the fix."""
    grpc = _grpc()

    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):  # asyncio or blocking call
        code, details = e.code(), (e.details() or "").strip()
        lower = details.lower()
        if code == grpc.StatusCode.UNAVAILABLE:
            if ep.tls and any(word in lower for word in TLS_WORDS):
                return EtcdError(
                    f"etcd at {ep.url}: the TLS handshake failed; check --cacert/--cert/--key "
                    f"(they must be etcd's CA and a client certificate it signed)"
                )
            return EtcdError(
                f"etcd at {ep.url} is unreachable ({details.splitlines()[0] if details else 'unavailable'}); "
                "check --endpoints and that etcd runs"
            )
        if "database space exceeded" in lower:
            return EtcdError(
                f"etcd at {ep.url}: the database is over its space quota (the NOSPACE alarm) "
                "and takes no writes; run `kubecare etcd alarm recover`"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return EtcdError(f"etcd at {ep.url} did not answer in time; check --endpoints")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return EtcdError(
                f"etcd at {ep.url} refused the request ({details}); use a client certificate "
                "etcd trusts (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt)"
            )
        return EtcdError(f"etcd at {ep.url}: {code.name.lower()}: {details}")
    if isinstance(e, EtcdError):
        return e
    return EtcdError(f"etcd at {ep.url}: {e}")


async def member_status(ep: Endpoint, timeout: float = STATUS_TIMEOUT) -> MemberStatus:
    from ._proto import maintenance_pb2 as pb
    from ._proto import maintenance_pb2_grpc as rpc

    try:
        async with channel(ep) as ch:
            resp = await rpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=timeout)  # type: ignore[no-untyped-call]
    except Exception as e:
        raise describe(ep, e) from None
    return MemberStatus(
        endpoint=ep.url,
        member_id=resp.header.member_id,
        leader=resp.leader,
        version=resp.version,
        storage_version=resp.storageVersion,
        db_size=resp.dbSize,
        db_size_in_use=resp.dbSizeInUse,
        revision=resp.header.revision,
        raft_index=resp.raftIndex,
        is_learner=resp.isLearner,
        errors=list(resp.errors),
        cluster_id=resp.header.cluster_id,
        raft_term=resp.raftTerm,
        raft_applied_index=resp.raftAppliedIndex,
        db_size_quota=resp.dbSizeQuota,
    )


async def pick_healthy(endpoints: list[Endpoint]) -> tuple[Endpoint, MemberStatus]:
    """The first endpoint (in the order given) whose member is healthy: has a leader, reports
    no errors (alarms) and is not a learner. etcdctl takes a snapshot from one endpoint only."""
    results = await asyncio.gather(*(member_status(ep) for ep in endpoints), return_exceptions=True)
    problems = []
    for ep, res in zip(endpoints, results, strict=True):
        if isinstance(res, MemberStatus) and res.healthy and not res.is_learner:
            return ep, res
        if isinstance(res, MemberStatus):
            why = "; ".join(res.errors) or ("a learner" if res.is_learner else "no leader")
            problems.append(f"{ep.url}: {why}")
        elif isinstance(res, BaseException):
            problems.append(str(res))
    raise EtcdError("no healthy etcd member: " + " | ".join(problems))


@dataclass
class SnapshotStream:
    """The Snapshot stream's chunks (blocking: run it in a thread); ``version`` (the storage
    version) and ``total`` (data bytes, without the SHA-256) once the first chunk arrived."""

    endpoint: Endpoint
    version: str = ""
    total: int | None = None
    _call: Any = None
    _cancelled: bool = False

    def chunks(self, timeout: float | None = None) -> Iterator[bytes]:
        from ._proto import maintenance_pb2 as pb
        from ._proto import maintenance_pb2_grpc as rpc

        try:
            with sync_channel(self.endpoint) as ch:
                self._call = rpc.MaintenanceStub(ch).Snapshot(pb.SnapshotRequest(), timeout=timeout)  # type: ignore[no-untyped-call]
                if self._cancelled:
                    self._call.cancel()
                for msg in self._call:
                    if self.total is None:
                        self.total = msg.remaining_bytes + len(msg.blob)
                        self.version = msg.version
                    yield msg.blob
        except Exception as e:
            raise describe(self.endpoint, e) from None

    def cancel(self) -> None:
        """Stop the stream from another thread (Ctrl-C while saving)."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()


@dataclass(frozen=True)
class ClusterMember:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    is_learner: bool
    client_urls: tuple[str, ...] = ()


async def member_list(ep: Endpoint, timeout: float = STATUS_TIMEOUT) -> list[ClusterMember]:
    """Cluster.MemberList: every member etcd knows, started or not."""
    from ._proto import maintenance_pb2 as pb
    from ._proto import maintenance_pb2_grpc as rpc

    try:
        async with channel(ep) as ch:
            resp = await rpc.ClusterStub(ch).MemberList(pb.MemberListRequest(), timeout=timeout)  # type: ignore[no-untyped-call]
    except Exception as e:
        raise describe(ep, e) from None
    return [
        ClusterMember(m.ID, m.name, tuple(m.peerURLs), m.isLearner, tuple(m.clientURLs))
        for m in resp.members
    ]


async def member_add(
    ep: Endpoint, peer_url: str, *, learner: bool, timeout: float = STATUS_TIMEOUT
) -> tuple[int, list[ClusterMember]]:
    """Cluster.MemberAdd: the new member's ID and the members after the add (the new one
    without a name until it starts)."""
    from ._proto import maintenance_pb2 as pb
    from ._proto import maintenance_pb2_grpc as rpc

    request = pb.MemberAddRequest(peerURLs=[peer_url], isLearner=learner)
    try:
        async with channel(ep) as ch:
            resp = await rpc.ClusterStub(ch).MemberAdd(request, timeout=timeout)  # type: ignore[no-untyped-call]
    except Exception as e:
        raise describe(ep, e) from None
    members = [
        ClusterMember(m.ID, m.name, tuple(m.peerURLs), m.isLearner, tuple(m.clientURLs))
        for m in resp.members
    ]
    return resp.member.ID, members


async def member_promote(ep: Endpoint, member_id: int, timeout: float = STATUS_TIMEOUT) -> None:
    """Cluster.MemberPromote: a learner becomes a voting member (etcd refuses until the
    learner has caught up with the leader: the caller retries, as kubeadm does)."""
    from ._proto import maintenance_pb2 as pb
    from ._proto import maintenance_pb2_grpc as rpc

    try:
        async with channel(ep) as ch:
            await rpc.ClusterStub(ch).MemberPromote(  # type: ignore[no-untyped-call]
                pb.MemberPromoteRequest(ID=member_id), timeout=timeout
            )
    except Exception as e:
        raise describe(ep, e) from None
