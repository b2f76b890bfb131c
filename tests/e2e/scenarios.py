"""The mixed node every drain test starts from: one of each kind of pod kubectl drain cares about."""

from __future__ import annotations

from kubecare.kube import JSON, Kube

from .workloads import (
    Pool,
    apply,
    daemonset,
    deployment,
    job,
    pod,
    pods,
    statefulset,
    system_pods,
    wait_for,
)

# role -> what kubectl drain does with it (for reference in the tests)
ROLES = ("web", "db", "agent", "batch", "cache", "lonely", "static")


async def mixed_node(kube: Kube, ns: str, pool: Pool) -> dict[str, str]:
    """Put web(x2, Deployment), db (StatefulSet), agent (DaemonSet), batch (Job, completes),
    cache (Deployment with emptyDir), lonely (bare pod) and static (mirror pod) on ``pool.nodes[0]``.

    Returns {"ns/pod-name": role} for the pods on that node once all are there, kubeadm's
    kube-proxy pod (role "kube-proxy", a DaemonSet pod every real node runs) included.
    """
    node = pool.nodes[0]
    spec = pool.pod_spec()
    node_obj = await kube.get_json(f"/api/v1/nodes/{node}")
    await apply(
        kube,
        ns,
        deployment("web", 2, spec),
        statefulset("db", 1, spec),
        daemonset("agent", spec),
        job("batch", spec),
        deployment("cache", 1, {**spec, "volumes": [{"name": "scratch", "emptyDir": {}}]}),
        pod("lonely", pool.pod_spec(node=node)),
        pod(
            "static",
            {**pool.pod_spec(), "nodeName": node},
            annotations={
                "kubernetes.io/config.mirror": "0123456789abcdef",
                "kubernetes.io/config.source": "file",
            },
            owner={
                "apiVersion": "v1",
                "kind": "Node",
                "name": node,
                "uid": node_obj["metadata"]["uid"],
                "controller": True,
            },
        ),
    )

    # A mirror pod's status comes from its node's kubelet; kwok leaves mirror pods alone (they are
    # the sandbox runner's), so this fake one is reported Running here, as its kubelet would.
    await kube.request_json(
        "PATCH",
        f"/api/v1/namespaces/{ns}/pods/static/status",
        body={
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            }
        },
        content_type="application/merge-patch+json",
    )

    async def all_there() -> dict[str, str] | None:
        on_node = [p for p in await pods(kube, ns) if p["spec"].get("nodeName") == node]
        settled = [p for p in on_node if p["status"].get("phase") in ("Running", "Succeeded")]
        roles = sorted(p["metadata"]["labels"]["role"] for p in settled)
        if roles == sorted(["web", "web", "db", "agent", "batch", "cache", "lonely", "static"]):
            return {
                f"{ns}/{p['metadata']['name']}": p["metadata"]["labels"]["role"] for p in settled
            } | await system_pods(kube, node)
        return None

    result: dict[str, str] = await wait_for(all_there, timeout=60)
    return result


def in_namespace(roles: dict[str, str], ns: str) -> list[str]:
    """The sorted roles of ``mixed_node``'s result that are namespace ``ns``'s pods."""
    return sorted(role for key, role in roles.items() if key.startswith(f"{ns}/"))


async def roles_on(kube: Kube, ns: str, node: str) -> list[str]:
    """Roles of the pods (not terminating) still on ``node``, sorted."""
    return sorted(
        p["metadata"]["labels"].get("role", "?")
        for p in await pods(kube, ns)
        if p["spec"].get("nodeName") == node and not p["metadata"].get("deletionTimestamp")
    )


def uids(items: list[JSON]) -> set[str]:
    return {p["metadata"]["uid"] for p in items}
