"""Real nodes: what they cost, and a drain of real containers, kubecare against kubectl.

    .venv/bin/python bench/realnode_bench.py [--runs 3] [--pods 10] [--term-delay 3]

- ``sandbox up --nodes 1 --real-nodes 2`` (one control plane, one kwok worker for CoreDNS):
  median of ``--runs`` starts, binaries already built;
- one more real node added to a running sandbox: seconds from power-on (its init started) to
  Ready, through the real ``kubeadm join`` and the kubelet's TLS bootstrap;
- resident memory of an idle real node: every process in its PID namespace and its cgroup
  subtree (init, containerd, kubelet, the kube-proxy pod);
- a drain of ``--pods`` pods of the http image, each taking ``--term-delay`` seconds to stop
  after SIGTERM, from one real node to the other — ``kubecare drain`` against ``kubectl drain``
  through bench/drain_bench.py's scenario (same sandbox, order alternating, requests counted
  from the audit log by user agent); both are bound by the pods' real shutdown, so the table
  gives each tool's overhead over that floor.

Prints Markdown tables and writes bench/results/realnode.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from drain_bench import AuditCounter, scenario, versions
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import CONTAINERD_VERSION, DEFAULT_KUBE_VERSION, find_kubectl
from kubecare.sandbox.images import HTTP
from kubecare.sandbox.realnode import TOLERATION

RESULTS = Path(__file__).parent / "results"


def node_rss_mib(sb: Sandbox, node: str) -> float:
    """Every process of the node: those in its init's PID namespace, and its containers' (in
    namespaces of their own, but in the node's cgroup subtree)."""
    from kubecare.sandbox.realnode import cgroup_root

    init = sb.real_init(sb.load(), node)
    if init is None:
        raise SystemExit(f"{node} is not running")
    ns = os.readlink(f"/proc/{init}/ns/pid")
    subtree = cgroup_root(sb.name, node) + "/"
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            mine = os.readlink(proc / "ns" / "pid") == ns
            if not mine and subtree not in (proc / "cgroup").read_text():
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def web(replicas: int, term_delay: float) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "tolerations": [TOLERATION],
                    # the real nodes only (kwok's worker would "run" any image)
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/hostname",
                                                "operator": "In",
                                                "values": ["real-1", "real-2"],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "web",
                            "image": HTTP,
                            "env": [{"name": "TERM_DELAY", "value": str(term_delay)}],
                            "readinessProbe": {
                                "httpGet": {"path": "/ready", "port": 8080},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--pods", type=int, default=10)
    ap.add_argument("--term-delay", type=float, default=3.0)
    args = ap.parse_args()
    ups: list[float] = []
    for _ in range(args.runs - 1):
        sb = Sandbox(f"rbench-{uuid.uuid4().hex[:6]}")
        try:
            ups.append(await sb.up(SandboxOptions(workers=1, real_nodes=2)))
        finally:
            sb.down()
    sb = Sandbox(f"rbench-{uuid.uuid4().hex[:6]}")
    out: dict[str, Any] = {}
    try:
        ups.append(await sb.up(SandboxOptions(workers=1, real_nodes=2, audit_log=True)))
        out["up_s"] = {
            "median": round(statistics.median(ups), 1),
            "all": [round(x, 1) for x in ups],
        }
        joins = [await sb.add_real_node(f"extra-{i}") for i in range(args.runs)]
        out["join_to_ready_s"] = {"median": round(statistics.median(joins), 1),
                                  "all": [round(x, 1) for x in joins]}  # fmt: skip
        for i in range(args.runs):
            await sb.remove_node(f"extra-{i}")
        out["rss_idle_mib"] = {n: node_rss_mib(sb, n) for n in ("real-1", "real-2")}
        async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
            audit = AuditCounter(sb.dir / "logs" / "audit" / "audit.log")
            ns = "drain-bench"
            t0 = time.monotonic()
            result = await scenario(
                kube, sb, audit, ns, [web(args.pods, args.term_delay)], args.pods, args.runs,
                None, nodes=("real-1", "real-2"), extra=("--ignore-daemonsets",),
            )  # fmt: skip
            out["drain"] = result
            out["drain"]["floor_s"] = args.term_delay
            out["drain"]["overhead_s"] = {
                t: round(result[f"{t}_s"] - args.term_delay, 2) for t in ("kubectl", "kubecare")
            }
            out["drain_scenario_s"] = round(time.monotonic() - t0, 1)
        out["versions"] = {
            **versions(str(find_kubectl())),
            "kubernetes": DEFAULT_KUBE_VERSION,
            "containerd": CONTAINERD_VERSION,
        }
    finally:
        sb.down()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realnode.json").write_text(json.dumps(out, indent=2))
    d = out["drain"]
    print("| measure | value |\n|---|---|")
    print(
        f"| `sandbox up --nodes 1 --real-nodes 2` | {out['up_s']['median']} s ({out['up_s']['all']}) |"
    )
    print(
        f"| a real node, power-on to Ready (kubeadm join) | {out['join_to_ready_s']['median']} s ({out['join_to_ready_s']['all']}) |"
    )
    print(f"| RSS of an idle real node | {out['rss_idle_mib']} MiB |")
    print()
    print(
        "| drain of real pods | `kubectl drain` | `kubecare drain` | ratio | overhead over the pods' shutdown (kubectl / kubecare) | requests | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.pods} pods, {args.term_delay:g} s SIGTERM each | {d['kubectl_s']} s | {d['kubecare_s']} s | "
        f"**{d['ratio']}x** | {d['overhead_s']['kubectl']} / {d['overhead_s']['kubecare']} s | "
        f"{d['requests_median']['kubectl']:g} / {d['requests_median']['kubecare']:g} | "
        f"{d['peak_rss_mib']['kubectl']} / {d['peak_rss_mib']['kubecare']} |"
    )  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
