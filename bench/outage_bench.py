"""Outage benchmark: `kubecare outage` / `kubecare risk` vs the kubectl commands an operator runs
instead, on the same sandbox in the same run.

    .venv/bin/python bench/outage_bench.py [--runs 7] [--deployments 30] [--replicas 10]

A sandbox with 3 workers and DEPLOYMENTS x REPLICAS pods; worker-1 goes silent and is tainted.
kubectl's side: `kubectl get nodes` + `kubectl get pods -A -o wide --field-selector
spec.nodeName=worker-1` (what is on the dead node; the countdown, the fates and the settings it
does not tell). kubecare's side: `kubecare outage` (all of that), and `kubecare risk --all`
against `kubectl get pods -A -o json` (the raw material for a what-if by hand). Medians of --runs,
alternating. Prints a Markdown table; writes bench/results/outage.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def timed(cmds: list[list[str]]) -> float:
    t0 = time.perf_counter()
    for c in cmds:
        subprocess.run(c, check=True, capture_output=True)
    return time.perf_counter() - t0


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--deployments", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    sb = Sandbox("bench-outage")
    await sb.up(SandboxOptions(workers=3, pod_eviction_timeout=3600, node_monitor_grace_period=10))
    try:
        async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
            for i in range(args.deployments):
                await kube.request_json(
                    "POST",
                    "/apis/apps/v1/namespaces/default/deployments",
                    body={
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": {"name": f"app-{i:02d}"},
                        "spec": {
                            "replicas": args.replicas,
                            "selector": {"matchLabels": {"app": f"app-{i:02d}"}},
                            "template": {
                                "metadata": {"labels": {"app": f"app-{i:02d}"}},
                                "spec": {
                                    "containers": [
                                        {"name": "c", "image": "registry.k8s.io/pause:3.10"}
                                    ]
                                },
                            },
                        },
                    },
                )
            total = args.deployments * args.replicas
            while (
                len(
                    [
                        p
                        async for p in kube.list_items(
                            "/api/v1/namespaces/default/pods",
                            params={"fieldSelector": "status.phase=Running"},
                        )
                    ]
                )
                < total
            ):
                await asyncio.sleep(1)
        await sb.node_down("worker-1", wait=True, timeout=120)
        kc = ["--kubeconfig", str(sb.kubeconfig)]
        kubectl = [str(find_kubectl()), *kc]
        kubecare = [str(BIN / "kubecare"), *kc]
        cases = {
            "outage report (one node down)": (
                [
                    [*kubectl, "get", "nodes"],
                    [
                        *kubectl,
                        "get",
                        "pods",
                        "-A",
                        "-o",
                        "wide",
                        "--field-selector",
                        "spec.nodeName=worker-1",
                    ],
                ],
                [[*kubecare, "outage"]],
            ),
            "what-if for every node": (
                [[*kubectl, "get", "pods", "-A", "-o", "json"]],
                [[*kubecare, "risk", "--all"]],
            ),
        }
        version = subprocess.run(
            [*kubectl, "version", "-o", "json"], capture_output=True, text=True, check=True
        )
        versions = json.loads(version.stdout)
        result: dict[str, object] = {
            "pods": total,
            "runs": args.runs,
            "kubectl": versions["clientVersion"]["gitVersion"],
            "server": versions["serverVersion"]["gitVersion"],
        }
        for name, (theirs, ours) in cases.items():
            a, b = [], []
            for i in range(args.runs):
                # Alternate which tool goes first, so neither always meets a warmer apiserver.
                if i % 2:
                    b.append(timed(ours))
                    a.append(timed(theirs))
                else:
                    a.append(timed(theirs))
                    b.append(timed(ours))
            ma, mb = statistics.median(a), statistics.median(b)
            result[name] = {
                "kubectl_s": round(ma, 3),
                "kubecare_s": round(mb, 3),
                "ratio": round(mb / ma, 2),
            }
    finally:
        sb.down()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "outage.json").write_text(json.dumps(result, indent=2))
    print(f"kubectl {result['kubectl']}, server {result['server']}, median of {args.runs}")
    print("| operation | kubectl | kubecare | ratio |\n|---|---|---|---|")
    for name in cases:
        r = result[name]
        print(
            f"| {name}, {total} pods | {r['kubectl_s']} s | {r['kubecare_s']} s | {r['ratio']}x |"
        )  # type: ignore[index]


if __name__ == "__main__":
    asyncio.run(main())
