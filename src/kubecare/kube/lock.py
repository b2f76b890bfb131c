"""A cluster-wide maintenance lock: at most N nodes in maintenance at once, across kubecare runs.

N coordination.k8s.io/v1 Leases (``kubecare-maintenance-0..N-1`` in one namespace) are the slots.
A run takes a free slot by writing its identity with optimistic concurrency (the Lease's
resourceVersion), renews it every third of its TTL, and deletes it when done.

Whether another holder is still alive is judged as client-go's leader election judges it: by how
long *this* process has watched the Lease stay unchanged, never by comparing the holder's
timestamps with the local clock — so clock skew between hosts, however large, cannot let a second
run take a live lock. A slot first seen held counts as held for a full TTL from that moment.
One exception: a holder on this same machine whose process is gone (``kill -9``) is known dead, so
a rerun takes its slot back at once; that is how an interrupted drain resumes without waiting.

The identity is unique per process (host, node, boot and PID namespace, pid, start time, random
suffix). The slot limit is written on every Lease; a run that asks for another limit while slots are held is told the limit
in force. A run that cannot renew its slot within two thirds of the TTL (client-go's renew deadline: before
anyone else may judge the slot free), or finds it taken over, sets :attr:`MaintenanceLock.lost`;
the operation it protects stops at its next safe point.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from kubecare.errors import Conflict, KubecareError, NotFound, OperationFailed, UsageError
from kubecare.events import Event, EventSink
from kubecare.kube.client import JSON, Kube
from kubecare.kube.objects import parse_time

LEASE_PREFIX = "kubecare-maintenance-"
LIMIT_ANNOTATION = "kubecare.io/max-concurrent-drains"
MANAGED_BY = {"app.kubernetes.io/managed-by": "kubecare"}
#: The TTL while a control-plane step runs (kubeadm's own wait for the static pods is 5 minutes).
CONTROL_PLANE_TTL = 300
RIDE_OUT_ATTEMPT = 5.0  # seconds one renewal may take while the outcome is unknown


class LockLost(OperationFailed):
    """Raised by an operation when its maintenance lock was taken over or could not be renewed."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a slot, and (as far as this process can tell) for how much longer."""

    lease: str
    identity: str
    age_seconds: float  # from the holder's acquireTime: for display only (its clock, not ours)
    expires_in: float  # by our own observation


@dataclass(frozen=True)
class Identity:
    """``host/node/kernel-pid-start-suffix``: who holds a slot, parseable for the same-machine
    rule. ``kernel`` names one boot of one machine in one PID namespace (boot id and PID
    namespace inode), so a pid from it means the same process only there; ``start`` is the
    process's start time, so a reused pid is not mistaken for the holder."""

    host: str
    node: str
    kernel: str  # "" when it cannot be known (then the same-machine rule never applies)
    pid: int
    start: int
    suffix: str

    def __str__(self) -> str:
        return f"{self.host}/{self.node}/{self.kernel or 'unknown'}-{self.pid}-{self.start}-{self.suffix}"

    @staticmethod
    def parse(text: str) -> Identity | None:
        host, _, rest = text.partition("/")
        node, _, tail = rest.rpartition("/")
        parts = tail.split("-")
        if (
            not host
            or not node
            or len(parts) != 4
            or not (parts[1].isdigit() and parts[2].isdigit())
        ):
            return None
        kernel = "" if parts[0] == "unknown" else parts[0]
        return Identity(host, node, kernel, int(parts[1]), int(parts[2]), parts[3])


def kernel_id() -> str:
    """This boot of this machine, in this PID namespace ("" if any part cannot be read)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")[:12]
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}.{pidns}" if boot else ""


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def record_of(lease: JSON) -> tuple[object, ...]:
    """What client-go compares to decide that a Lease changed (its LeaderElectionRecord)."""
    spec = lease.get("spec") or {}
    return (
        spec.get("holderIdentity"),
        spec.get("leaseDurationSeconds"),
        spec.get("acquireTime"),
        spec.get("renewTime"),
        spec.get("leaseTransitions"),
    )


def _micro(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube, self.node, self.namespace, self.slots, self.ttl = (
            kube,
            node,
            namespace,
            slots,
            ttl,
        )
        start = start_time(os.getpid())
        self.me = Identity(
            socket.gethostname(),
            node,
            # Without our own start time nobody could tell this process from a reused pid:
            # then claim no kernel, and the same-machine takeover never applies to us.
            kernel_id() if start else "",
            os.getpid(),
            start or 0,
            secrets.token_hex(3),
        )
        self.identity = str(self.me)
        self.lease: str | None = None
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.riding_out = False  # see ride_out()
        self.unknown = False  # renewal overdue while riding out: ours or not is not known yet
        self._clock = clock
        self._observed: dict[str, tuple[tuple[object, ...], float]] = {}
        self._renewed_at = 0.0
        self._renewer: asyncio.Task[None] | None = None

    # -- observation ---------------------------------------------------------------------------
    def _observe(self, lease: JSON) -> float:
        """Record what we see of ``lease``; return how long (by our clock) it has been unchanged."""
        name = lease["metadata"]["name"]
        record = record_of(lease)
        now = self._clock()
        seen = self._observed.get(name)
        if seen is None or seen[0] != record:
            self._observed[name] = (record, now)
            return 0.0
        return now - seen[1]

    def holder_of(self, lease: JSON) -> LockHolder | None:
        """The live holder of ``lease`` as this process judges it, or None when it is free,
        expired by our observation, or held by a dead process of this machine."""
        spec = lease.get("spec") or {}
        identity = spec.get("holderIdentity")
        unchanged = self._observe(lease)
        if not identity:
            return None
        ttl = float(spec.get("leaseDurationSeconds") or self.ttl)
        if unchanged >= ttl:
            return None
        other = Identity.parse(str(identity))
        if (
            other is not None
            and other.kernel
            and other.kernel == self.me.kernel
            and other.host == self.me.host
            and other.pid != self.me.pid
            and other.start
            and start_time(other.pid) != other.start
        ):
            return None  # its process (same boot, same PID namespace) is gone: it cannot renew
        acquired = parse_time(spec.get("acquireTime"))
        age = (datetime.now(UTC) - acquired).total_seconds() if acquired else 0.0
        return LockHolder(lease["metadata"]["name"], str(identity), max(0.0, age), ttl - unchanged)

    # -- requests ------------------------------------------------------------------------------
    def _path(self, name: str = "") -> str:
        base = f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"
        return f"{base}/{name}" if name else base

    def _body(self, name: str, previous: JSON | None) -> JSON:
        now = _micro(datetime.now(UTC))
        meta: JSON = {
            "name": name,
            "namespace": self.namespace,
            "labels": dict(MANAGED_BY),
            "annotations": {LIMIT_ANNOTATION: str(self.slots)},
        }
        spec: JSON = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.ttl,
            "acquireTime": now,
            "renewTime": now,
            "leaseTransitions": 0,
        }
        if previous is not None:
            meta["resourceVersion"] = previous["metadata"]["resourceVersion"]
            old = previous.get("spec") or {}
            transitions = int(old.get("leaseTransitions") or 0)
            if old.get("holderIdentity") == self.identity:
                spec["acquireTime"] = old.get("acquireTime") or now
                spec["leaseTransitions"] = transitions
            else:
                spec["leaseTransitions"] = transitions + 1
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": spec,
        }

    async def _leases(self) -> list[JSON]:
        # By name, not by label: a slot someone made by hand (or an older kubecare) still counts.
        items, _ = await self.kube.list_all(
            self._path(), what=f"maintenance lock leases in {self.namespace}"
        )
        return [i for i in items if i["metadata"]["name"].startswith(LEASE_PREFIX)]

    async def holders(self, leases: list[JSON] | None = None) -> list[LockHolder]:
        """Live holders of every slot (judged by this process's observations)."""
        out = []
        for lease in leases if leases is not None else await self._leases():
            h = self.holder_of(lease)
            if h:
                out.append(h)
        return out

    def _check_limit(self, leases: list[JSON]) -> None:
        for lease in leases:
            if lease["metadata"]["name"] == self.lease:
                continue
            limit = ((lease["metadata"].get("annotations") or {}).get(LIMIT_ANNOTATION)) or ""
            if limit.isdigit() and int(limit) != self.slots:
                holder = self.holder_of(lease)
                if holder is not None:
                    raise UsageError(
                        f"the maintenance lock in {self.namespace} is in use with "
                        f"--max-concurrent-drains={limit} (held by {holder.identity}); "
                        f"run with --max-concurrent-drains={limit}, or wait until it is free"
                    )

    async def _try_slot(self, name: str, existing: JSON | None) -> bool:
        what = f"lease {self.namespace}/{name}"
        sent = self._clock()
        if existing is None:
            try:
                await self.kube.request_json(
                    "POST", self._path(), body=self._body(name, None), what=what
                )
            except Conflict:
                return False
        else:
            holder = self.holder_of(existing)
            if holder is not None and holder.identity != self.identity:
                return False
            try:
                await self.kube.request_json(
                    "PUT", self._path(name), body=self._body(name, existing), what=what
                )
            except Conflict:
                return False
        self._renewed_at = sent
        return True

    async def acquire(
        self,
        *,
        timeout: float = 0,
        on_wait: Callable[[list[LockHolder]], None] | None = None,
    ) -> str:
        """Take a free slot, waiting (and reporting holders) while all are held; ``timeout``
        seconds at most (0: forever)."""
        deadline = self._clock() + timeout if timeout > 0 else None
        while True:
            leases = await self._leases()
            self._check_limit(leases)
            by_name = {lease["metadata"]["name"]: lease for lease in leases}
            for i in range(self.slots):
                name = f"{LEASE_PREFIX}{i}"
                if await self._try_slot(name, by_name.get(name)):
                    self.lease = name
                    self._renewer = asyncio.create_task(self._renew_forever())
                    try:  # another run may have taken a slot under another limit meanwhile
                        self._check_limit(await self._leases())
                    except BaseException:
                        # Any failure here (unreachable, Ctrl-C, ...) must not leave the slot
                        # held and renewed by an orphan task for the rest of the process.
                        await asyncio.shield(self.release())
                        raise
                    return name
            holders = await self.holders(leases)
            if on_wait:
                on_wait(holders)
            if deadline is not None and self._clock() > deadline:
                who = (
                    ", ".join(f"{h.identity} ({h.age_seconds:.0f}s)" for h in holders)
                    or "another run"
                )
                raise OperationFailed(
                    f"maintenance lock in {self.namespace} is still held by {who} after "
                    f"--lock-timeout={timeout:g}s; wait, or raise --max-concurrent-drains"
                )
            await asyncio.sleep(min(2.0, self.ttl / 4))

    def lost_error(self) -> LockLost:
        return LockLost(
            f'lost the maintenance lock {self.namespace}/{self.lease} for node "{self.node}": '
            f"{self.lost_reason}; stopped before doing more. The node stays cordoned; check who "
            "holds the lock (kubectl get leases -n "
            f"{self.namespace}), then run the same command again to resume"
        )

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            self.lost.set()

    @property
    def renew_deadline(self) -> float:
        """Give up this long after the last good renewal: others may take the slot only after a
        full TTL of seeing it unchanged, so we stop well before that."""
        return self.ttl * 2 / 3

    async def _renew_forever(self) -> None:
        assert self.lease is not None
        name = self.lease
        what = f"lease {self.namespace}/{name}"
        try:
            while True:
                await asyncio.sleep(max(0.0, self._renewed_at + self.ttl / 3 - self._clock()))
                while True:  # retry until renewed or past the renew deadline
                    left = self._renewed_at + self.renew_deadline - self._clock()
                    if left <= 0:
                        if not self.riding_out:
                            self._lose(
                                f"it could not be renewed within {self.renew_deadline:.0f}s "
                                f"(TTL {self.ttl}s)"
                            )
                            return
                        # The step under way takes the apiserver away on purpose: whether the
                        # lock is still ours is unknown until it answers again.
                        self.unknown = True
                        left = RIDE_OUT_ATTEMPT
                    if await self._attempt(name, what, left):
                        break
                    if self.lost.is_set():
                        return
                    await asyncio.sleep(min(1.0, max(0.0, left - 0.1)))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an answer that is not the API's: never drop the lock silently
            self._lose(f"renewing it failed unexpectedly ({type(e).__name__}: {e})")

    async def _attempt(self, name: str, what: str, timeout: float) -> bool:
        """One renewal: True when renewed. A changed holder or a deleted Lease loses the lock
        (then False, with :attr:`lost` set); any other failure is False, to be tried again."""
        sent = self._clock()
        try:
            async with asyncio.timeout(timeout):
                lease = await self.kube.get_json(self._path(name), what=what)
                holder = (lease.get("spec") or {}).get("holderIdentity")
                if holder != self.identity:
                    self._lose(f"it was taken over by {holder or 'nobody (released)'}")
                    return False
                await self.kube.request_json(
                    "PUT", self._path(name), body=self._body(name, lease), what=what
                )
        except NotFound:
            self._lose("its Lease was deleted")
            return False
        except (TimeoutError, KubecareError):
            return False
        self._renewed_at = sent  # what others observe is at least this recent
        self.unknown = False
        return True

    @contextlib.asynccontextmanager
    async def ride_out(self, ttl: int = CONTROL_PLANE_TTL) -> AsyncIterator[None]:
        """For a step that restarts the apiserver on purpose (kubeadm upgrading the control
        plane on this lock's node): the Lease is renewed with a TTL of at least ``ttl`` first
        (others judge it free only after that long unchanged: a cold apiserver start fits), and
        while the step runs a renewal that fails for long is "unknown", not "lost" — a changed
        holder or a deleted Lease stays fatal. When the step ends the lock must be confirmed
        ours (renewed) before anything else is done; then the usual TTL is back."""
        assert self.lease is not None
        usual = self.ttl
        self.ttl = max(usual, ttl)
        self.riding_out = True
        try:
            await self._attempt(self.lease, f"lease {self.namespace}/{self.lease}", 10.0)
            yield
            deadline = self._clock() + self.ttl
            while self.unknown and not self.lost.is_set() and self._clock() < deadline:  # noqa: ASYNC110 (set by the renewer, polled: two conditions and a clock)
                await asyncio.sleep(0.2)
            if self.unknown and not self.lost.is_set():
                self._lose(f"it could not be renewed within {self.ttl}s of the step's end")
        finally:
            self.riding_out = False
            self.ttl = usual

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
        if self.lost.is_set():
            return  # not ours any more
        # Best effort: if the apiserver is gone, the lease expires by itself (and a rerun on this
        # machine takes it back at once), so a failed release must not hide the error that got us here.
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
    kube: Kube,
    node: str,
    *,
    namespace: str,
    slots: int,
    ttl: int,
    on_event: EventSink,
    timeout: float = 0,
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

    await lock.acquire(timeout=timeout, on_wait=waiting)
    on_event(Event("lock", f"maintenance lock {namespace}/{lock.lease} acquired", node=node))
    try:
        yield lock
    finally:
        await lock.release()
