"""What ``upgrade plan`` reads from the cluster before it can say go or no-go.

- Nodes not Ready (kubeadm's ControlPlaneNodesReady, extended to workers: a rolling upgrade
  would count them as unavailable).
- Every node's drain plan (the same one ``kubecare drain --plan`` shows): pods that block a
  drain, PDBs that allow no disruption now, workloads whose ready replicas are all on one node.
- Deprecated APIs still used: the ``apiserver_requested_deprecated_apis`` gauge of *every*
  apiserver instance (it lives in each process and is cleared when that apiserver restarts, so it
  must be read before the upgrade), and stored custom resources at a CRD version marked
  ``deprecated: true``, with the warning text the apiserver sends for them.
- The age of the newest etcd snapshot in the snapshot directory and of the newest resource backup
  in the backup store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from kubecare.errors import Forbidden, KubecareError
from kubecare.kube import JSON, Kube
from kubecare.nodes.drain_options import DrainOptions
from kubecare.nodes.drain_plan import DrainPlan
from kubecare.nodes.filters import Action
from kubecare.nodes.inventory import ready_status
from kubecare.upgrade.plan import NodeFacts, Preflight, Strategy, UpgradePlan, build_plan
from kubecare.versions.deprecations import DeprecatedUse, crd_deprecation_warning, parse_metrics
from kubecare.versions.inventory import ADVERTISE, Inventory
from kubecare.versions.semver import Version

CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
SNAPSHOT_SUFFIXES = (".db", ".db.zst", ".snapshot")
PLAN_CONCURRENCY = 8  # nodes whose drain plans are read at once


def node_facts(nodes: Sequence[JSON], static: Collection[str] = ()) -> list[NodeFacts]:
    """``static``: nodes that run control-plane mirror pods — control-plane nodes whether or not
    they carry the label (kubeadm sets it at init/join, but a label can be removed, and other
    installers never set it); planning one as a worker would batch it with others and leave its
    static pods unaccounted."""
    out = []
    for n in nodes:
        meta = n["metadata"]
        info = (n.get("status") or {}).get("nodeInfo") or {}
        out.append(
            NodeFacts(
                meta["name"],
                CONTROL_PLANE_LABEL in (meta.get("labels") or {}) or meta["name"] in static,
                ready_status(n) == "True",
                str(info.get("kubeletVersion") or "?"),
                bool((n.get("spec") or {}).get("unschedulable")),
            )
        )
    return out


async def apiserver_endpoints(kube: Kube) -> list[str]:
    """Each kube-apiserver instance's ``host:port`` (kubeadm's advertise annotation)."""
    pods = await kube.list_objects(
        "/api/v1/namespaces/kube-system/pods",
        params={"labelSelector": "component=kube-apiserver,tier=control-plane"},
    )
    out = [str((p["metadata"].get("annotations") or {}).get(ADVERTISE) or "") for p in pods]
    return sorted(e for e in out if e)


async def deprecated_in_use(
    kube: Kube, unseen: list[str] | None = None
) -> tuple[list[DeprecatedUse], list[str]]:
    """Deprecated APIs requested since each apiserver started, and deprecated CRD versions
    objects may be stored at. Returns the uses and notes (an apiserver whose metrics could not
    be read is named: the check is then incomplete); with ``unseen``, a list RBAC forbids is
    named there instead of failing."""
    from kubecare.kube.unseen import or_unseen

    notes: list[str] = []
    uses: list[DeprecatedUse] = []
    gaps: list[str] = []
    endpoints = await or_unseen(apiserver_endpoints(kube), [], gaps, "the apiservers' endpoints",
                                "list pods in kube-system", "only this apiserver's metrics are read")  # fmt: skip
    targets: list[tuple[str, Kube]] = [(e, kube.at(e)) for e in endpoints] or [(kube.server, kube)]
    try:
        for name, client in targets:
            try:
                text = await client.get_text("/metrics", what=f"metrics of apiserver {name}")
            except KubecareError as e:
                notes.append(f"deprecated APIs: could not read the metrics of {name}: {e}")
                continue
            uses += parse_metrics(text, f"metric on apiserver {name}")
    finally:
        for _, client in targets:
            if client is not kube:
                await client.close()
    # Deprecated CRD versions: their warning text is computed as the apiserver does, never
    # requested (a request would itself count as a client in the gauge); objects may be stored
    # at such a version when it is in status.storedVersions.
    crds = await or_unseen(
        kube.list_objects("/apis/apiextensions.k8s.io/v1/customresourcedefinitions"),
        [],
        gaps,
        "deprecated CRD versions",
        "list customresourcedefinitions",
    )
    if gaps and unseen is None:
        raise Forbidden(gaps[0], status=403)
    (unseen if unseen is not None else []).extend(gaps)
    warnings: dict[tuple[str, str, str], str] = {}
    for crd in crds:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        stored = set((crd.get("status") or {}).get("storedVersions") or [])
        for v in spec.get("versions") or []:
            if not (v.get("deprecated") and v.get("served")):
                continue
            key = (group, v["name"], plural)
            warnings[key] = crd_deprecation_warning(spec, v["name"])
            if v["name"] in stored:
                where = "objects stored at this version (status.storedVersions)"
                uses.append(DeprecatedUse(*key, "", "", where, warnings[key]))
    # The metric's series for a deprecated CRD version gets the apiserver's own warning text.
    uses = [
        DeprecatedUse(u.group, u.version, u.resource, u.subresource, u.removed_release, u.source,
                      u.warning or warnings.get((u.group, u.version, u.resource), ""))
        for u in uses
    ]  # fmt: skip
    return uses, notes


def _never_allowed(plan: DrainPlan, surge: bool = False) -> tuple[str, ...]:
    """PDBs covering the node's pods that allow no disruption although every pod they expect
    is healthy: nothing will change that, so the drain would wait for ever — unless ``surge``
    and every pod they hold can be replaced first by a rollout of its Deployment."""
    out = []
    for budget in plan.stuck_pdbs:
        held = [p for p in plan.to_evict if budget.key in p.pdbs]
        movable = bool(held) and all(p.surge_ok for p in held)
        if surge and movable:
            continue
        hint = (
            "; --surge replaces its pods first by a rollout of their Deployment" if movable else ""
        )
        out.append(
            f"PDB {budget.key} allows no disruption with all {budget.expected_pods} pod(s) healthy{hint}"
        )
    return tuple(out)


def newest_snapshot(directory: Path, uid: str = "") -> tuple[float | None, str]:
    """Seconds since the newest etcd snapshot *of this cluster* (kube-system UID ``uid``) in
    ``directory`` was written, and where. A directory may hold other clusters' snapshots (two
    sandboxes, a shared backup host): each file's own kube-system namespace says whose it is."""
    from kubecare.errors import SnapshotError
    from kubecare.kube.identity import snapshot_cluster_uid

    try:
        files = [p for p in directory.expanduser().iterdir() if p.name.endswith(SNAPSHOT_SUFFIXES)]
        stamped = sorted(((p.stat().st_mtime, p) for p in files), reverse=True)
    except OSError:
        return None, str(directory)
    others, unverified = 0, None
    for mtime, path in stamped:
        try:
            theirs = "" if path.name.endswith(".zst") else snapshot_cluster_uid(path)
        except (SnapshotError, OSError):
            theirs = ""
        if uid and theirs == uid:
            return time.time() - mtime, str(path)
        if uid and theirs:
            others += 1
        elif unverified is None:
            unverified = (mtime, path)
    if unverified is not None:
        mtime, path = unverified
        why = "its cluster cannot be told" if uid else "cannot read namespace kube-system"
        return time.time() - mtime, f"{path}; not verified to be this cluster's: {why}"
    if others:
        return None, f"{directory}: only other clusters' snapshots ({others})"
    return None, str(directory)


def newest_backup(
    store_url: str | None, uid: str = "", server: str = ""
) -> tuple[float | None, str]:
    """Seconds since the newest *complete* backup *of this cluster* in the store, and where.
    Partial backups and other clusters' (their manifests say) are passed over, and counted."""
    from kubecare.backup.scope import missing_types, same_cluster
    from kubecare.backup.stores import is_backup, open_store

    others = partial = 0

    def passed_over() -> str:
        words = [f"{partial} partial"] if partial else []
        return ", ".join(words + ([f"{others} of other clusters"] if others else []))

    try:
        store = open_store(store_url)
        for info in sorted(store.infos(), key=lambda i: i.modified, reverse=True):
            if not is_backup(store, info.name):
                continue
            manifest = store.manifest(info.name)
            if not same_cluster(manifest, uid, server):
                others += 1
            elif missing_types(manifest):
                partial += 1
            else:
                where = f"{store.url.rstrip('/')}/{info.name}.tar.zst"
                if partial or others:
                    where += f"; newer ones passed over: {passed_over()}"
                return time.time() - info.modified.timestamp(), where
    except KubecareError as e:
        return None, f"store unreadable: {e}"
    if partial or others:
        return None, f"{store.url}: no complete backup of this cluster ({passed_over()})"
    return None, store.url


def _daemonset_pods(plan: DrainPlan) -> tuple[str, ...]:
    """The DaemonSets whose pods this node's drain leaves running (--ignore-daemonsets)."""
    return tuple(
        sorted(
            {
                f"{p.namespace}/{p.owner}"
                for p in plan.pods
                if p.action is Action.SKIP and p.owner.startswith("DaemonSet/")
            }
        )
    )


async def read_preflight(
    kube: Kube,
    nodes: Sequence[JSON],
    drain_opts: DrainOptions,
    inventory: Inventory,
    *,
    snapshot_dir: Path,
    backup_store: str | None,
) -> Preflight:
    from kubecare.nodes.drain_plan import plan_nodes

    names = [n["metadata"]["name"] for n in nodes]
    sem = asyncio.Semaphore(PLAN_CONCURRENCY)

    from kubecare.kube.unseen import note

    unseen: list[str] = []

    async def one(node: str) -> list[DrainPlan]:
        async with sem:
            return await plan_nodes(kube, [node], drain_opts)

    async def drains() -> list[list[DrainPlan]]:
        # Every node's read finishes (none left running unawaited) before a 403 is judged.
        got = await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
        failed = [e for e in got if isinstance(e, BaseException)]
        if forbidden := next((e for e in failed if isinstance(e, Forbidden)), None):
            unseen.append(
                note("what each drain would do", f"read what a drain reads ({forbidden.message})",
                     "no node's drain could be checked")
            )  # fmt: skip
            return []
        if failed:
            raise failed[0]
        return [g for g in got if not isinstance(g, BaseException)]

    per_node, (deprecated, notes) = await asyncio.gather(drains(), deprecated_in_use(kube, unseen))
    plans = [p for ps in per_node for p in ps]
    from kubecare.kube.identity import cluster_uid

    uid = await cluster_uid(kube)
    snap_age, snap_where = await asyncio.to_thread(newest_snapshot, snapshot_dir, uid)
    backup_age, backup_where = await asyncio.to_thread(
        newest_backup, backup_store, uid, kube.server
    )
    return Preflight(
        drain_errors={p.node: p.errors for p in plans if p.errors},
        pdb_blocked={p.node: b for p in plans if (b := _never_allowed(p, drain_opts.surge))},
        pdb_waits={
            p.node: p.holds for p in plans if p.holds and not _never_allowed(p, drain_opts.surge)
        },
        surges={p.node: p.to_surge for p in plans if drain_opts.surge and p.to_surge},
        daemonset_pods={p.node: owners for p in plans if (owners := _daemonset_pods(p))},
        single_node_workloads={
            p.node: tuple(r.workload for r in p.at_risk) for p in plans if p.at_risk
        },
        deprecated=tuple(deprecated),
        snapshot_age=snap_age,
        snapshot_where=snap_where,
        backup_age=backup_age,
        backup_where=backup_where,
        notes=tuple(notes + inventory.notes),
        unseen=tuple(unseen + inventory.unseen),
    )


async def make_plan(
    kube: Kube, target: Version | None, drain_opts: DrainOptions, **options: Any
) -> tuple[UpgradePlan, Inventory]:
    """Read the cluster and compute the plan (changes nothing): :func:`plan_with_preflight`'s
    plan and inventory (``options`` are its keywords)."""
    plan, inventory, _ = await plan_with_preflight(kube, target, drain_opts, **options)
    return plan, inventory


async def plan_with_preflight(
    kube: Kube,
    target: Version | None,
    drain_opts: DrainOptions,
    *,
    strategy: Strategy = Strategy.ROLLING,
    max_unavailable: str = "1",
    snapshot_dir: Path,
    backup_store: str | None = None,
    etcd_endpoints: Sequence[Any] = (),
    ignore_version_warnings: bool = False,
    allow_experimental: bool = False,
    allow_rc: bool = False,
    exempt: frozenset[str] = frozenset(),
) -> tuple[UpgradePlan, Inventory, Preflight]:
    """Read the cluster and compute the plan (changes nothing), with what was read for it.
    With no ``target``, the next minor's newest release kubecare knows
    (:func:`kubecare.versions.releases.default_target`)."""
    from kubecare.versions.inventory import collect, etcd_statuses

    statuses = await etcd_statuses(etcd_endpoints) if etcd_endpoints else []
    inventory, nodes = await asyncio.gather(
        collect(kube, etcd_status=statuses), kube.list_objects("/api/v1/nodes")
    )
    pre = await read_preflight(
        kube, nodes, drain_opts, inventory, snapshot_dir=snapshot_dir, backup_store=backup_store
    )
    reason = ""
    if target is None:
        target, reason = _default_target(inventory)
    static = static_pod_nodes(inventory)
    unlabelled = sorted(
        n["metadata"]["name"]
        for n in nodes
        if n["metadata"]["name"] in static
        and CONTROL_PLANE_LABEL not in (n["metadata"].get("labels") or {})
    )
    if unlabelled:
        note = (
            f"{', '.join(unlabelled)}: no {CONTROL_PLANE_LABEL} label, but control-plane mirror "
            "pods run there; planned as control-plane node(s)"
        )
        pre = dataclasses.replace(pre, notes=(*pre.notes, note))
    plan = build_plan(
        inventory.components,
        node_facts(nodes, static),
        target,
        pre,
        strategy=strategy,
        max_unavailable=max_unavailable,
        ignore_version_warnings=ignore_version_warnings,
        allow_experimental=allow_experimental,
        allow_rc=allow_rc,
        exempt=exempt,
    )
    plan.target_reason = reason
    return plan, inventory, pre


def static_pod_nodes(inventory: Inventory) -> set[str]:
    """Nodes running a control-plane component or etcd as a mirror pod (kubeadm's static pods)."""
    from kubecare.versions import skew

    names = (*skew.CONTROL_PLANE, skew.ETCD)
    return {c.node for c in inventory.components if c.name in names and c.node}


def _default_target(inventory: Inventory) -> tuple[Version, str]:
    from kubecare.upgrade.plan import oldest_apiserver
    from kubecare.versions.releases import default_target

    chosen = default_target(oldest_apiserver(inventory.components))
    return chosen.version, chosen.reason
