"""`kubecare nodes`, `cordon` and `uncordon` through the real CLI, verified through the API."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import yaml

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

from .conftest import run_cli
from .workloads import cordoned

pytestmark = pytest.mark.e2e


async def test_nodes_lists_every_node_with_roles_versions_and_pods(sandbox: Sandbox) -> None:
    res = run_cli("nodes", "-o", "json", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert set(rows) == {"control-plane", "worker-1", "worker-2", "worker-3"}
    assert rows["control-plane"]["roles"] == ["control-plane"]
    assert rows["control-plane"]["taints"] == ["node-role.kubernetes.io/control-plane:NoSchedule"]
    assert all(r["kubelet_version"].startswith("v1.") for r in rows.values())
    table = run_cli("nodes", kubeconfig=sandbox.kubeconfig)
    assert table.returncode == 0
    assert "NAME" in table.stdout and "worker-1" in table.stdout
    as_yaml = yaml.safe_load(run_cli("nodes", "-o", "yaml", kubeconfig=sandbox.kubeconfig).stdout)
    assert len(as_yaml) == 4


async def test_cordon_then_uncordon_is_idempotent(sandbox: Sandbox, kube: Kube) -> None:
    kc = sandbox.kubeconfig
    first = run_cli("cordon", "worker-1", kubeconfig=kc)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "node/worker-1 cordoned"
    assert await cordoned(kube, "worker-1")
    again = run_cli("cordon", "worker-1", kubeconfig=kc)
    assert again.stdout.strip() == "node/worker-1 already cordoned"
    shown = json.loads(run_cli("nodes", "-o", "json", kubeconfig=kc).stdout)
    assert next(r for r in shown if r["name"] == "worker-1")["status"] == "Ready,SchedulingDisabled"
    back = run_cli("uncordon", "worker-1", kubeconfig=kc)
    assert back.stdout.strip() == "node/worker-1 uncordoned"
    assert not await cordoned(kube, "worker-1")
    assert (
        run_cli("uncordon", "worker-1", kubeconfig=kc).stdout.strip()
        == "node/worker-1 already uncordoned"
    )


@pytest.mark.parametrize("mode", ["client", "server"])
async def test_dry_run_changes_nothing(sandbox: Sandbox, kube: Kube, mode: str) -> None:
    res = run_cli("cordon", "worker-2", f"--dry-run={mode}", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 0, res.stderr
    assert "cordoned" in res.stdout and "dry run" in res.stdout
    assert not await cordoned(kube, "worker-2")


async def test_selector_cordons_every_matching_node(sandbox: Sandbox, kube: Kube) -> None:
    kc = sandbox.kubeconfig
    res = run_cli(
        "cordon", "-l", "!node-role.kubernetes.io/control-plane", "-o", "json", kubeconfig=kc
    )
    try:
        assert res.returncode == 0, res.stderr
        assert sorted(r["node"] for r in json.loads(res.stdout)) == [
            "worker-1",
            "worker-2",
            "worker-3",
        ]
        for n in ("worker-1", "worker-2", "worker-3"):
            assert await cordoned(kube, n)
        assert not await cordoned(kube, "control-plane")
    finally:
        assert (
            run_cli(
                "uncordon", "-l", "!node-role.kubernetes.io/control-plane", kubeconfig=kc
            ).returncode
            == 0
        )
    assert not await cordoned(kube, "worker-3")


async def test_unknown_node_is_named_and_nothing_changes(sandbox: Sandbox, kube: Kube) -> None:
    res = run_cli("cordon", "worker-1", "no-such-node", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 1
    assert 'node "no-such-node" not found' in res.stderr
    assert "Traceback" not in res.stderr
    assert not await cordoned(kube, "worker-1")  # checked up front: nothing was cordoned


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cordon", "worker-1", "-l", "a=b"], "not both"),
        (["cordon"], "name at least one node"),
        (["cordon", "-l", "a=b;c"], "invalid label selector"),
        (["cordon", "worker-1", "--dry-run=maybe"], "maybe"),
        (["cordon", "--frobnicate"], "unknown flag: --frobnicate; see 'kubecare cordon --help'"),
    ],
)
async def test_usage_errors_exit_2_and_cordon_nothing(
    sandbox: Sandbox, kube: Kube, args: list[str], message: str
) -> None:
    res = run_cli(*args, kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert message in res.stderr
    assert not await cordoned(kube, "worker-1")


async def test_selector_matching_nothing_fails(sandbox: Sandbox) -> None:
    res = run_cli("cordon", "-l", "pool=none", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 1
    assert "no nodes match selector 'pool=none'" in res.stderr


def test_unreachable_apiserver_fails_fast_with_one_line(sandbox: Sandbox, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    doc = yaml.safe_load(sandbox.kubeconfig.read_text())
    doc["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump(doc))
    t0 = time.monotonic()
    res = run_cli("nodes", kubeconfig=kc)
    assert time.monotonic() - t0 < 15
    assert res.returncode == 1
    assert (
        res.stderr.startswith("error: apiserver at https://127.0.0.1:")
        and "unreachable" in res.stderr
    )
    assert len(res.stderr.strip().splitlines()) == 1


def test_unknown_context_and_bad_kubeconfig(sandbox: Sandbox, tmp_path: Path) -> None:
    res = run_cli("--context", "nope", "nodes", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 1
    assert "context 'nope' not found" in res.stderr
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed")
    res = run_cli("nodes", kubeconfig=bad)
    assert res.returncode == 1
    assert "is not valid YAML" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
