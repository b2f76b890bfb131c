"""`kubecare sandbox env/status/logs/node-down/node-up` through the real CLI."""

from __future__ import annotations

import json

import pytest

from kubecare.sandbox import Sandbox

from .conftest import run_cli

pytestmark = pytest.mark.e2e


def test_env_prints_an_export_line(sandbox: Sandbox) -> None:
    res = run_cli("sandbox", "env", "--name", sandbox.name)
    assert res.returncode == 0
    assert res.stdout.strip() == f"export KUBECONFIG={sandbox.kubeconfig}"


def test_status_shows_every_component_and_the_log_of_a_stopped_one(sandbox: Sandbox) -> None:
    healthy = run_cli("sandbox", "status", "--name", sandbox.name, "-o", "json")
    assert healthy.returncode == 0, healthy.stderr
    doc = json.loads(healthy.stdout)
    assert {c["name"] for c in doc["components"]} >= {
        "etcd-control-plane",
        "kube-apiserver-control-plane",
        "kube-controller-manager-control-plane",
        "kube-scheduler-control-plane",
        "runner",
        "kwok",
    }
    assert all(c["healthy"] and c["pid"] for c in doc["components"])
    sandbox.stop_component("kube-scheduler")  # its manifest moved out, as on a kubeadm node
    try:
        res = run_cli("sandbox", "status", "--name", sandbox.name)
        assert res.returncode == 1
        assert "kube-scheduler-control-plane" in res.stdout and "no manifest" in res.stdout
        assert "kube-scheduler.yaml is not in" in res.stdout
    finally:
        import asyncio

        asyncio.run(sandbox.start_component("kube-scheduler"))


def test_logs_show_a_components_log(sandbox: Sandbox) -> None:
    res = run_cli("sandbox", "logs", "kube-apiserver", "--name", sandbox.name, "--tail", "5")
    assert res.returncode == 0
    assert 0 < len(res.stdout.splitlines()) <= 5
    bad = run_cli("sandbox", "logs", "kube-proxy", "--name", sandbox.name)
    assert bad.returncode == 1
    assert "no component 'kube-proxy'" in bad.stderr


def test_node_down_and_up_from_the_cli(sandbox: Sandbox) -> None:
    down = run_cli("sandbox", "node-down", "worker-2", "--name", sandbox.name, "--wait")
    assert down.returncode == 0, down.stderr
    nodes = json.loads(run_cli("nodes", "-o", "json", kubeconfig=sandbox.kubeconfig).stdout)
    assert next(n for n in nodes if n["name"] == "worker-2")["status"] == "Unknown"
    up = run_cli("sandbox", "node-up", "worker-2", "--name", sandbox.name)
    assert up.returncode == 0, up.stderr
    nodes = json.loads(run_cli("nodes", "-o", "json", kubeconfig=sandbox.kubeconfig).stdout)
    assert next(n for n in nodes if n["name"] == "worker-2")["status"] == "Ready"


@pytest.mark.parametrize(
    "args",
    [
        ["sandbox", "up", "--version", "1.20"],
        ["sandbox", "up", "--pod-eviction-timeout", "soon"],
        ["sandbox", "up", "--nodes", "-1"],
        ["sandbox", "up", "--name", "Bad_Name"],
    ],
)
def test_bad_sandbox_flags_are_usage_errors(sandbox_state_dir: object, args: list[str]) -> None:
    res = run_cli(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
