"""Benchmark of the foundation: sandbox start time and memory, and the first node commands
against kubectl on the same sandbox in the same run.

    .venv/bin/python bench/sandbox_bench.py [--runs 5] [--cold-build]

--cold-build also times `kubecare sandbox build` from nothing (empty Go build and module caches,
empty kubecare cache: what a fresh machine does; about ten minutes on 2 cores).
Prints a Markdown table and writes bench/results/sandbox.json. Medians of --runs runs.
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

from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION, find_kubectl

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=env)
    return time.perf_counter() - t0


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
        seconds = timed([str(BIN / "kubecare"), "sandbox", "build"], env)
        shutil.rmtree(tmp, ignore_errors=True)
        return seconds


async def up_times(runs: int, workers: int) -> tuple[list[float], dict[str, int]]:
    times, memory = [], {}
    for i in range(runs):
        sb = Sandbox(f"bench-up-{i}")
        try:
            times.append(await sb.up(SandboxOptions(workers=workers)))
            await asyncio.sleep(5)  # let start-up settle before reading memory
            memory = sb.memory()
        finally:
            sb.down()
    return times, memory


def run_all(cmds: list[list[str]]) -> float:
    return sum(timed(c) for c in cmds)


def cli_pairs(sb: Sandbox, runs: int) -> dict[str, dict[str, float]]:
    """The same operations with kubectl and with kubecare, alternating, medians of ``runs``."""
    kubectl = [str(find_kubectl()), "--kubeconfig", str(sb.kubeconfig)]
    kubecare = [str(BIN / "kubecare"), "--kubeconfig", str(sb.kubeconfig)]
    cases = {
        "list nodes": ([[*kubectl, "get", "nodes"]], [[*kubecare, "nodes"]]),
        "cordon + uncordon one node": (
            [[*kubectl, "cordon", "worker-1"], [*kubectl, "uncordon", "worker-1"]],
            [[*kubecare, "cordon", "worker-1"], [*kubecare, "uncordon", "worker-1"]],
        ),
    }
    out = {}
    for name, (theirs, ours) in cases.items():
        t_theirs, t_ours = [], []
        for _ in range(runs):
            t_theirs.append(run_all(theirs))
            t_ours.append(run_all(ours))
        a, b = statistics.median(t_theirs), statistics.median(t_ours)
        out[name] = {"kubectl_s": round(a, 3), "kubecare_s": round(b, 3), "ratio": round(b / a, 2)}
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--cold-build", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    result: dict[str, object] = {
        "kubernetes": DEFAULT_KUBE_VERSION,
        "cores": os.cpu_count(),
        "runs": args.runs,
    }
    if args.cold_build:
        result["cold_build_s"] = round(cold_build(), 1)
    times, memory = await up_times(args.runs, args.workers)
    result["up_s"] = {
        "median": round(statistics.median(times), 2),
        "all": [round(t, 2) for t in times],
    }
    result["rss_mib"] = {k: round(v / 1048576) for k, v in memory.items()}
    result["rss_total_mib"] = round(sum(memory.values()) / 1048576)
    sb = Sandbox("bench-cli")
    try:
        await sb.up(SandboxOptions(workers=args.workers))
        result["cli"] = cli_pairs(sb, max(args.runs, 7))
    finally:
        sb.down()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sandbox.json").write_text(json.dumps(result, indent=2))
    print("| measure | value |\n|---|---|")
    if "cold_build_s" in result:
        print(
            f"| cold `kubecare sandbox build` (v{DEFAULT_KUBE_VERSION}, etcd, kwok) | {result['cold_build_s']} s |"
        )
    print(
        f"| `sandbox up --nodes {args.workers}` (median of {args.runs}) | {result['up_s']['median']} s |"
    )  # type: ignore[index]
    print(f"| resident memory, whole sandbox | {result['rss_total_mib']} MiB |")
    print("\n| operation | kubectl | kubecare | ratio |\n|---|---|---|---|")
    for name, r in result["cli"].items():  # type: ignore[attr-defined]
        print(f"| {name} | {r['kubectl_s']} s | {r['kubecare_s']} s | {r['ratio']}x |")


if __name__ == "__main__":
    asyncio.run(main())
