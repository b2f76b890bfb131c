"""A cluster-wide maintenance lock: at most N nodes in maintenance at once, across kubecare runs.

N coordination.k8s.io/v1 Leases (``kubecare-maintenance-0..N-1`` in one namespace) are the slots.
A run takes a free slot by writing its identity (``host/node``) with optimistic concurrency (the
Lease's resourceVersion), renews it every third of its TTL, and deletes it when done. A slot whose
holder stopped renewing for longer than the TTL is stale and can be taken over; a run for the same
node from the same host takes its own slot back at once, which is how an interrupted drain resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from kubecare.errors import Conflict, KubecareError, NotFound, OperationFailed
from kubecare.events import Event, EventSink
from kubecare.kube.client import JSON, Kube
from kubecare.kube.objects import parse_time

LEASE_PREFIX = "kubecare-maintenance-"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a slot, and since when."""

    lease: str
    identity: str
    age_seconds: float
    expires_in: float


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def holder_of(lease: JSON, now: datetime) -> LockHolder | None:
    """The live holder of ``lease``, or None when it is free or stale."""
    spec = lease.get("spec") or {}
    identity = spec.get("holderIdentity")
    renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime"))
    if not identity or renewed is None:
        return None
    ttl = int(spec.get("leaseDurationSeconds") or 0)
    left = ttl - (now - renewed).total_seconds()
    if left <= 0:
        return None
    acquired = parse_time(spec.get("acquireTime")) or renewed
    return LockHolder(lease["metadata"]["name"], identity, (now - acquired).total_seconds(), left)


class MaintenanceLock:
    """One slot of the cluster-wide maintenance semaphore, for one node."""

    def __init__(
        self,
        kube: Kube,
        node: str,
        *,
        namespace: str = "kube-system",
        slots: int = 1,
        ttl: int = 60,
    ) -> None:
        self.kube, self.node, self.namespace, self.slots, self.ttl = (
            kube,
            node,
            namespace,
            slots,
            ttl,
        )
        self.identity = f"{socket.gethostname()}/{node}"
        self.lease: str | None = None
        self._version = ""
        self._renewer: asyncio.Task[None] | None = None

    def _path(self, name: str = "") -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    def _body(self, name: str, version: str = "", acquired: str | None = None) -> JSON:
        now = _micro(_now())
        meta: JSON = {
            "name": name,
            "namespace": self.namespace,
            "labels": {"app.kubernetes.io/managed-by": "kubecare"},
        }
        if version:
            meta["resourceVersion"] = version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self.ttl,
                "acquireTime": acquired or now,
                "renewTime": now,
            },
        }

    async def holders(self) -> list[LockHolder]:
        """Live holders of every slot."""
        out = []
        now = _now()
        for i in range(self.slots):
            try:
                lease = await self.kube.get_json(
                    self._path(f"{LEASE_PREFIX}{i}"), what="maintenance lock"
                )
            except NotFound:
                continue
            h = holder_of(lease, now)
            if h:
                out.append(h)
        return out

    async def _try_slot(self, name: str) -> bool:
        try:
            lease = await self.kube.get_json(
                self._path(name), what=f"lease {self.namespace}/{name}"
            )
        except NotFound:
            try:
                created = await self.kube.request_json(
                    "POST",
                    self._path(),
                    body=self._body(name),
                    what=f"lease {self.namespace}/{name}",
                )
            except Conflict:
                return False
            self._version = created["metadata"]["resourceVersion"]
            return True
        holder = holder_of(lease, _now())
        if holder is not None and holder.identity != self.identity:
            return False
        acquired = (lease.get("spec") or {}).get("acquireTime") if holder else None
        body = self._body(name, lease["metadata"]["resourceVersion"], acquired)
        try:
            updated = await self.kube.request_json(
                "PUT", self._path(name), body=body, what=f"lease {self.namespace}/{name}"
            )
        except Conflict:
            return False
        self._version = updated["metadata"]["resourceVersion"]
        return True

    async def acquire(
        self,
        *,
        deadline: float | None = None,
        on_wait: Callable[[list[LockHolder]], None] | None = None,
    ) -> str:
        """Take a free slot, waiting (and reporting holders) while all are held."""
        while True:
            for i in range(self.slots):
                name = f"{LEASE_PREFIX}{i}"
                if await self._try_slot(name):
                    self.lease = name
                    self._renewer = asyncio.create_task(self._renew_forever())
                    return name
            holders = await self.holders()
            if on_wait:
                on_wait(holders)
            if deadline is not None and time.monotonic() > deadline:
                who = (
                    ", ".join(f"{h.identity} ({h.age_seconds:.0f}s)" for h in holders) or "unknown"
                )
                raise OperationFailed(
                    f"maintenance lock in {self.namespace} is held by {who}; wait, or raise --max-concurrent-drains"
                )
            await asyncio.sleep(2)

    async def _renew_forever(self) -> None:
        assert self.lease is not None
        while True:
            await asyncio.sleep(self.ttl / 3)
            with contextlib.suppress(Exception):  # a missed renewal is retried; the TTL has slack
                lease = await self.kube.get_json(self._path(self.lease))
                body = self._body(
                    self.lease,
                    lease["metadata"]["resourceVersion"],
                    (lease.get("spec") or {}).get("acquireTime"),
                )
                if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                    return  # taken over after we stalled past the TTL; nothing left to renew
                updated = await self.kube.request_json("PUT", self._path(self.lease), body=body)
                self._version = updated["metadata"]["resourceVersion"]

    async def release(self) -> None:
        """Give the slot back (delete the Lease if we still hold it)."""
        if self._renewer:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        if self.lease is None:
            return
        name, self.lease = self.lease, None
        # Best effort: if the apiserver is gone, the lease expires by itself (and the same host and
        # node take it back at once), so a failed release must not hide the error that got us here.
        with contextlib.suppress(KubecareError):
            lease = await self.kube.get_json(self._path(name))
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                await self.kube.request_json(
                    "DELETE",
                    self._path(name),
                    body={
                        "preconditions": {"resourceVersion": lease["metadata"]["resourceVersion"]}
                    },
                )


@contextlib.asynccontextmanager
async def maintenance_lock(
    kube: Kube, node: str, *, namespace: str, slots: int, ttl: int, on_event: EventSink
) -> AsyncIterator[MaintenanceLock]:
    """Hold a maintenance slot for ``node`` for the duration of the block (waits, reporting who
    holds the slots, while none is free)."""
    lock = MaintenanceLock(kube, node, namespace=namespace, slots=slots, ttl=ttl)

    def waiting(holders: list[LockHolder]) -> None:
        who = ", ".join(f"{h.identity} for {h.age_seconds:.0f}s" for h in holders) or "another run"
        on_event(
            Event(
                "lock-wait",
                f"waiting for the maintenance lock, held by {who}",
                node=node,
                data={"holders": [h.identity for h in holders]},
            )
        )

    await lock.acquire(on_wait=waiting)
    on_event(Event("lock", f"maintenance lock {namespace}/{lock.lease} acquired", node=node))
    try:
        yield lock
    finally:
        await lock.release()
