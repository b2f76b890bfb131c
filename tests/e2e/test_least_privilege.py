"""Read-only commands with less permission, with real ServiceAccount tokens and narrow RBAC on
the real apiserver: each shows what the user may see, leaves the rest blank, and says in one
line what it could not see and which permission would show it. Never a traceback; only the
object a command is about (the nodes of ``kubecare nodes``) is a hard error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

from .accounts import service_account_kubeconfig
from .conftest import run_cli

pytestmark = pytest.mark.e2e

NODES_ONLY = [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]
PODS_NOTE = "pod counts not shown: this user may not list pods in all namespaces"


@pytest.fixture
async def nodes_only(kube: Kube, sandbox: Sandbox, namespace: str) -> AsyncIterator[Path]:
    async with service_account_kubeconfig(kube, sandbox, namespace, NODES_ONLY) as config:
        yield config


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    res = await asyncio.to_thread(run_cli, *args, kubeconfig=config)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, res.stdout, res.stderr


def notes(stderr: str) -> list[str]:
    return [
        line.removeprefix("note: ") for line in stderr.splitlines() if line.startswith("note: ")
    ]


async def test_nodes_are_shown_without_pod_counts_to_a_user_who_may_only_read_nodes(
    nodes_only: Path, kube: Kube
) -> None:
    code, out, err = await cli(nodes_only, "nodes", "-o", "json")
    assert code == 0, err
    rows = json.loads(out)
    names = {n["metadata"]["name"] for n in await kube.list_objects("/api/v1/nodes")}
    assert {r["name"] for r in rows} == names
    assert all(r["pods"] is None for r in rows)
    assert notes(err) == [PODS_NOTE]
    code, table, err = await cli(nodes_only, "nodes")
    assert code == 0 and notes(err) == [PODS_NOTE], err
    header, first = table.splitlines()[:2]
    # the pods column is there, and blank
    cut = header.index("PODS") if "PODS" in header else header.lower().index("pods")
    assert first[cut : cut + 4].strip() == "", table


async def test_a_user_who_may_not_read_nodes_is_told_so_in_one_line(
    kube: Kube, sandbox: Sandbox, namespace: str
) -> None:
    pods_only = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    async with service_account_kubeconfig(kube, sandbox, namespace, pods_only) as config:
        code, out, err = await cli(config, "nodes")
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nodes" in lines[0], err
    assert "forbidden" in lines[0].lower()


async def test_versions_outage_and_risk_show_what_a_nodes_only_user_may_see(
    nodes_only: Path, kube: Kube
) -> None:
    code, out, err = await cli(nodes_only, "versions", "-o", "json")
    assert code == 0, err
    doc = json.loads(out)
    kubelets = {c["node"] for c in doc["components"] if c["name"] == "kubelet"}
    assert kubelets == {n["metadata"]["name"] for n in await kube.list_objects("/api/v1/nodes")}
    assert any(c["name"] == "kube-apiserver" for c in doc["components"])  # from /version
    assert doc["unseen"][0] == (
        "the control plane's components not shown: this user may not list pods in kube-system; "
        "only the apiserver's /version is known"
    )
    assert not any("managed control plane" in n for n in doc["notes"]), doc["notes"]

    code, out, err = await cli(nodes_only, "outage", "-o", "json")
    assert code == 0, err
    outage_notes = json.loads(out)["notes"]
    assert "pods not shown: this user may not list pods in all namespaces; what runs on each " \
        "node is unknown" in outage_notes, outage_notes  # fmt: skip

    node = next(iter(kubelets))
    code, out, err = await cli(nodes_only, "risk", node, "-o", "json")
    assert code == 0, err
    unseen = json.loads(out)["unseen"]
    assert any(u.startswith("pods not shown") for u in unseen), unseen
    assert any(u.startswith("PodDisruptionBudgets not shown") for u in unseen), unseen
    assert any(u.startswith("Deployments not shown") for u in unseen), unseen
    assert notes(err) == unseen


async def test_the_upgrade_plan_of_a_nodes_only_user_is_a_no_go_naming_what_it_could_not_check(
    nodes_only: Path,
) -> None:
    from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION

    major, minor, _ = DEFAULT_KUBE_VERSION.split(".")
    target = f"v{major}.{int(minor) + 1}.0"
    code, out, err = await cli(nodes_only, "upgrade", "plan", "--to", target, "-o", "json")
    assert code == 1, err  # no-go: a plan that could not look is not a go
    plan = json.loads(out)
    unseen = [c["detail"] for c in plan["checks"] if c["name"] == "unseen"]
    assert any("what each drain would do not shown" in u for u in unseen), unseen
    assert any("the control plane's components not shown" in u for u in unseen), unseen
    assert all(r in plan["reasons"] for r in unseen)
    # ... and the rest of the plan is there: every node has its step.
    assert plan["steps"], plan


async def test_backup_diff_without_secrets_access_compares_the_rest(
    kube: Kube, sandbox: Sandbox, namespace: str, tmp_path: Path
) -> None:
    key = tmp_path / "key.txt"
    made = await asyncio.to_thread(run_cli, "backup", "keygen", "-o", str(key))
    assert made.returncode == 0, made.stderr
    recipient = made.stdout.strip()
    for kind, body in (
        ("configmaps", {"data": {"a": "1"}}),
        ("secrets", {"stringData": {"a": "1"}}),
    ):
        await kube.request_json("POST", f"/api/v1/namespaces/{namespace}/{kind}",
                                body={"metadata": {"name": "x"}, **body})  # fmt: skip
    store = tmp_path / "store"
    res = await asyncio.to_thread(
        run_cli, "backup", "create", "b", "--to", str(store), "--include-namespaces", namespace,
        "--include-resources", "configmaps,secrets", "--encrypt-to", recipient,
        kubeconfig=sandbox.kubeconfig,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    await kube.request_json(
        "PATCH", f"/api/v1/namespaces/{namespace}/configmaps/x", body={"data": {"a": "2"}},
        content_type="application/merge-patch+json",
    )  # fmt: skip
    rules = [
        {"apiGroups": [""], "resources": ["configmaps", "namespaces"], "verbs": ["get", "list"]}
    ]
    async with service_account_kubeconfig(kube, sandbox, namespace, rules) as config:
        code, out, err = await cli(config, "backup", "diff", "b", "--from", str(store),
                                   "--identity", str(key), "-o", "json")  # fmt: skip
    assert code == 0, err
    diffs = {(d["type"], d["name"]): d for d in json.loads(out) if d["namespace"] == namespace}
    assert diffs[("configmaps", "x")]["change"] == "changed"
    secret = diffs[("secrets", "x")]
    assert secret["change"] == "not-compared" and "forbidden" in secret["reason"], secret
