"""Discovery of every API group and resource the server serves (CRDs and aggregated APIs too).

Uses aggregated discovery (apidiscovery.k8s.io/v2: two requests for the whole server) and falls
back to one request per group-version on servers that do not offer it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from kubecare.kube.client import JSON, Kube

_AGGREGATED = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)


@dataclass(frozen=True)
class Subresource:
    """A subresource (``pods/eviction``) and the group/version of what it takes."""

    name: str
    group: str
    version: str
    verbs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ApiResource:
    """One resource type: where it lives and what can be done with it."""

    group: str  # "" for the core group
    version: str
    resource: str  # plural, e.g. "deployments"
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    subresources: tuple[Subresource, ...] = ()

    def subresource(self, name: str) -> Subresource | None:
        return next((s for s in self.subresources if s.name == name), None)

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        """The collection URL, across namespaces when ``namespace`` is None."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.resource}"
        return f"{base}/{self.resource}"


def parse_aggregated(doc: JSON, *, core: bool, all_versions: bool = False) -> list[ApiResource]:
    """Resources of an APIGroupDiscoveryList: the preferred version of each group, or with
    ``all_versions`` every served version, preferred first (a resource may exist only in a
    group's older version, e.g. an alpha kind beside a v1 group)."""
    out: list[ApiResource] = []
    for group in doc.get("items") or []:
        group_name = "" if core else (group.get("metadata") or {}).get("name", "")
        versions = group.get("versions") or []
        # the server lists versions in preference order
        for served in versions if all_versions else versions[:1]:
            out.extend(_aggregated_version(served, group_name))
    return out


def _aggregated_version(served: JSON, group_name: str) -> list[ApiResource]:
    version = served.get("version", "")
    out: list[ApiResource] = []
    for res in served.get("resources") or []:
        subs = tuple(
            Subresource(
                name=str(sub.get("subresource", "")),
                group=str((sub.get("responseKind") or {}).get("group", group_name)),
                version=str((sub.get("responseKind") or {}).get("version", version)),
                verbs=tuple(sub.get("verbs") or ()),
            )
            for sub in res.get("subresources") or []
        )
        out.append(
            ApiResource(
                group=group_name,
                version=version,
                resource=res.get("resource", ""),
                kind=(res.get("responseKind") or {}).get("kind", ""),
                namespaced=res.get("scope") == "Namespaced",
                verbs=tuple(res.get("verbs") or ()),
                subresources=subs,
            )
        )
    return out


def parse_resource_list(doc: JSON, group: str, version: str) -> list[ApiResource]:
    """Resources of a legacy APIResourceList; ``name/sub`` entries become their subresources."""
    subs: dict[str, list[Subresource]] = {}
    for r in doc.get("resources") or []:
        parent, slash, sub = str(r.get("name", "")).partition("/")
        if slash:
            subs.setdefault(parent, []).append(
                Subresource(
                    name=sub,
                    group=str(r.get("group") or group),
                    version=str(r.get("version") or version),
                    verbs=tuple(r.get("verbs") or ()),
                )
            )
    return [
        ApiResource(
            group=group,
            version=version,
            resource=r["name"],
            kind=r.get("kind", ""),
            namespaced=bool(r.get("namespaced")),
            verbs=tuple(r.get("verbs") or ()),
            subresources=tuple(subs.get(r["name"], ())),
        )
        for r in doc.get("resources") or []
        if "/" not in r.get("name", "")
    ]


async def discover(kube: Kube, *, all_versions: bool = False) -> list[ApiResource]:
    """Every resource type the server serves: the preferred version per group, or with
    ``all_versions`` every served version (preferred first)."""
    core = await kube.get_json("/api", accept=_AGGREGATED, what="API discovery (/api)")
    apis = await kube.get_json("/apis", accept=_AGGREGATED, what="API discovery (/apis)")
    if core.get("kind") == "APIGroupDiscoveryList" and apis.get("kind") == "APIGroupDiscoveryList":
        return parse_aggregated(core, core=True, all_versions=all_versions) + parse_aggregated(
            apis, core=False, all_versions=all_versions
        )
    targets = [("", v) for v in core.get("versions") or ["v1"]][:1]
    for group in apis.get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("version")
        versions = [v.get("version") for v in group.get("versions") or []]
        if preferred:
            targets.append((group["name"], preferred))
        if all_versions:
            targets += [(group["name"], v) for v in versions if v and v != preferred]

    async def one(group: str, version: str) -> list[ApiResource]:
        path = f"/apis/{group}/{version}" if group else f"/api/{version}"
        doc = await kube.get_json(path, what=f"API discovery ({path})")
        return parse_resource_list(doc, group, version)

    lists = await asyncio.gather(*(one(g, v) for g, v in targets))
    return [r for chunk in lists for r in chunk]


async def find(kube: Kube, group: str, resource: str) -> ApiResource | None:
    """The resource ``resource`` of ``group``, or None when the server does not serve it."""
    for r in await discover(kube):
        if r.group == group and r.resource == resource:
            return r
    return None


async def core_resource(kube: Kube, resource: str) -> ApiResource | None:
    """One resource of the core group (v1), from the one discovery request that serves it."""
    doc = await kube.get_json("/api", accept=_AGGREGATED, what="API discovery (/api)")
    if doc.get("kind") == "APIGroupDiscoveryList":
        found = parse_aggregated(doc, core=True)
    else:
        v1 = await kube.get_json("/api/v1", what="API discovery (/api/v1)")
        found = parse_resource_list(v1, "", "v1")
    return next((r for r in found if r.resource == resource), None)


async def eviction_supported(kube: Kube) -> bool:
    """Whether the server takes policy/v1 Evictions on pods/eviction (what the drain needs to
    honour PodDisruptionBudgets). kubectl asks the same question (drain.CheckEvictionSupport)."""
    pods = await core_resource(kube, "pods")
    sub = pods.subresource("eviction") if pods else None
    return sub is not None and sub.group == "policy" and sub.version == "v1"
