"""What a backup keeps, how each object is cleaned, and in which order a restore applies them.

Pure functions over plain dicts: the unit tests exercise every rule (tests/unit/test_backup_rules.py).
The defaults are documented in docs/backups.md; each has a flag to override it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

#: group-resources never backed up by default: the system recreates them, they belong to one
#: machine, or they are a record of the past rather than configuration. ``--include-resources``
#: naming one of them takes it back in.
SKIPPED_TYPES: dict[str, str] = {
    "events": "a record of the past, recreated by the components",
    "events.events.k8s.io": "a record of the past (the same objects as core events)",
    "leases.coordination.k8s.io": "leader election and node heartbeats, renewed every few seconds",
    "leasecandidates.coordination.k8s.io": "leader election candidates",
    "nodes": "registered by each kubelet; they belong to the machines, not the configuration",
    "componentstatuses": "computed on read, not stored",
    "csinodes.storage.k8s.io": "published by each node's kubelet",
    "volumeattachments.storage.k8s.io": "state of attach/detach on the current nodes",
    "certificatesigningrequests.certificates.k8s.io": "transient requests, garbage-collected",
    "ipaddresses.networking.k8s.io": "allocated by the apiserver for Services",
    "resourceslices.resource.k8s.io": "published by drivers for the current nodes",
    "nodes.metrics.k8s.io": "live metrics",
    "pods.metrics.k8s.io": "live metrics",
    "controllerrevisions.apps": "history recreated by the DaemonSet/StatefulSet controllers",
}

#: (group-resource, namespace, name) objects the apiserver itself maintains.
SYSTEM_OBJECTS = {
    ("services", "default", "kubernetes"),
    ("endpoints", "default", "kubernetes"),
    ("endpointslices.discovery.k8s.io", "default", "kubernetes"),
    ("servicecidrs.networking.k8s.io", "", "kubernetes"),
}

#: Server-set metadata a restore must not send (the apiserver assigns it anew).
SERVER_METADATA = (
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
)

_ENDPOINTS_MANAGED_BY = "endpoints.kubernetes.io/managed-by"  # endpoints_controller.go
_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"  # discovery/v1 well-known label
_SLICE_CONTROLLERS = ("endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io")
_MIRROR = "kubernetes.io/config.mirror"  # static pods' mirror pods (kubelet)
_RBAC_AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"  # bootstrap policy
_APF_AUTOUPDATE = "apf.kubernetes.io/autoupdate-spec"  # APF mandatory/suggested config
_PVC_BINDING_ANNOTATIONS = (
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
    "volume.kubernetes.io/selected-node",
)
_VOLUME_HELPER = "kubecare.io/volume-helper"  # kubecare.backup.volumes.HELPER_LABEL
_OWNED_KINDS_SKIPPED = {"pods", "replicasets.apps", "jobs.batch", "endpointslices.discovery.k8s.io"}


def type_name(group: str, resource: str) -> str:
    """kubectl's spelling: ``deployments.apps``, ``configmaps`` for the core group."""
    return f"{resource}.{group}" if group else resource


_RULED = {gr for gr, _, _ in SYSTEM_OBJECTS} | {
    "pods", "jobs.batch", "replicasets.apps", "endpoints", "endpointslices.discovery.k8s.io",
    "configmaps", "secrets", "apiservices.apiregistration.k8s.io",
}  # fmt: skip


def has_skip_rules(gr: str) -> bool:
    """Whether :func:`skip_reason` can leave out any object of this type (most types: no)."""
    return gr in _RULED or gr.endswith(
        (".rbac.authorization.k8s.io", ".flowcontrol.apiserver.k8s.io")
    )


def skip_reason(gr: str, obj: JSON) -> str | None:
    """Why an object is left out of a backup by default, or None to keep it."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    if (gr, ns, name) in SYSTEM_OBJECTS:
        return "maintained by the apiserver"
    if gr == "pods" and _MIRROR in annotations:
        return "mirror pod of a static pod (the manifest on the node is the source)"
    if gr == "pods" and _VOLUME_HELPER in labels:
        return "a helper pod of a kubecare volume backup or restore"
    status = obj.get("status") or {}
    if gr == "pods" and status.get("phase") in ("Succeeded", "Failed"):
        return "finished: restoring it would run it again"
    if gr == "jobs.batch" and any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in status.get("conditions") or []
    ):
        return "finished: restoring it would run it again"
    owners = meta.get("ownerReferences") or []
    if gr in _OWNED_KINDS_SKIPPED and any(o.get("controller") for o in owners):
        return "created by its controller, which is backed up"
    if gr == "endpoints" and labels.get(_ENDPOINTS_MANAGED_BY) == "endpoint-controller":
        return "maintained by the endpoints controller for its Service"
    if gr == "endpointslices.discovery.k8s.io" and labels.get(_SLICE_MANAGED_BY) in (
        _SLICE_CONTROLLERS
    ):
        return "maintained by the EndpointSlice controllers for its Service"
    if gr == "configmaps" and name == "kube-root-ca.crt":
        return "published in every namespace by the root CA publisher"
    if gr == "secrets" and obj.get("type") == "kubernetes.io/service-account-token":
        return "a token the token controller fills in; it is issued again on request"
    if gr.endswith(".rbac.authorization.k8s.io") and annotations.get(_RBAC_AUTOUPDATE) == "true":
        return "bootstrap RBAC, reconciled by the apiserver at start-up"
    if gr.endswith(".flowcontrol.apiserver.k8s.io") and annotations.get(_APF_AUTOUPDATE) == "true":
        return "API priority and fairness defaults, maintained by the apiserver"
    if gr == "apiservices.apiregistration.k8s.io" and not (obj.get("spec") or {}).get("service"):
        return "a local APIService, registered by the apiserver for its own groups"
    return None


def clean(obj: JSON) -> JSON:
    """The object as it is stored in a backup: server-set metadata and status removed (owner
    references too: the owners' UIDs do not survive a restore, and the garbage collector would
    delete an object whose owner UID does not exist). Modifies and returns ``obj``."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for field in SERVER_METADATA:
            meta.pop(field, None)
    obj.pop("status", None)
    return obj


# -- restore ---------------------------------------------------------------------------------

#: Restore order: each entry before the ones after it. Types not listed go after "ingresses"
#: in alphabetical order, then custom resources, then admission webhooks and policies last (so a
#: webhook restored early cannot intercept the rest of the restore).
RESTORE_ORDER: tuple[str, ...] = (
    "customresourcedefinitions.apiextensions.k8s.io",
    "namespaces",
    "storageclasses.storage.k8s.io",
    "persistentvolumes",
    "persistentvolumeclaims",
    "serviceaccounts",
    "clusterroles.rbac.authorization.k8s.io",
    "roles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "secrets",
    "configmaps",
    "resourcequotas",
    "limitranges",
    "priorityclasses.scheduling.k8s.io",
    "deployments.apps",
    "statefulsets.apps",
    "daemonsets.apps",
    "replicasets.apps",
    "cronjobs.batch",
    "jobs.batch",
    "pods",
    "services",
    "endpoints",
    "endpointslices.discovery.k8s.io",
    "ingressclasses.networking.k8s.io",
    "ingresses.networking.k8s.io",
)
RESTORE_LAST: tuple[str, ...] = (
    "mutatingwebhookconfigurations.admissionregistration.k8s.io",
    "validatingwebhookconfigurations.admissionregistration.k8s.io",
    "mutatingadmissionpolicies.admissionregistration.k8s.io",
    "mutatingadmissionpolicybindings.admissionregistration.k8s.io",
    "validatingadmissionpolicies.admissionregistration.k8s.io",
    "validatingadmissionpolicybindings.admissionregistration.k8s.io",
)


def restore_order(types: Iterable[str], custom: set[str], first: Sequence[str] = ()) -> list[str]:
    """``types`` in the order a restore applies them. ``first`` (``--order``) goes before all."""
    types = list(dict.fromkeys(types))
    rank = {t: i for i, t in enumerate(RESTORE_ORDER)}
    last = {t: i for i, t in enumerate(RESTORE_LAST)}
    head = [t for t in first if t in types]

    def key(t: str) -> tuple[int, int, str]:
        if t in rank:
            return (0, rank[t], t)
        if t in last:
            return (3, last[t], t)
        if t in custom:
            return (2, 0, t)
        return (1, 0, t)

    return head + sorted((t for t in types if t not in head), key=key)


def _specified_node_ports(obj: JSON) -> set[int]:
    """Node ports the user set explicitly, as far as the last-applied configuration tells
    (Velero's service action keeps exactly these)."""
    import orjson

    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    raw = annotations.get("kubectl.kubernetes.io/last-applied-configuration")
    if not raw:
        return set()
    try:
        applied = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return set()
    ports = ((applied.get("spec") or {}) if isinstance(applied, dict) else {}).get("ports") or []
    return {int(p["nodePort"]) for p in ports if isinstance(p, dict) and p.get("nodePort")}


def for_restore(gr: str, obj: JSON, namespace_map: dict[str, str]) -> tuple[JSON, list[str]]:
    """The object as a restore sends it, and notes on what was changed.

    - namespaces mapped (``--namespace-map``), also in RoleBinding subjects;
    - Services: allocated cluster IPs dropped (a new one is assigned; headless stays headless),
      node ports kept only where the last-applied configuration names them;
    - Jobs: the generated selector and controller-uid labels dropped (they name the old UID);
    - Pods: the node binding, the priority value (admission derives it), ephemeral containers
      (they cannot be set on create) and the injected service-account token volume dropped;
    - PersistentVolumeClaims: the binding and provisioner annotations dropped (Velero's
      pvc_action.go does the same), the PV controller sets them again;
    - PersistentVolumes: the claim reference's UID and resourceVersion dropped so the restored
      claim binds again.
    """
    out = copy.deepcopy(obj)
    notes: list[str] = []
    meta = out.setdefault("metadata", {})
    ns = meta.get("namespace")
    if ns and ns in namespace_map:
        meta["namespace"] = namespace_map[ns]
    if gr == "namespaces" and meta.get("name") in namespace_map:
        meta["name"] = namespace_map[meta["name"]]
        labels = meta.get("labels") or {}
        if "kubernetes.io/metadata.name" in labels:
            labels["kubernetes.io/metadata.name"] = meta["name"]
    spec = out.get("spec") if isinstance(out.get("spec"), dict) else None
    if gr in (
        "rolebindings.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
    ):
        for subject in out.get("subjects") or []:
            if subject.get("namespace") in namespace_map:
                subject["namespace"] = namespace_map[subject["namespace"]]
    if gr == "services" and spec is not None:
        if spec.get("clusterIP") not in (None, "None"):
            spec.pop("clusterIP", None)
            spec.pop("clusterIPs", None)
        keep = _specified_node_ports(obj)
        for port in spec.get("ports") or []:
            if port.get("nodePort") and port["nodePort"] not in keep:
                port.pop("nodePort")
        spec.pop("healthCheckNodePort", None)
    elif gr == "jobs.batch" and spec is not None and not spec.get("manualSelector"):
        spec.pop("selector", None)
        template_meta = (spec.get("template") or {}).get("metadata") or {}
        if meta.get("labels") and meta.get("labels") == template_meta.get("labels"):
            meta.pop("labels")  # defaulted from the template: the apiserver defaults them again
        for labels in (template_meta.get("labels"), meta.get("labels")):
            if isinstance(labels, dict):
                for key in ("controller-uid", "batch.kubernetes.io/controller-uid"):
                    labels.pop(key, None)
    elif gr == "pods" and spec is not None:
        spec.pop("nodeName", None)
        spec.pop("priority", None)  # admission sets it from priorityClassName; a stale one fails
        spec.pop("ephemeralContainers", None)  # validation refuses them on create
        injected = {
            v.get("name")
            for v in spec.get("volumes") or []
            if str(v.get("name", "")).startswith("kube-api-access-")
        }
        if injected:
            spec["volumes"] = [v for v in spec["volumes"] if v.get("name") not in injected]
            for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
                mounts = c.get("volumeMounts") or []
                c["volumeMounts"] = [m for m in mounts if m.get("name") not in injected]
    elif gr == "persistentvolumeclaims":
        annotations = meta.get("annotations") or {}
        for key in _PVC_BINDING_ANNOTATIONS:
            annotations.pop(key, None)
    elif gr == "persistentvolumes" and spec is not None:
        claim = spec.get("claimRef")
        if isinstance(claim, dict):
            claim.pop("uid", None)
            claim.pop("resourceVersion", None)
            if claim.get("namespace") in namespace_map:
                claim["namespace"] = namespace_map[claim["namespace"]]
    if meta.get("namespace") != ns and ns:
        notes.append(f"namespace {ns} -> {meta['namespace']}")
    return out, notes


@dataclass(frozen=True)
class Filters:
    """Which objects a backup, restore or diff takes (the same flags for all three)."""

    include_namespaces: tuple[str, ...] = ()
    exclude_namespaces: tuple[str, ...] = ()
    include_resources: tuple[str, ...] = ()
    exclude_resources: tuple[str, ...] = ()
    selector: str = ""
    include_cluster_resources: bool | None = None  # None: yes unless namespaces are named
    default_excludes: bool = True  # False: keep the objects skip_reason would leave out

    @property
    def by_namespace(self) -> bool:
        """Whether objects are taken or left by their namespace at all."""
        return bool(self.include_namespaces or self.exclude_namespaces)

    @property
    def cluster_resources(self) -> bool:
        if self.include_cluster_resources is None:
            return not self.include_namespaces
        return self.include_cluster_resources

    def namespace_ok(self, namespace: str) -> bool:
        if self.include_namespaces and namespace not in self.include_namespaces:
            return False
        return namespace not in self.exclude_namespaces

    def type_ok(self, gr: str, namespaced: bool, *, aliases: Iterable[str] = ()) -> bool:
        """Whether a type is taken: named by --include-resources (if given), not excluded,
        and cluster-scoped types only when cluster resources are included."""
        names = {gr, *aliases}
        if self.include_resources:
            if not names & set(self.include_resources) and "*" not in self.include_resources:
                return False
        elif gr in SKIPPED_TYPES:
            return False
        if names & set(self.exclude_resources):
            return False
        if not namespaced and not self.cluster_resources:
            # Namespaces named by --include-namespaces come along: a restore needs them.
            return gr == "namespaces" and bool(self.include_namespaces)
        return True

    def object_ok(self, gr: str, obj: JSON) -> bool:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "")
        if gr == "namespaces":
            return self.namespace_ok(str(meta.get("name") or ""))
        return not ns or self.namespace_ok(ns)

    def to_json(self) -> JSON:
        return {
            "includeNamespaces": list(self.include_namespaces),
            "excludeNamespaces": list(self.exclude_namespaces),
            "includeResources": list(self.include_resources),
            "excludeResources": list(self.exclude_resources),
            "selector": self.selector,
            "includeClusterResources": self.cluster_resources,
            "defaultExcludes": self.default_excludes,
        }
