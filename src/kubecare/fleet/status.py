"""``fleet status``: one row per cluster, every cluster asked at once.

Each row is what the single-cluster commands would say, read the same way: the version and
skew from the inventory ``versions`` reads, the go/no-go of ``upgrade plan`` for the next minor
(its checks and reasons), the etcd snapshot and backup ages the plan's preflight finds, nodes
and pods from the lists, the maintenance lock's leases, the upgrade journal's ConfigMap, and the
soonest expiry of the certificates the client can see from here (the apiserver's serving
certificate, as presented, and the kubeconfig's client certificate). A cluster that fails is a
row with its error; the others are still reported.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import KubecareError
from .fleetfile import FleetCluster

if TYPE_CHECKING:
    from ..kube import ClientOptions, Kube

CLUSTER_TIMEOUT = 45.0


@dataclass
class ClusterStatus:
    context: str
    version: str = ""
    skew: list[str] = field(default_factory=list)  # violations now; empty: within the policy
    nodes_ready: int = 0
    nodes_total: int = 0
    cordoned: list[str] = field(default_factory=list)
    pods_not_running: int = 0
    upgrade_to: str = ""
    upgrade_go: bool | None = None
    upgrade_pending: int = 0  # nodes the upgrade would change; 0: up to date
    upgrade_reasons: list[str] = field(default_factory=list)
    snapshot_age: float | None = None
    backup_age: float | None = None
    cert_expiry: str | None = None  # RFC 3339
    cert_name: str = ""
    lock: list[str] = field(default_factory=list)  # holders of kubecare maintenance leases
    journal: str = ""  # an unfinished upgrade journal: "1.37.2 running"
    notes: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.error

    def as_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "version": self.version or None,
            "skew": self.skew,
            "nodes": {"ready": self.nodes_ready, "total": self.nodes_total},
            "cordoned": self.cordoned,
            "podsNotRunning": self.pods_not_running,
            "upgrade": {"to": self.upgrade_to or None, "go": self.upgrade_go,
                        "pendingNodes": self.upgrade_pending, "reasons": self.upgrade_reasons},
            "snapshotAgeSeconds": _round(self.snapshot_age),
            "backupAgeSeconds": _round(self.backup_age),
            "certificate": {"name": self.cert_name or None, "notAfter": self.cert_expiry},
            "lock": self.lock,
            "journal": self.journal or None,
            "notes": self.notes,
            "error": self.error or None,
            "seconds": round(self.seconds, 2),
        }  # fmt: skip


def _round(v: float | None) -> int | None:
    return None if v is None else int(v)


def client_options(cluster: FleetCluster, *, timeout: float) -> ClientOptions:
    """The cluster's own client: its kubeconfig and context only. A sandbox's apiservers are
    dialled through the host's forwards (their 192.0.2.x addresses exist only inside the
    sandbox's network namespaces)."""
    from ..kube import ClientOptions

    return ClientOptions(
        kubeconfig=cluster.kubeconfig,
        context=cluster.context,
        connect_timeout=min(5.0, timeout),
        request_timeout=timeout,
        addresses=sandbox_addresses(cluster.context),
    )


def sandbox_addresses(context: str) -> tuple[tuple[str, str], ...]:
    from ..sandbox.target import api_addresses, sandbox_of_context

    name = sandbox_of_context(context)
    return api_addresses(name) if name else ()


async def _cert_not_after(url: str, timeout: float) -> dt.datetime | None:
    """The serving certificate the apiserver presents (read, not trusted: the client's own
    requests verify it)."""
    from ..certs.kubelets import _cert_of, presented_cert

    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        der = await presented_cert(parts.hostname, parts.port or 443, timeout)
    except (OSError, TimeoutError, ssl.SSLError):
        return None
    return _cert_of(der)[0] if der else None


def _client_cert_not_after(kube: Kube) -> dt.datetime | None:
    pem = kube.connection.cert_data
    if not pem:
        return None
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem).not_valid_after_utc
    except ValueError:
        return None


async def _leases(kube: Kube) -> list[str]:
    from ..kube.lock import LEASE_PREFIX

    items = await kube.list_objects("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases")
    out = []
    for lease in items:
        name = lease["metadata"]["name"]
        holder = (lease.get("spec") or {}).get("holderIdentity")
        if name.startswith(LEASE_PREFIX) and holder:
            out.append(str(holder))
    return sorted(out)


async def _journal(kube: Kube) -> str:
    from ..upgrade.journal import ConfigMapStore

    journal = await ConfigMapStore(kube).load()
    if journal is None or journal.state == "done":
        return ""
    return f"{journal.target} {journal.state}"


async def _read(
    kube: Kube, row: ClusterStatus, snapshot_dir: Path, backup_store: str | None
) -> None:
    from ..nodes.drain_options import DrainOptions
    from ..nodes.inventory import ready_status
    from ..upgrade.preflight import plan_with_preflight

    nodes, pods = await asyncio.gather(
        kube.list_objects("/api/v1/nodes"), kube.list_objects("/api/v1/pods")
    )
    row.nodes_total = len(nodes)
    row.nodes_ready = sum(1 for n in nodes if ready_status(n) == "True")
    row.cordoned = sorted(
        n["metadata"]["name"] for n in nodes if (n.get("spec") or {}).get("unschedulable")
    )
    row.pods_not_running = sum(
        1 for p in pods if (p.get("status") or {}).get("phase") not in ("Running", "Succeeded")
    )

    async def optional(what: str, coro: Any) -> Any:
        try:
            return await coro
        except KubecareError as e:
            row.notes.append(f"{what}: {e}")
            return None

    planned, leases, journal, served = await asyncio.gather(
        optional(
            "upgrade plan",
            plan_with_preflight(
                kube,
                None,
                DrainOptions(ignore_daemonsets=True),
                snapshot_dir=snapshot_dir,
                backup_store=backup_store,
            ),
        ),
        optional("maintenance lock", _leases(kube)),
        optional("upgrade journal", _journal(kube)),
        _cert_not_after(kube.server, 5.0),
    )
    if planned is not None:
        plan, _inventory, pre = planned
        row.version = plan.current
        row.skew = list(plan.skew_now)
        row.upgrade_to = plan.target
        row.upgrade_go = plan.go
        row.upgrade_pending = len(plan.pending)
        row.upgrade_reasons = plan.reasons
        row.snapshot_age, row.backup_age = pre.snapshot_age, pre.backup_age
    row.lock = leases or []
    row.journal = journal or ""
    certs = [("apiserver", served), ("client", _client_cert_not_after(kube))]
    known = [(n, t) for n, t in certs if t is not None]
    if known:
        name, soonest = min(known, key=lambda c: c[1])
        row.cert_name, row.cert_expiry = name, f"{soonest:%Y-%m-%dT%H:%M:%SZ}"


async def cluster_status(
    cluster: FleetCluster,
    *,
    snapshot_dir: Path,
    backup_store: str | None = None,
    timeout: float = CLUSTER_TIMEOUT,
) -> ClusterStatus:
    from ..kube import Kube

    row = ClusterStatus(cluster.name)
    t0 = time.monotonic()
    kube: Kube | None = None
    try:
        kube = Kube(client_options(cluster, timeout=min(timeout, 15.0)))
        await asyncio.wait_for(_read(kube, row, snapshot_dir, backup_store), timeout)
    except TimeoutError:
        row.error = f"no answer within {timeout:.0f}s"
    except KubecareError as e:
        row.error = str(e)
    except Exception as e:  # a defect of kubecare's with this cluster: its row, not every row
        row.error = f"kubecare failed unexpectedly ({type(e).__name__}: {e}); please report it"
    finally:
        if kube is not None:
            await kube.close()
        row.seconds = time.monotonic() - t0
    return row


async def fleet_status(
    clusters: list[FleetCluster],
    *,
    snapshot_dir: Path,
    backup_store: str | None = None,
    timeout: float = CLUSTER_TIMEOUT,
) -> list[ClusterStatus]:
    """Every cluster at once (their requests all in flight together), in the fleet's order."""
    return list(
        await asyncio.gather(
            *(
                cluster_status(
                    c, snapshot_dir=snapshot_dir, backup_store=backup_store, timeout=timeout
                )
                for c in clusters
            )
        )
    )


#: Clusters per reading process: a cluster's status costs its reader ~0.1 s of CPU (TLS
#: handshakes, JSON, the apiservers' metrics), all on the one core an event loop runs on, and a
#: forked worker costs a few milliseconds; so from two clusters on, every core reads.
PER_PROCESS = 2


def _chunk_status(
    clusters: list[FleetCluster], snapshot_dir: Path, backup_store: str | None, timeout: float
) -> list[ClusterStatus]:
    return asyncio.run(
        fleet_status(
            clusters, snapshot_dir=snapshot_dir, backup_store=backup_store, timeout=timeout
        )
    )


def fleet_status_parallel(
    clusters: list[FleetCluster],
    *,
    snapshot_dir: Path,
    backup_store: str | None = None,
    timeout: float = CLUSTER_TIMEOUT,
    processes: int | None = None,
) -> list[ClusterStatus]:
    """:func:`fleet_status` spread over up to one process per core, so that many clusters take
    about the time of a few. Called with no event loop running (the workers are forked)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    n = processes or min(os.cpu_count() or 1, -(-len(clusters) // PER_PROCESS))
    if n <= 1:
        return _chunk_status(clusters, snapshot_dir, backup_store, timeout)
    chunks = [clusters[i::n] for i in range(n)]  # round robin: slow ones spread out
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(n, mp_context=ctx) as pool:
        parts = list(
            pool.map(
                _chunk_status,
                chunks,
                [snapshot_dir] * n,
                [backup_store] * n,
                [timeout] * n,
            )
        )
    by_name = {r.context: r for part in parts for r in part}
    return [by_name[c.name] for c in clusters]
