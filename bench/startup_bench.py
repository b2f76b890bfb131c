"""Start-up benchmark: one-shot kubecare commands against their kubectl yardsticks, same run.

    .venv/bin/python bench/startup_bench.py [--runs 15]

A 4-node sandbox (one control plane, three workers, no pods on the workers). Each pair runs
alternately (kubectl first on even rounds, kubecare first on odd ones); the figure is the median
wall time of ``--runs`` rounds, beside the Python floor (``python -c pass``) measured in the same
rounds. Writes bench/results/startup.json and prints a Markdown table.
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

from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, env=env, check=False)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {res.stderr.decode()[-1000:]}")
    return seconds


def sequence(commands: list[list[str]], env: dict[str, str]) -> float:
    return sum(timed(c, env) for c in commands)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    sb = Sandbox("bench-startup")
    await sb.up(SandboxOptions(workers=3))
    kubectl, kubecare = str(find_kubectl()), str(BIN / "kubecare")
    env = {**os.environ, "KUBECONFIG": str(sb.kubeconfig)}
    node = "worker-3"
    pairs = {
        "help": (
            [[kubectl, "version", "--client"]],
            [[kubecare, "--help"]],
        ),
        "version": (
            [[kubectl, "version", "--client"]],
            [[kubecare, "version"]],
        ),
        "nodes": ([[kubectl, "get", "nodes"]], [[kubecare, "nodes"]]),
        "cordon+uncordon": (
            [[kubectl, "cordon", node], [kubectl, "uncordon", node]],
            [[kubecare, "cordon", node], [kubecare, "uncordon", node]],
        ),
        "drain --plan (empty node)": (
            [[kubectl, "drain", node, "--dry-run=client"]],
            [[kubecare, "drain", node, "--plan"]],
        ),
    }
    floor: list[float] = []
    times: dict[str, dict[str, list[float]]] = {k: {"kubectl": [], "kubecare": []} for k in pairs}
    try:
        for _ in range(2):  # warm the page cache and the apiserver's caches
            for ref, ours in pairs.values():
                sequence(ref, env)
                sequence(ours, env)
        for i in range(args.runs):
            floor.append(timed([sys.executable, "-c", "pass"], env))
            for name, (ref, ours) in pairs.items():
                order = [("kubectl", ref), ("kubecare", ours)]
                for tool, cmds in order if i % 2 == 0 else reversed(order):
                    times[name][tool].append(sequence(cmds, env))
    finally:
        sb.down()
    version = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    )
    result = {
        "runs": args.runs,
        "cores": os.cpu_count(),
        "kubectl": json.loads(version.stdout)["clientVersion"]["gitVersion"],
        "python_floor_s": round(statistics.median(floor), 3),
        "commands": {
            name: {tool: round(statistics.median(v), 3) for tool, v in t.items()}
            | {
                "ratio": round(
                    statistics.median(t["kubecare"]) / statistics.median(t["kubectl"]), 2
                )
            }
            for name, t in times.items()
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "startup.json").write_text(json.dumps(result, indent=2))
    print("| command | kubectl | kubecare | ratio |\n|---|---|---|---|")
    for name, r in result["commands"].items():  # type: ignore[attr-defined]
        print(f"| {name} | {r['kubectl']} s | {r['kubecare']} s | **{r['ratio']}x** |")
    print(
        f"\nPython floor (python -c pass): {result['python_floor_s']} s; kubectl {result['kubectl']}; median of {args.runs}"
    )


if __name__ == "__main__":
    asyncio.run(main())
