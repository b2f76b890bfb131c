"""Run inside a pod: the in-cluster service-account config, with a real token from the apiserver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

pytestmark = pytest.mark.e2e


async def test_in_cluster_service_account_config(
    sandbox: Sandbox, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    name = f"reader-{uuid.uuid4().hex[:6]}"
    await kube.request_json(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={"metadata": {"name": name}}
    )
    await kube.request_json(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        body={
            "metadata": {"name": name},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}
            ],
        },
    )
    await kube.request_json(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        body={
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    )
    try:
        token = await kube.request_json(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            body={"spec": {"expirationSeconds": 600}},
        )
        sa = tmp_path / "serviceaccount"
        sa.mkdir()
        (sa / "token").write_text(token["status"]["token"])
        (sa / "ca.crt").write_bytes(sandbox.pki.ca.cert.read_bytes())
        (sa / "namespace").write_text(namespace)
        port = sandbox.load().apiserver.rsplit(":", 1)[1]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env.update(
            HOME=str(tmp_path),
            KUBECARE_SERVICE_ACCOUNT_DIR=str(sa),
            KUBERNETES_SERVICE_HOST="127.0.0.1",
            KUBERNETES_SERVICE_PORT=port,
        )
        res = subprocess.run(
            [sys.executable, "-m", "kubecare.cli.app", "nodes", "-o", "json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert "control-plane" in [n["name"] for n in json.loads(res.stdout)]
        denied = subprocess.run(
            [sys.executable, "-m", "kubecare.cli.app", "cordon", "worker-1"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert denied.returncode == 1
        assert denied.stderr.startswith("error: forbidden") and 'node "worker-1"' in denied.stderr
    finally:
        await kube.request_json(
            "DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"
        )
        await kube.request_json("DELETE", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}")
