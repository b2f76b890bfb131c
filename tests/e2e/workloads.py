"""Builders for the workloads e2e tests create (plain dicts, sent through the raw client).

Every pod gets a ``role`` label (what it stands for in a scenario) and can be pinned to a pool of
test-owned nodes (a label and a matching NoSchedule taint), so tests never touch each other's pods.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from kubecare.kube import JSON, Kube
from kubecare.kube.objects import is_pod_ready

POOL_KEY = "kubecare.test/pool"


@dataclass(frozen=True)
class Pool:
    """Test-owned nodes: pods that select ``pool`` and tolerate its taint land only there."""

    name: str
    nodes: tuple[str, ...]

    def pod_spec(self, *, node: str | None = None, extra: dict[str, Any] | None = None) -> JSON:
        spec: JSON = {
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {POOL_KEY: self.name}
            | ({"kubernetes.io/hostname": node} if node else {}),
            "tolerations": [
                {"key": POOL_KEY, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}
            ],
        }
        spec.update(extra or {})
        return spec


def template(role: str, spec: JSON, annotations: dict[str, str] | None = None) -> JSON:
    return {"metadata": {"labels": {"role": role}, "annotations": annotations or {}}, "spec": spec}


def deployment(
    name: str, replicas: int, spec: JSON | None = None, annotations: dict[str, str] | None = None
) -> JSON:
    spec = spec or {
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        "terminationGracePeriodSeconds": 0,
    }
    tmpl = template(name, spec, annotations)
    tmpl["metadata"]["labels"]["app"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": tmpl,
        },
    }


def statefulset(name: str, replicas: int, spec: JSON) -> JSON:
    tmpl = template(name, spec)
    tmpl["metadata"]["labels"]["app"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": tmpl,
        },
    }


def daemonset(name: str, spec: JSON) -> JSON:
    tmpl = template(name, spec)
    tmpl["metadata"]["labels"]["app"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": tmpl},
    }


def job(name: str, spec: JSON) -> JSON:
    spec = {**spec, "restartPolicy": "Never"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": template(name, spec), "backoffLimit": 0},
    }


def pod(
    name: str,
    spec: JSON,
    *,
    annotations: dict[str, str] | None = None,
    owner: JSON | None = None,
    finalizers: list[str] | None = None,
) -> JSON:
    meta: JSON = {"name": name, "labels": {"role": name}, "annotations": annotations or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    if finalizers:
        meta["finalizers"] = finalizers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def pdb(
    name: str,
    selector: dict[str, str],
    *,
    max_unavailable: int | None = None,
    min_available: int | None = None,
) -> JSON:
    spec: JSON = {"selector": {"matchLabels": selector}}
    if max_unavailable is not None:
        spec["maxUnavailable"] = max_unavailable
    if min_available is not None:
        spec["minAvailable"] = min_available
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": spec,
    }


_PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "Job": "/apis/batch/v1/namespaces/{ns}/jobs",
    "Pod": "/api/v1/namespaces/{ns}/pods",
    "PodDisruptionBudget": "/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
}


async def apply(kube: Kube, namespace: str, *objs: JSON) -> None:
    for obj in objs:
        await kube.request_json("POST", _PATHS[obj["kind"]].format(ns=namespace), body=obj)


async def create(kube: Kube, path: str, obj: JSON) -> JSON:
    return await kube.request_json("POST", path, body=obj)


async def pods(kube: Kube, namespace: str, selector: str | None = None) -> list[JSON]:
    params = {"labelSelector": selector} if selector else None
    return [p async for p in kube.list_items(f"/api/v1/namespaces/{namespace}/pods", params=params)]


async def system_pods(kube: Kube, node: str) -> dict[str, str]:
    """{"kube-system/pod": role} of the running kube-system DaemonSet pods on ``node`` (kubeadm's
    kube-proxy, as on every real cluster), their role being their ``k8s-app`` label."""
    return {
        f"kube-system/{p['metadata']['name']}": p["metadata"]["labels"].get("k8s-app", "?")
        for p in await pods(kube, "kube-system", "k8s-app=kube-proxy")
        if p["spec"].get("nodeName") == node
        and p["status"].get("phase") == "Running"
        and not p["metadata"].get("deletionTimestamp")
    }


async def wait_system_pods(kube: Kube, node: str, timeout: float = 120) -> dict[str, str]:
    """Wait until kube-proxy runs on ``node`` (a joined node gets it from its DaemonSet). On a
    loaded machine the DaemonSet controller, the scheduler and kwok can each lag; when it never
    comes, the error says where it stopped."""
    try:
        result: dict[str, str] = await wait_for(lambda: system_pods(kube, node), timeout)
    except AssertionError:
        ds = await kube.get_json("/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy")
        mine = [
            (p["metadata"]["name"], p["status"].get("phase"), p["spec"].get("nodeName"))
            for p in await pods(kube, "kube-system", "k8s-app=kube-proxy")
            if node in (p["spec"].get("nodeName"), str(p["spec"].get("affinity")))
        ]
        n = await kube.get_json(f"/api/v1/nodes/{node}")
        raise AssertionError(
            f"no running kube-proxy on {node} within {timeout}s: DaemonSet status "
            f"{ds.get('status')}; its pods for the node {mine}; the node's conditions "
            f"{[(c['type'], c['status']) for c in n['status'].get('conditions', [])]}, "
            f"taints {n['spec'].get('taints')}"
        ) from None
    return result


async def cordoned(kube: Kube, node: str) -> bool:
    """Whether ``node`` is marked unschedulable, read from the API."""
    return bool(
        ((await kube.get_json(f"/api/v1/nodes/{node}")).get("spec") or {}).get("unschedulable")
    )


def is_ready(p: JSON) -> bool:
    return is_pod_ready(p)


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


async def wait_running(kube: Kube, namespace: str, count: int, timeout: float = 60) -> list[JSON]:
    """Wait until ``count`` pods of the namespace are Running and Ready (terminating ones excluded)."""

    async def check() -> list[JSON] | None:
        ps = [p for p in await pods(kube, namespace) if not p["metadata"].get("deletionTimestamp")]
        ready = [
            p
            for p in ps
            if p["status"].get("phase") in ("Running", "Succeeded")
            and (is_ready(p) or p["status"]["phase"] == "Succeeded")
        ]
        return ready if len(ready) >= count else None

    result: list[JSON] = await wait_for(check, timeout)
    return result


def widget_crd(group: str) -> JSON:
    """A namespaced CustomResourceDefinition ``widgets.<group>`` (kind Widget, v1, any fields)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
