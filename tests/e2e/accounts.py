"""Real credentials for e2e tests: a ServiceAccount with a ClusterRole, and tokens for it from the
TokenRequest API, as a kubeconfig or raw."""

from __future__ import annotations

import base64
import contextlib
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

RBAC = "/apis/rbac.authorization.k8s.io/v1"


@contextlib.asynccontextmanager
async def service_account(
    kube: Kube, namespace: str, rules: list[dict[str, Any]]
) -> AsyncIterator[str]:
    """A ServiceAccount bound to a ClusterRole with ``rules``; yields its name, removes the RBAC."""
    name = f"sa-{uuid.uuid4().hex[:6]}"
    await kube.request_json(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={"metadata": {"name": name}}
    )
    await kube.request_json(
        "POST", f"{RBAC}/clusterroles", body={"metadata": {"name": name}, "rules": rules}
    )
    await kube.request_json(
        "POST",
        f"{RBAC}/clusterrolebindings",
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
        yield name
    finally:
        await kube.request_json("DELETE", f"{RBAC}/clusterrolebindings/{name}")
        await kube.request_json("DELETE", f"{RBAC}/clusterroles/{name}")


async def token_for(kube: Kube, namespace: str, account: str, seconds: int = 600) -> dict[str, Any]:
    """A fresh token (TokenRequest): ``{"token": ..., "expirationTimestamp": ...}``."""
    doc = await kube.request_json(
        "POST",
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
        body={"spec": {"expirationSeconds": seconds}},
    )
    return dict(doc["status"])


def kubeconfig_with_user(sandbox: Sandbox, user: dict[str, Any], path: Path) -> Path:
    """The sandbox's cluster with ``user`` as the credentials."""
    ca = base64.b64encode(sandbox.pki.ca.cert.read_bytes()).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "sb",
                "cluster": {"server": sandbox.load().apiserver, "certificate-authority-data": ca},
            }
        ],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "sb", "context": {"cluster": "sb", "user": "u"}}],
        "current-context": "sb",
    }
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


@contextlib.asynccontextmanager
async def service_account_kubeconfig(
    kube: Kube, sandbox: Sandbox, namespace: str, rules: list[dict[str, Any]]
) -> AsyncIterator[Path]:
    """A kubeconfig that authenticates as a new ServiceAccount allowed ``rules``."""
    async with service_account(kube, namespace, rules) as name:
        token = await token_for(kube, namespace, name)
        with tempfile.TemporaryDirectory() as d:
            yield kubeconfig_with_user(sandbox, {"token": token["token"]}, Path(d) / "kubeconfig")
