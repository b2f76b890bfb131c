"""Small builders for the workloads e2e tests create (plain dicts, sent through the raw client)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kubecare.kube import JSON, Kube


def deployment(name: str, replicas: int, *, node_selector: dict[str, str] | None = None) -> JSON:
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        "terminationGracePeriodSeconds": 0,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


async def create(kube: Kube, path: str, obj: JSON) -> JSON:
    resp = await kube.http.post(path, json=obj)
    resp.raise_for_status()
    result: JSON = resp.json()
    return result


async def pods(kube: Kube, namespace: str, selector: str) -> list[JSON]:
    return [
        p
        async for p in kube.list_items(
            f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": selector}
        )
    ]


def is_ready(pod: JSON) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


async def wait_for(predicate: Any, timeout: float = 60, interval: float = 0.2) -> Any:
    """Poll the async ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)
