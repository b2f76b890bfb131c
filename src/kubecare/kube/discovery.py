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
class ApiResource:
    """One resource type: where it lives and what can be done with it."""

    group: str  # "" for the core group
    version: str
    resource: str  # plural, e.g. "deployments"
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        """The collection URL, across namespaces when ``namespace`` is None."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            return f"{base}/namespaces/{namespace}/{self.resource}"
        return f"{base}/{self.resource}"


def parse_aggregated(doc: JSON, *, core: bool) -> list[ApiResource]:
    """Resources of an APIGroupDiscoveryList (preferred version of each group, no subresources)."""
    out: list[ApiResource] = []
    for group in doc.get("items") or []:
        group_name = "" if core else (group.get("metadata") or {}).get("name", "")
        versions = group.get("versions") or []
        if not versions:
            continue
        preferred = versions[0]  # the server lists versions in preference order
        for res in preferred.get("resources") or []:
            out.append(
                ApiResource(
                    group=group_name,
                    version=preferred.get("version", ""),
                    resource=res.get("resource", ""),
                    kind=(res.get("responseKind") or {}).get("kind", ""),
                    namespaced=res.get("scope") == "Namespaced",
                    verbs=tuple(res.get("verbs") or ()),
                )
            )
    return out


def parse_resource_list(doc: JSON, group: str, version: str) -> list[ApiResource]:
    """Resources of a legacy APIResourceList, without subresources (names containing '/')."""
    return [
        ApiResource(
            group=group,
            version=version,
            resource=r["name"],
            kind=r.get("kind", ""),
            namespaced=bool(r.get("namespaced")),
            verbs=tuple(r.get("verbs") or ()),
        )
        for r in doc.get("resources") or []
        if "/" not in r.get("name", "")
    ]


async def discover(kube: Kube) -> list[ApiResource]:
    """Every resource type the server serves, preferred version per group."""
    core = await kube.get_json("/api", accept=_AGGREGATED, what="API discovery (/api)")
    apis = await kube.get_json("/apis", accept=_AGGREGATED, what="API discovery (/apis)")
    if core.get("kind") == "APIGroupDiscoveryList" and apis.get("kind") == "APIGroupDiscoveryList":
        return parse_aggregated(core, core=True) + parse_aggregated(apis, core=False)
    targets = [("", v) for v in core.get("versions") or ["v1"]][:1]
    for group in apis.get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("version")
        if preferred:
            targets.append((group["name"], preferred))

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
