"""The sandbox's volume provisioner: a local-path style external provisioner (Rancher's
local-path-provisioner, in small), so a PersistentVolumeClaim binds on a real node and a pod's
data lands in that node's own tree.

It acts the way sig-storage-lib-external-provisioner's controller does, on the annotations the
real controllers set: the scheduler picks a node for the claim's first pod and writes
``volume.kubernetes.io/selected-node`` (the class is WaitForFirstConsumer); the PV controller
writes ``volume.kubernetes.io/storage-provisioner`` with the class's provisioner name; this makes
the PersistentVolume ``pvc-<claim uid>`` — a hostPath under :data:`VOLUMES` on that node
(DirectoryOrCreate: the kubelet makes the directory), pinned to it by node affinity, with the
claim reference — and the PV controller binds the two. A released volume whose policy is Delete
has its directory removed from the node's tree and is deleted.

Runs inside the static pod runner (:mod:`kubecare.sandbox.runner`), next to the mirror pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubecare.kube.objects import volume_node
from kubecare.sandbox.realnode import VOLUMES  # on the node; its tree binds it (nodeinit)

PROVISIONER = "kubecare.local/local-path"
CLASS = "kubecare-local"
ANN_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_PROVISIONER_BETA = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_MIGRATED_TO = "pv.kubernetes.io/migrated-to"
HOSTNAME = "kubernetes.io/hostname"

JSON = dict[str, Any]


def storage_class() -> JSON:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "labels": {"app.kubernetes.io/managed-by": "kubecare-sandbox"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


@dataclass(frozen=True)
class Provision:
    claim: str  # namespace/name, for the log
    volume: JSON


@dataclass(frozen=True)
class Reclaim:
    name: str
    node: str
    path: str
    uid: str  # the PV's, a precondition of its delete


def volume_name(claim: JSON) -> str:
    return f"pvc-{claim['metadata']['uid']}"


def volume_for(claim: JSON, node: str, reclaim_policy: str = "Delete") -> JSON:
    meta, spec = claim["metadata"], claim.get("spec") or {}
    name = volume_name(claim)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "annotations": {ANN_PROVISIONED_BY: PROVISIONER}},
        "spec": {
            "capacity": {
                "storage": ((spec.get("resources") or {}).get("requests") or {})["storage"]
            },
            "accessModes": list(spec.get("accessModes") or ["ReadWriteOnce"]),
            "persistentVolumeReclaimPolicy": reclaim_policy,
            "storageClassName": spec.get("storageClassName") or CLASS,
            "volumeMode": "Filesystem",
            "hostPath": {"path": f"{VOLUMES}/{name}", "type": "DirectoryOrCreate"},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": HOSTNAME, "operator": "In", "values": [node]}
                            ]
                        }
                    ]
                }
            },
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
        },
    }


_VOLUME = re.compile(r"^pvc-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NODE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def claim_class(claim: JSON) -> str:
    """The claim's class as util.GetPersistentVolumeClaimClass reads it (beta annotation
    first)."""
    ann = (claim.get("metadata") or {}).get("annotations") or {}
    if "volume.beta.kubernetes.io/storage-class" in ann:
        return str(ann["volume.beta.kubernetes.io/storage-class"])
    return str((claim.get("spec") or {}).get("storageClassName") or "")


def should_provision(claim: JSON, classes: dict[str, JSON]) -> bool:
    """The library's shouldProvision, in its order: not bound to a volume yet; the GA
    provisioner annotation (the beta one only when the GA key is absent) names this
    provisioner; the claim's class exists; WaitForFirstConsumer: a node was selected. A local
    volume needs that node whatever the class says, so an Immediate class's claim is not
    provisioned (the library would; there is no node to put it on)."""
    meta, spec = claim.get("metadata") or {}, claim.get("spec") or {}
    if spec.get("volumeName"):
        return False
    ann = meta.get("annotations") or {}
    wanted = ann[ANN_PROVISIONER] if ANN_PROVISIONER in ann else ann.get(ANN_PROVISIONER_BETA)
    if wanted != PROVISIONER:
        return False
    if claim_class(claim) not in classes:
        return False
    return bool(ann.get(ANN_SELECTED_NODE))


def can_provision(claim: JSON) -> bool:
    """canProvision: file-system volumes only (a hostPath cannot be a block device)."""
    return bool((claim.get("spec") or {}).get("volumeMode", "Filesystem") == "Filesystem")


def is_provisioner_for_volume(volume: JSON) -> bool:
    """isProvisionerForVolume for an in-tree (hostPath) volume: its provisioned-by (or
    migrated-to) annotation names this provisioner; a statically made volume is never ours."""
    ann = (volume.get("metadata") or {}).get("annotations") or {}
    if ANN_PROVISIONED_BY in ann:
        return PROVISIONER in (ann.get(ANN_PROVISIONED_BY), ann.get(ANN_MIGRATED_TO))
    return ann.get(ANN_MIGRATED_TO) == PROVISIONER


def should_delete(volume: JSON) -> bool:
    """shouldDelete without the finalizer option: Released (not Failed), policy Delete, not
    being deleted already."""
    meta, spec = volume.get("metadata") or {}, volume.get("spec") or {}
    if meta.get("deletionTimestamp"):
        return False
    if (volume.get("status") or {}).get("phase") != "Released":
        return False
    return bool(spec.get("persistentVolumeReclaimPolicy") == "Delete")


def plan(
    claims: list[JSON], volumes: list[JSON], classes: dict[str, JSON]
) -> tuple[list[Provision], list[Reclaim]]:
    """What to create and what to reclaim, from the claims, volumes and classes as they are."""
    existing = {v["metadata"]["name"] for v in volumes}
    provision = []
    for c in claims:
        meta, spec = c.get("metadata") or {}, c.get("spec") or {}
        if (
            not should_provision(c, classes)
            or not can_provision(c)
            or not ((spec.get("resources") or {}).get("requests") or {}).get("storage")
            or volume_name(c) in existing  # provisionClaimOperation: made already
        ):
            continue
        cls = classes[claim_class(c)]
        if cls.get("provisioner") != PROVISIONER:
            continue  # provisionClaimOperation: the class must be this provisioner's too
        node = (meta.get("annotations") or {})[ANN_SELECTED_NODE]
        volume = volume_for(c, node, str(cls.get("reclaimPolicy") or "Delete"))
        volume["spec"]["storageClassName"] = claim_class(c)
        provision.append(Provision(f"{meta['namespace']}/{meta['name']}", volume))
    reclaim = []
    for v in volumes:
        if not is_provisioner_for_volume(v) or not should_delete(v):
            continue
        node, name = volume_node(v), str(v["metadata"]["name"])
        path = ((v.get("spec") or {}).get("hostPath") or {}).get("path", "")
        # Only what this provisioner made: its own name, its own path, a node name that is a
        # name (a PV anyone can create must never steer the removal elsewhere).
        if node and _NODE.match(node) and _VOLUME.match(name) and path == f"{VOLUMES}/{name}":
            reclaim.append(Reclaim(name, node, path, v["metadata"].get("uid", "")))
    return provision, reclaim


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


class LocalPath:
    """The loop: informers on claims and volumes, one pass a second (or on their change)."""

    def __init__(self, client: Callable[[], Any], node_root: Callable[[str], Path | None],
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self._client, self._node_root, self._log = client, node_root, log
        self._class_made = False

    async def run(self) -> None:
        from kubecare.errors import KubecareError, Unreachable

        last = ""
        while True:
            try:
                await self.sync()
                last = ""
            except Unreachable:
                pass  # the apiserver is not there (yet): again on the next turn
            except KubecareError as e:  # an answer: said once, tried again each turn
                if e.message != last:
                    self._log(f"volumes: {e.message}")
                last = e.message
            except Exception as e:  # never let one odd answer stop provisioning for good
                self._log(f"volumes: {type(e).__name__}: {e}")
            await asyncio.sleep(1.0)

    async def sync(self) -> None:
        from kubecare.errors import Conflict, NotFound

        kube = self._client()
        if not self._class_made:
            with contextlib.suppress(Conflict):
                await kube.request_json(
                    "POST", "/apis/storage.k8s.io/v1/storageclasses", body=storage_class(),
                    what=f"storageclass {CLASS}",
                )  # fmt: skip
            self._class_made = True
        claims, volumes, class_list = await asyncio.gather(
            kube.list_objects("/api/v1/persistentvolumeclaims", what="list PVCs"),
            kube.list_objects("/api/v1/persistentvolumes", what="list PVs"),
            kube.list_objects("/apis/storage.k8s.io/v1/storageclasses", what="list classes"),
        )
        classes = {c["metadata"]["name"]: c for c in class_list}
        provision, reclaim = plan(claims, volumes, classes)
        for p in provision:
            with contextlib.suppress(Conflict):  # made by an earlier pass the list did not show
                await kube.request_json(
                    "POST", "/api/v1/persistentvolumes", body=p.volume, what=f"PV for {p.claim}"
                )
                self._log(f"volumes: {p.volume['metadata']['name']} for claim {p.claim}")
        for r in reclaim:
            root = self._node_root(r.node)
            if root is not None:
                base = (root / VOLUMES.lstrip("/")).resolve()
                target = (root / r.path.lstrip("/")).resolve()
                if target.parent != base:
                    continue  # never outside the node's volumes (a symlink in the tree)
                try:
                    await asyncio.to_thread(_remove, target)
                except OSError as e:
                    self._log(f"volumes: cannot remove {target}: {e}; {r.name} kept")
                    continue
            with contextlib.suppress(NotFound, Conflict):
                await kube.request_json(
                    "DELETE", f"/api/v1/persistentvolumes/{r.name}",
                    body={"preconditions": {"uid": r.uid}}, what=f"PV {r.name}",
                )  # fmt: skip
                self._log(f"volumes: {r.name} reclaimed (its data on {r.node} removed)")
