"""``kubecare backup diff``: the archive against the live cluster, object by object — only in
the archive (deleted since), only in the cluster (created since), and changed, with the fields
that changed. Both sides are cleaned the same way (server-set metadata and status removed, the
same skip rules), so what remains is configuration someone changed.

Only the types in the archive and the namespaces/selector it was taken with are compared.
Encrypted Secrets are compared when an identity is given; otherwise only their presence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import Forbidden, NotFound
from ..kube.client import JSON, Kube
from . import labels
from .archive import ArchiveError, ArchiveReader, parse_member_path
from .restore import api_path, check_identity, load_object, selected_types
from .rules import Filters, clean, skip_reason, type_name
from .verify import checked_members


@dataclass(frozen=True)
class FieldChange:
    path: str
    archived: Any  # None when the field was added since
    live: Any  # None when the field was removed since


@dataclass
class ObjectDiff:
    type: str
    namespace: str
    name: str
    change: str  # only-in-archive, only-in-cluster, changed, not-compared
    fields: list[FieldChange] = field(default_factory=list)
    reason: str = ""  # why not compared; for only-in-archive, why the type itself is absent


_MISSING = object()


def field_changes(archived: Any, live: Any, path: str = "") -> Iterator[FieldChange]:
    """Pure: the leaves that differ, as dotted paths (``spec.replicas``,
    ``spec.template.spec.containers[0].image``, ``data.key``)."""
    if isinstance(archived, dict) and isinstance(live, dict):
        for key in list(archived) + [k for k in live if k not in archived]:
            sub = f"{path}.{key}" if path else str(key)
            a, b = archived.get(key, _MISSING), live.get(key, _MISSING)
            if a is _MISSING:
                yield FieldChange(sub, None, b)
            elif b is _MISSING:
                yield FieldChange(sub, a, None)
            else:
                yield from field_changes(a, b, sub)
    elif isinstance(archived, list) and isinstance(live, list) and len(archived) == len(live):
        for i, (a, b) in enumerate(zip(archived, live, strict=True)):
            yield from field_changes(a, b, f"{path}[{i}]")
    elif archived != live:
        yield FieldChange(path, archived, live)


async def diff_backup(
    kube: Kube,
    reader: ArchiveReader,
    filters: Filters,
    *,
    decrypt: Callable[[bytes, str], bytes] | None = None,
) -> list[ObjectDiff]:
    manifest = reader.manifest
    taken = manifest.get("filters") or {}
    # The archive's own filters bound what "only in the cluster" can mean.
    scope = Filters(
        include_namespaces=tuple(
            filters.include_namespaces or taken.get("includeNamespaces") or ()
        ),
        exclude_namespaces=tuple(
            set(filters.exclude_namespaces) | set(taken.get("excludeNamespaces") or ())
        ),
        include_resources=filters.include_resources,
        exclude_resources=filters.exclude_resources,
        selector=filters.selector or str(taken.get("selector") or ""),
        include_cluster_resources=filters.include_cluster_resources,
        default_excludes=bool(taken.get("defaultExcludes", True)),
    )
    selector = labels.parse(scope.selector)
    out: list[ObjectDiff] = []
    for entry in selected_types(manifest, scope):
        gr = type_name(str(entry.get("group") or ""), str(entry["resource"]))
        archived: dict[tuple[str, str], JSON | None] = {}  # None: not compared
        unreadable: dict[tuple[str, str], str] = {}
        for member in checked_members(reader, entry):
            _, _, ns, name, encrypted = parse_member_path(member.path)
            scope_ns = name if gr == "namespaces" else ns
            in_scope = not scope_ns or scope.namespace_ok(scope_ns)
            if encrypted and decrypt is None:
                if in_scope:  # labels unknown without the key: present, not compared
                    archived[(ns, name)] = None
                continue
            data = decrypt(member.data, member.path) if encrypted and decrypt else member.data
            try:
                obj = load_object(data, reader.name, member.path)
                check_identity(obj, ns, name, bool(entry.get("namespaced")), member.path)
            except ArchiveError as e:
                archived[(ns, name)], unreadable[(ns, name)] = None, e.message
                continue
            if scope.object_ok(gr, obj) and labels.matches(
                selector, (obj.get("metadata") or {}).get("labels")
            ):
                archived[(ns, name)] = obj
        live: dict[tuple[str, str], JSON] = {}
        params = {"labelSelector": scope.selector} if scope.selector else None
        ns_path = scope.include_namespaces[0] if len(scope.include_namespaces) == 1 else ""
        gone = ""  # why the whole type is absent from the cluster
        try:
            async for obj in kube.list_items(api_path(entry, ns_path), params=params):
                if not scope.object_ok(gr, obj) or (
                    scope.default_excludes and skip_reason(gr, obj)
                ):
                    continue
                meta = obj.get("metadata") or {}
                key = (str(meta.get("namespace") or ""), str(meta.get("name")))
                obj = {"apiVersion": _api_version(entry), "kind": entry.get("kind"), **clean(obj)}
                live[key] = obj
        except NotFound:
            # The disaster diff exists for: the CRD (or the API version) is gone, and with it
            # every object of the type.
            gone = f"{gr} {_api_version(entry)} is not served by the cluster any more"
        except Forbidden as e:
            for ns, name in sorted(archived):
                why = f"cannot list {gr} in the cluster: forbidden ({e.message})"
                out.append(ObjectDiff(gr, ns, name, "not-compared", reason=why))
            continue
        for key in sorted(set(archived) | set(live)):
            ns, name = key
            if key not in live:
                out.append(ObjectDiff(gr, ns, name, "only-in-archive", reason=gone))
            elif key not in archived:
                out.append(ObjectDiff(gr, ns, name, "only-in-cluster"))
            elif archived[key] is None:
                why = unreadable.get(key, "encrypted: pass --identity to compare")
                out.append(ObjectDiff(gr, ns, name, "not-compared", reason=why))
            else:
                changes = list(field_changes(archived[key], live[key]))
                if gr == "secrets":  # say which keys changed, never their values
                    changes = [
                        FieldChange(c.path, _hidden(c.archived), _hidden(c.live))
                        if c.path.startswith(("data", "stringData", "metadata.annotations"))
                        else c
                        for c in changes
                    ]
                if changes:
                    out.append(ObjectDiff(gr, ns, name, "changed", changes))
    return out


def _api_version(entry: JSON) -> str:
    group = str(entry.get("group") or "")
    return f"{group}/{entry['version']}" if group else str(entry["version"])


def _hidden(value: Any) -> Any:
    return None if value is None else "(hidden)"
