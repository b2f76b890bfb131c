"""Benchmark of the sandbox itself: how fast it starts and how much memory it takes.

    .venv/bin/python bench/sandbox_bench.py [--runs 5] [--cold-build] [--scale 100]

- ``sandbox up`` with one control-plane node and 3 workers, and with 3 control-plane nodes
  (HA: 3-member etcd, apiservers behind the runner's balancer): median of ``--runs``, until
  /readyz, every static pod ready, every node Ready and the mirror pods made;
- resident memory per component after start-up (the runner's own included);
- ``--scale N``: one sandbox with N workers (one kwok for all): start time and whole RSS, and a
  node-down/up of one of them;
- ``--cold-build``: ``kubecare sandbox build`` into empty Go and kubecare caches (what a fresh
  machine does; about ten minutes on 2 cores).

Prints Markdown tables and writes bench/results/sandbox.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def cold_build() -> float:
    with tempfile.TemporaryDirectory(prefix="kubecare-cold-") as tmp:
        env = dict(os.environ)
        env.update(
            GOCACHE=f"{tmp}/go-build",
            GOMODCACHE=f"{tmp}/go-mod",
            KUBECARE_CACHE_DIR=f"{tmp}/kubecare",
            GOFLAGS="-modcacherw",
            PATH=f"{tmp}/empty:{env['PATH']}",
        )
        # Binaries on PATH or in KUBECARE_BIN_DIR would be reused; make sure none are.
        env.pop("KUBECARE_BIN_DIR", None)
        t0 = time.perf_counter()
        subprocess.run(
            [str(BIN / "kubecare"), "sandbox", "build"], check=True, capture_output=True, env=env
        )
        seconds = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
        return seconds


def grouped(memory: dict[str, int]) -> dict[str, int]:
    """MiB per kind of component (etcd, kube-apiserver, ..., kwok, runner), summed over nodes."""
    out: dict[str, int] = {}
    for name, rss in memory.items():
        kind = next(
            (
                k
                for k in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
                if name.startswith(k)
            ),
            name,
        )
        out[kind] = out.get(kind, 0) + rss
    return {k: round(v / 1048576) for k, v in out.items()}


async def up_times(runs: int, opts: SandboxOptions, label: str) -> dict[str, Any]:
    times: list[float] = []
    memory: dict[str, int] = {}
    for i in range(runs):
        sb = Sandbox(f"bench-{label}-{i}")
        try:
            times.append(await sb.up(opts))
            await asyncio.sleep(10)  # let start-up settle before reading memory
            memory = sb.memory()
        finally:
            sb.down()
    return {
        "median_s": round(statistics.median(times), 2),
        "all_s": [round(t, 2) for t in times],
        "rss_mib": grouped(memory),
        "rss_total_mib": round(sum(memory.values()) / 1048576),
    }


async def scale(workers: int) -> dict[str, Any]:
    sb = Sandbox("bench-scale")
    try:
        seconds = await sb.up(
            SandboxOptions(workers=workers, node_monitor_grace_period=10, ready_timeout=600)
        )
        await asyncio.sleep(10)
        memory = sb.memory()
        t0 = time.monotonic()
        await sb.node_down(f"worker-{workers}", wait=True, timeout=120)
        down = time.monotonic() - t0
        t0 = time.monotonic()
        await sb.node_up(f"worker-{workers}", timeout=120)
        up = time.monotonic() - t0
    finally:
        sb.down()
    return {
        "workers": workers,
        "up_s": round(seconds, 1),
        "rss_mib": grouped(memory),
        "rss_total_mib": round(sum(memory.values()) / 1048576),
        "node_down_to_not_ready_s": round(down, 1),
        "node_up_to_ready_s": round(up, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cold-build", action="store_true")
    parser.add_argument("--scale", type=int, default=100)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    result: dict[str, Any] = {
        "kubernetes": DEFAULT_KUBE_VERSION,
        "cores": os.cpu_count(),
        "runs": args.runs,
    }
    if args.cold_build:
        result["cold_build_s"] = round(cold_build(), 1)
    result["single"] = await up_times(args.runs, SandboxOptions(workers=3), "one")
    result["ha"] = await up_times(args.runs, SandboxOptions(workers=3, control_planes=3), "ha")
    if args.scale:
        result["scale"] = await scale(args.scale)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox.json").write_text(json.dumps(result, indent=2))
    print("| measure | value | goal |\n|---|---|---|")
    if "cold_build_s" in result:
        print(
            f"| cold `kubecare sandbox build` (v{DEFAULT_KUBE_VERSION}, etcd, kwok) | {result['cold_build_s']} s | |"
        )
    for key, label, goal in (
        ("single", "1 control plane + 3 workers", "≤ 15 s"),
        ("ha", "3 control planes + 3 workers", "≤ 30 s"),
    ):
        r = result[key]
        print(f"| `sandbox up`, {label} (median of {args.runs}) | {r['median_s']} s | {goal} |")
        parts = ", ".join(f"{k} {v}" for k, v in sorted(r["rss_mib"].items()))
        print(f"| resident memory, {label} | {r['rss_total_mib']} MiB ({parts}) | |")
    if "scale" in result:
        s = result["scale"]
        print(f"| `sandbox up --nodes {s['workers']}` | {s['up_s']} s | ≤ 60 s |")
        parts = ", ".join(f"{k} {v}" for k, v in sorted(s["rss_mib"].items()))
        print(
            f"| resident memory with {s['workers']} workers | {s['rss_total_mib']} MiB ({parts}) | ≤ 2 GiB |"
        )
        print(
            f"| node-down of one of {s['workers']} workers until NotReady / node-up until Ready | "
            f"{s['node_down_to_not_ready_s']} s / {s['node_up_to_ready_s']} s | |"
        )


if __name__ == "__main__":
    asyncio.run(main())
