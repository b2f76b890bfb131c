"""`kubecare sandbox exec/shell/install`: a control-plane node's own view, where the course's
commands run as typed — real kubeadm, kubectl and etcdctl on the node's real paths — and nothing
of it reaches the machine's /etc or /var or outlives the command."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox
from kubecare.sandbox.binaries import etcd_version_for

from .conftest import cli_argv, run_cli

pytestmark = pytest.mark.e2e

CERTS = {
    "admin.conf",
    "apiserver",
    "apiserver-etcd-client",
    "apiserver-kubelet-client",
    "controller-manager.conf",
    "etcd-healthcheck-client",
    "etcd-peer",
    "etcd-server",
    "front-proxy-client",
    "scheduler.conf",
    "super-admin.conf",
}


def on_node(sb: Sandbox, node: str, *command: str) -> subprocess.CompletedProcess[str]:
    return run_cli("sandbox", "exec", "--name", sb.name, node, "--", *command)


def first_cp(sb: Sandbox) -> str:
    return str(sb.load().control_planes[0]["node"])


def mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def test_the_nodes_paths_and_tools_are_kubeadms_own(sandbox: Sandbox) -> None:
    node = first_cp(sandbox)
    machine_had = Path("/etc/kubernetes").exists()  # a real kubeadm node has one: left alone
    res = on_node(
        sandbox,
        node,
        "sh",
        "-c",
        "ls /etc/kubernetes/manifests; ls /var/lib/etcd; kubeadm version -o short; "
        "kubectl get node $KUBECARE_SANDBOX_NODE -o name; "
        # the course's etcdctl line, certificates at kubeadm's paths (the member's port is set)
        "etcdctl --cacert /etc/kubernetes/pki/etcd/ca.crt "
        "--cert /etc/kubernetes/pki/etcd/server.crt --key /etc/kubernetes/pki/etcd/server.key "
        "endpoint health; etcdutl version",
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    # the etcd client tools of the release the node's etcd manifest runs
    assert f"etcdutl version: {etcd_version_for(sandbox.load().version)}" in lines
    assert {"etcd.yaml", "kube-apiserver.yaml"} <= set(lines) and "member" in lines
    assert f"v{sandbox.load().version}" in lines and f"node/{node}" in lines
    assert "is healthy" in res.stdout
    assert Path("/etc/kubernetes").exists() == machine_had and "kubecare-" not in mounts()


def test_writes_stay_in_the_node_and_the_exit_code_is_the_commands(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    node = first_cp(sandbox)
    probe = f"kubecare-probe-{os.getpid()}"
    res = on_node(sandbox, node, "sh", "-c", f"touch /etc/{probe} /var/lib/{probe}; exit 7")
    assert res.returncode == 7, res.stderr
    assert not Path(f"/etc/{probe}").exists() and not Path(f"/var/lib/{probe}").exists()
    root = sandbox.node_root(node)
    assert (root / "etc" / probe).exists() and (root / "var" / "lib" / probe).exists()
    assert "kubecare-" not in mounts()  # gone with the command
    # nothing of the machine's init system is in reach: /run is empty, systemctl is the node's
    res = on_node(
        sandbox, node, "sh", "-c", "ls -A /run/systemd /run/dbus; /usr/bin/systemctl stop cron"
    )
    assert res.returncode != 0 and "is not available on a sandbox node" in res.stderr


def test_a_data_dir_restored_in_the_view_is_where_the_runner_looks(sandbox: Sandbox) -> None:
    """The CKA restore writes --data-dir /var/lib/etcd-from-backup on the node; the etcd
    manifest's hostPath /var/lib/etcd-from-backup must then name that very dir."""
    node = first_cp(sandbox)
    res = on_node(sandbox, node, "sh", "-c", "mkdir -p /var/lib/etcd-from-backup/member")
    assert res.returncode == 0, res.stderr
    from kubecare.sandbox.staticpods import host_path

    root = sandbox.node_root(node)
    try:
        assert host_path("/var/lib/etcd-from-backup", sandbox.dir, root) == (
            root / "var" / "lib" / "etcd-from-backup"
        )
        assert (root / "var" / "lib" / "etcd-from-backup" / "member").is_dir()
    finally:
        import shutil

        shutil.rmtree(root / "var" / "lib" / "etcd-from-backup")


def test_kubeadm_reads_the_sandboxs_certificates(sandbox: Sandbox) -> None:
    """`kubeadm certs check-expiration`, kubeadm's own reading of /etc/kubernetes/pki and the
    kubeconfigs: every certificate kubeadm knows is there, signed by the CA it expects."""
    res = on_node(sandbox, first_cp(sandbox), "kubeadm", "certs", "check-expiration", "-o", "json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout[res.stdout.index("{") :])
    certs = {c["name"]: c for c in doc["certificates"]}
    assert set(certs) == CERTS
    assert all(not c["missing"] and c["residualTime"] > 360 * 86400 for c in certs.values())
    assert certs["etcd-peer"]["caName"] == "etcd-ca" and certs["apiserver"]["caName"] == "ca"
    authorities = {c["name"] for c in doc["certificateAuthorities"]}
    assert authorities == {"ca", "etcd-ca", "front-proxy-ca"}


async def test_install_switches_kubeadm_and_the_kubelet_version(
    sandbox: Sandbox, kube: Kube
) -> None:
    node, now = first_cp(sandbox), sandbox.load().version
    other = "1.36.3" if now != "1.36.3" else "1.37.2"
    try:
        res = run_cli("sandbox", "install", "--name", sandbox.name, node, "kubeadm", other)
        assert res.returncode == 0, res.stderr
        assert f"kubeadm v{now} -> v{other}" in res.stderr
        assert on_node(sandbox, node, "kubeadm", "version", "-o", "short").stdout.strip() == (
            f"v{other}"
        )
        res = run_cli("sandbox", "install", "--name", sandbox.name, "worker-1", "kubelet", other)
        assert res.returncode == 0, res.stderr
        info = (await kube.get_json("/api/v1/nodes/worker-1"))["status"]["nodeInfo"]
        assert info["kubeletVersion"] == f"v{other}"
    finally:
        run_cli("sandbox", "install", "--name", sandbox.name, node, "kubeadm", now)
        run_cli("sandbox", "install", "--name", sandbox.name, "worker-1", "kubelet", now)
    assert on_node(sandbox, node, "kubeadm", "version", "-o", "short").stdout.strip() == f"v{now}"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["exec", "no-such-node", "--", "true"], 1, 'node "no-such-node" is not a node'),
        (["exec", "CP"], 2, "give the command to run on the node"),
        (["install", "CP", "kubeadm", "1.30"], 2, "unsupported Kubernetes version '1.30'"),
        (["install", "CP", "kube-proxy", "1.37"], 2, "invalid choice: 'kube-proxy'"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    sandbox: Sandbox, args: list[str], code: int, message: str
) -> None:
    args = [first_cp(sandbox) if a == "CP" else a for a in args]
    before = sandbox.load().installed
    res = run_cli("sandbox", args[0], "--name", sandbox.name, *args[1:])
    assert res.returncode == code, (res.stdout, res.stderr)
    assert message in res.stderr and "Traceback" not in res.stderr
    assert sandbox.load().installed == before


def test_without_root_exec_says_so(sandbox: Sandbox) -> None:
    argv = cli_argv("sandbox", "exec", "--name", sandbox.name, first_cp(sandbox), "--", "true")
    res = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 1
    assert "sandbox exec needs root" in res.stderr and "Traceback" not in res.stderr


def test_kubeadm_wrote_the_nodes_kubelet_files_and_systemctl_stays_on_the_node(
    sandbox: Sandbox,
) -> None:
    import yaml

    node = first_cp(sandbox)
    kubelet = sandbox.node_root(node) / "var" / "lib" / "kubelet"
    config = yaml.safe_load((kubelet / "config.yaml").read_text())  # kubelet-start's, kubeadm's
    assert config["kind"] == "KubeletConfiguration" and config["staticPodPath"] == (
        "/etc/kubernetes/manifests"
    )
    assert f"--hostname-override={node}" in (kubelet / "kubeadm-flags.env").read_text()
    res = on_node(sandbox, node, "sh", "-c", "systemctl restart kubelet && systemctl stop ssh")
    assert res.returncode == 1  # the kubelet is the node's (kwok's); nothing else is reachable
    assert f"systemctl restart kubelet (node {node})" in res.stderr
    assert "systemctl stop ssh is not available on a sandbox node" in res.stderr


def test_without_root_sandbox_up_says_so_before_touching_anything(tmp_path: Path) -> None:
    """The network namespaces need root: one line naming it, no state dir made."""
    argv = cli_argv("sandbox", "up", "--name", "noroot", "--nodes", "1")
    env = {**os.environ, "KUBECARE_STATE_DIR": str(tmp_path / "state")}
    res = subprocess.run(
        ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *argv],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "needs root" in lines[0] and "network namespace" in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "state").exists()


def test_a_node_has_its_own_network_and_kubeadms_addresses(sandbox: Sandbox) -> None:
    """On the node: its 192.0.2.x address on eth0, its apiserver and etcd on kubeadm's ports
    (etcdctl's own default endpoint), the machine's interfaces out of sight."""
    node = first_cp(sandbox)
    ip = sandbox.load().control_planes[0]["ip"]
    res = on_node(
        sandbox, node, "sh", "-c",
        "ip -o -4 addr show; "
        f"kubectl --server https://{ip}:6443 get --raw /livez; echo; "
        "etcdctl --cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/"
        "healthcheck-client.crt --key /etc/kubernetes/pki/etcd/healthcheck-client.key "
        "endpoint health",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"eth0    inet {ip}/24" in res.stdout and "192.0.2.2/" not in res.stdout
    assert (
        "ok" in res.stdout.splitlines() and "127.0.0.1:2379 is healthy" in res.stdout + res.stderr
    )


def test_a_kwok_worker_gets_a_joined_workers_tree_and_kubeadm_upgrade_node_runs(
    sandbox: Sandbox,
) -> None:
    import yaml

    from kubecare.sandbox.executor import cgroup_v1

    res = on_node(
        sandbox, "worker-1", "sh", "-c",
        "kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node worker-1 -o name; "
        "kubelet --version",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["node/worker-1", f"Kubernetes v{sandbox.load().version}"]
    tree = sandbox.dir / "nodes" / "worker-1"
    config = yaml.safe_load((tree / "var" / "lib" / "kubelet" / "config.yaml").read_text())
    assert config["kind"] == "KubeletConfiguration"
    skip = ["--ignore-preflight-errors=SystemVerification"] if cgroup_v1() else []
    # kubeadm's preflight asks the node's container runtime (the sandbox's CRI), then rewrites
    # the kubelet's config from the cluster's kubelet-config
    up = on_node(sandbox, "worker-1", "kubeadm", "upgrade", "node", *skip)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "ContainerRuntimeVersion" not in up.stdout + up.stderr
    assert "The kubelet configuration for this node was successfully upgraded!" in up.stdout
    assert any(p.name.startswith("kubeadm-kubelet-config-") for p in (tree / "etc" / "kubernetes" / "tmp").iterdir())  # fmt: skip
