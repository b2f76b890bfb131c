"""The raw layer against the real apiserver: discovery (CRDs included), paging, versions."""

from __future__ import annotations

import uuid

import pytest

from kubecare.errors import NotFound
from kubecare.kube import Kube
from kubecare.kube.discovery import discover, find
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION

from .workloads import wait_for, widget_crd

pytestmark = pytest.mark.e2e


async def test_discovery_finds_builtin_and_custom_resources(kube: Kube) -> None:
    group = f"t{uuid.uuid4().hex[:6]}.kubecare.test"
    crd = widget_crd(group)
    await kube.request_json(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=crd
    )
    try:
        resources = {(r.group, r.resource): r for r in await discover(kube)}
        assert resources[("", "pods")].namespaced and "list" in resources[("", "pods")].verbs
        assert not resources[("", "nodes")].namespaced
        assert resources[("policy", "poddisruptionbudgets")].version == "v1"
        assert resources[("coordination.k8s.io", "leases")].kind == "Lease"

        async def custom_seen() -> object:
            return await find(kube, group, "widgets")

        widget = await wait_for(custom_seen, timeout=30)
        assert (
            widget.kind == "Widget"
            and widget.path("ns") == f"/apis/{group}/v1/namespaces/ns/widgets"
        )
    finally:
        await kube.request_json(
            "DELETE", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{group}"
        )


async def test_paged_lists_return_everything_once(kube: Kube, namespace: str) -> None:
    for i in range(7):
        await kube.request_json(
            "POST",
            f"/api/v1/namespaces/{namespace}/configmaps",
            body={"metadata": {"name": f"cm-{i}"}},
        )
    before = kube.requests
    items, version = await kube.list_all(f"/api/v1/namespaces/{namespace}/configmaps", chunk_size=2)
    names = sorted(i["metadata"]["name"] for i in items if i["metadata"]["name"].startswith("cm-"))
    assert names == [f"cm-{i}" for i in range(7)]
    assert version and kube.requests - before >= 4  # 2 per page: really paged
    streamed = [
        i["metadata"]["name"]
        async for i in kube.list_items(f"/api/v1/namespaces/{namespace}/configmaps", chunk_size=3)
    ]
    assert sorted(n for n in streamed if n.startswith("cm-")) == names


async def test_version_and_not_found(kube: Kube) -> None:
    assert (await kube.version())["gitVersion"] == f"v{DEFAULT_KUBE_VERSION}"
    with pytest.raises(NotFound, match='node "nope" not found'):
        await kube.get_json("/api/v1/nodes/nope", what='node "nope"')
