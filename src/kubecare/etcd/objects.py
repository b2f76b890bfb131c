"""The Kubernetes objects inside a snapshot: list them, find one, decode it, clean it for a
re-create, and compare the snapshot with the live cluster.

Everything is read offline from the snapshot file (:mod:`kubecare.etcd.bbolt`); only
:func:`diff` and the re-create (``recover --apply``) talk to the apiserver.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backup.rules import SERVER_METADATA as _BACKUP_SERVER_METADATA
from ..errors import SnapshotError, UsageError
from .bbolt import open_bolt
from .k8sproto import ENCRYPTED_PREFIX, PROTOBUF_PREFIX, Decoded, Decoder
from .mvcc import key_value_meta, parse_key_value, revisions
from .snapshot import object_key

#: kubectl's short names for the resources people recover most.
SHORT_NAMES = {
    "cm": "configmaps",
    "deploy": "deployments",
    "svc": "services",
    "sa": "serviceaccounts",
    "ns": "namespaces",
    "no": "nodes",
    "po": "pods",
    "ds": "daemonsets",
    "sts": "statefulsets",
    "rs": "replicasets",
    "pvc": "persistentvolumeclaims",
    "pv": "persistentvolumes",
    "ing": "ingresses",
    "cj": "cronjobs",
    "crd": "customresourcedefinitions.apiextensions.k8s.io",
    "pdb": "poddisruptionbudgets",
    "netpol": "networkpolicies",
    "sc": "storageclasses",
    "ep": "endpoints",
}
#: Server-set fields a re-created object must not carry (the apiserver sets them anew): the
#: backup's list, but owner references, which clean() drops with a warning of its own.
SERVER_METADATA = tuple(f for f in _BACKUP_SERVER_METADATA if f != "ownerReferences")


@dataclass(frozen=True)
class Entry:
    """One live key of the snapshot."""

    key: str
    resource: str  # "deployments", "widgets.example.com"; "" for keys outside /registry
    namespace: str
    name: str
    create_revision: int
    mod_revision: int
    size: int
    encoding: str  # protobuf, json, encrypted, cbor, other


def _encoding(value: bytes) -> str:
    if value.startswith(ENCRYPTED_PREFIX):
        return "encrypted"
    if value.startswith(PROTOBUF_PREFIX):
        return "protobuf"
    if value[:1] == b"{":
        return "json"
    if value[:3] == b"\xd9\xd9\xf7":
        return "cbor"
    return "other"


def _live(path: Path, keep: Callable[[bytes], bool] | None = None) -> dict[bytes, _Live]:
    """key -> what the snapshot holds for it at its latest revision; the value itself only
    where ``keep(key)`` (memory stays flat for listings of a large snapshot)."""
    out: dict[bytes, _Live] = {}
    with open_bolt(path) as db:
        for rev, _, raw in revisions(db):
            meta = key_value_meta(raw)
            if rev.tombstone:
                out.pop(meta.key, None)
                continue
            value = parse_key_value(raw).value if keep is not None and keep(meta.key) else None
            out[meta.key] = _Live(
                meta.create_revision, meta.mod_revision, meta.value_size, meta.value_prefix, value
            )
    return out


@dataclass(frozen=True)
class _Live:
    created: int
    modified: int
    size: int
    prefix: bytes
    value: bytes | None


def _entry(key: bytes, live: _Live) -> Entry:
    ok = object_key(key)
    return Entry(
        key.decode("utf-8", "replace"),
        ok.resource,
        ok.namespace,
        ok.name,
        live.created,
        live.modified,
        live.size,
        _encoding(live.prefix),
    )


def with_values(path: Path, prefix: str = "") -> list[tuple[Entry, bytes]]:
    """Every live key under ``prefix`` with its value, in key order."""
    wanted = prefix.encode()
    live = _live(path, keep=lambda key: key.startswith(wanted))
    return [
        (_entry(key, item), item.value or b"")
        for key, item in sorted(live.items())
        if key.startswith(wanted)
    ]


def entries(path: Path, prefix: str = "") -> list[Entry]:
    """Every live key under ``prefix``, in key order (values are not kept)."""
    wanted = prefix.encode()
    return [
        _entry(key, item) for key, item in sorted(_live(path).items()) if key.startswith(wanted)
    ]


def resolve_key(ref: str, namespace: str | None) -> tuple[str | None, str, str]:
    """``/registry/...`` (a raw key) or ``RESOURCE/NAME`` -> (raw key or None, resource, name)."""
    if ref.startswith("/"):
        return ref, "", ""
    resource, sep, name = ref.partition("/")
    if not sep or not name or not resource:
        raise UsageError(f"{ref!r}: give RESOURCE/NAME (e.g. configmaps/app-config) or an etcd key")
    resource = SHORT_NAMES.get(resource.lower(), resource.lower())
    return None, resource, name


def _matches(entry_resource: str, wanted: str) -> bool:
    singular = entry_resource.split(".", 1)
    forms = {entry_resource, singular[0], singular[0].removesuffix("s")}
    if entry_resource.endswith("ies"):
        forms.add(entry_resource[:-3] + "y")
    if entry_resource.endswith("es"):
        forms.add(singular[0][:-2])
    return wanted in forms


def find(path: Path, ref: str, namespace: str | None) -> tuple[Entry, bytes]:
    """The entry ``ref`` names and its value; a clear error when it is not in the snapshot."""
    key, resource, name = resolve_key(ref, namespace)
    if key is not None:
        wanted = key.encode()
        hit = _live(path, keep=lambda k: k == wanted).get(wanted)
        if hit is None or hit.value is None:
            raise SnapshotError(f"key {key} is not in {path} (at its latest revision)")
        return _entry(wanted, hit), hit.value
    suffix = f"/{name}".encode()
    candidates = []
    for raw, item in _live(path, keep=lambda k: k.endswith(suffix)).items():
        ok = object_key(raw)
        if ok.name != name or not _matches(ok.resource, resource) or item.value is None:
            continue
        if namespace is not None and ok.namespace not in (namespace, ""):
            continue
        candidates.append((_entry(raw, item), item.value))
    namespaced = [c for c in candidates if c[0].namespace]
    if namespace is None and len({c[0].namespace for c in namespaced}) > 1:
        where = ", ".join(sorted(c[0].namespace for c in namespaced))
        default = [c for c in namespaced if c[0].namespace == "default"]
        if not default:
            raise UsageError(f"{ref} exists in several namespaces ({where}); add -n NAMESPACE")
        namespaced = default
    if not candidates:
        ns = f" in namespace {namespace}" if namespace else ""
        raise SnapshotError(
            f"{ref}{ns} is not in {path}; list what is there with: kubecare etcd snapshot ls {path}"
        )
    return (namespaced or candidates)[0]


def decode(entry: Entry, value: bytes, decoder: Decoder, keys: Any = None) -> Decoded:
    """The object as the apiserver would return it (decrypted first when ``keys`` can)."""
    if value.startswith(ENCRYPTED_PREFIX) and keys is not None:
        value = keys.decrypt(value, entry.key)
    return decoder.decode(value, entry.mod_revision)


def clean(obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The object as a re-create needs it: server-set metadata and status gone. Returns it
    with warnings (owner references dropped: their owner may be gone, and the garbage collector
    would delete an object whose owner does not exist)."""
    out = copy.deepcopy(obj)
    meta = out.setdefault("metadata", {})
    warnings = []
    for field in SERVER_METADATA:
        meta.pop(field, None)
    annotations = meta.get("annotations") or {}
    annotations.pop("deployment.kubernetes.io/revision", None)
    if "annotations" in meta and not annotations:
        meta.pop("annotations")
    if meta.get("ownerReferences"):
        owners = ", ".join(f"{o.get('kind')}/{o.get('name')}" for o in meta["ownerReferences"])
        warnings.append(f"dropped ownerReferences ({owners}): recreated as a standalone object")
        meta.pop("ownerReferences")
    out.pop("status", None)
    return out, warnings


def api_path(obj: dict[str, Any], entry: Entry, *, named: bool) -> str:
    """Where the object lives in the API: its apiVersion and the resource of its key."""
    api_version = str(obj.get("apiVersion") or "")
    plural = entry.resource.split(".", 1)[0]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    ns = f"/namespaces/{entry.namespace}" if entry.namespace else ""
    name = f"/{entry.name}" if named else ""
    return f"{base}{ns}/{plural}{name}"


# -- the live cluster against the snapshot ---------------------------------------------------

#: Objects that change all the time by design: left out of a diff unless asked for.
CHURN = ("events", "leases")
#: Resources served twice (cohabiting): the same objects under one etcd prefix.
COHABITING = {("events.k8s.io", "events")}
#: API groups whose objects are keyed /registry/<group>/<resource>/... (the extension servers).
EXTENSION_GROUPS = {"apiextensions.k8s.io", "apiregistration.k8s.io"}


@dataclass(frozen=True)
class Change:
    change: str  # added (live only), deleted (snapshot only), modified (changed since)
    resource: str
    namespace: str
    name: str
    snapshot_revision: int  # 0 when added
    live_revision: int  # 0 when deleted


def key_resource(group: str, resource: str, custom_groups: set[str]) -> str:
    """How the etcd key names a resource: built-ins by plural alone, the extension servers'
    and custom resources by plural.group."""
    if group in EXTENSION_GROUPS or group in custom_groups:
        return f"{resource}.{group}"
    return resource


def compare(
    snapshot: dict[tuple[str, str, str], int], live: dict[tuple[str, str, str], int]
) -> list[Change]:
    """Pure: (resource, namespace, name) -> mod revision on both sides."""
    out = []
    for k in sorted(set(snapshot) | set(live)):
        s, lv = snapshot.get(k, 0), live.get(k, 0)
        if not lv:
            out.append(Change("deleted", *k, s, 0))
        elif not s:
            out.append(Change("added", *k, 0, lv))
        elif s != lv:
            out.append(Change("modified", *k, s, lv))
    return out


def snapshot_index(items: list[Entry], resources: set[str]) -> dict[tuple[str, str, str], int]:
    return {
        (e.resource, e.namespace, e.name): e.mod_revision for e in items if e.resource in resources
    }


def iter_changes(changes: list[Change]) -> Iterator[tuple[str, dict[str, int]]]:
    """Per resource type: counts of added, deleted and modified objects."""
    per: dict[str, dict[str, int]] = {}
    for c in changes:
        per.setdefault(c.resource, {"added": 0, "deleted": 0, "modified": 0})[c.change] += 1
    yield from sorted(per.items())


#: Listable through the API but not kept in etcd.
NOT_STORED = {"componentstatuses"}


async def live_index(
    kube: Any, exclude: set[str]
) -> tuple[dict[tuple[str, str, str], int], set[str], list[str]]:
    """(etcd resource name, namespace, name) -> resourceVersion of every object the API lists,
    the resource names listed (empty ones included), and the types that could not be listed.
    Aggregated APIs (an APIService with a service behind it, e.g. metrics-server) are not in
    this etcd and are left out."""
    import asyncio

    from ..kube.discovery import discover

    found = await discover(kube)
    crds, _ = await kube.list_all("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    custom = {str((c.get("spec") or {}).get("group")) for c in crds}
    services, _ = await kube.list_all("/apis/apiregistration.k8s.io/v1/apiservices")
    aggregated = {
        (str(a["spec"].get("group") or ""), str(a["spec"].get("version") or ""))
        for a in services
        if (a.get("spec") or {}).get("service")
    }
    failed: list[str] = []
    sem = asyncio.Semaphore(8)
    out: dict[tuple[str, str, str], int] = {}

    async def one(path: str, name: str) -> None:
        from ..errors import KubecareError

        async with sem:
            try:
                items, _ = await kube.list_all(path)
            except KubecareError as e:
                failed.append(f"{name}: {e}")
                return
        for item in items:
            meta = item.get("metadata") or {}
            out[(name, str(meta.get("namespace") or ""), str(meta.get("name")))] = int(
                meta.get("resourceVersion") or 0
            )

    jobs = []
    listed: set[str] = set()
    for r in found:
        name = key_resource(r.group, r.resource, custom)
        if (
            "list" not in r.verbs
            or (r.group, r.resource) in COHABITING
            or r.resource in NOT_STORED
            or name in exclude
            or r.resource in exclude
            or (r.group, r.version) in aggregated
        ):
            continue
        jobs.append(one(r.path(), name))
        listed.add(name)
    await asyncio.gather(*jobs)
    for problem in failed:  # not compared: neither "deleted" nor "added"
        listed.discard(problem.split(":", 1)[0])
    return out, listed, failed
