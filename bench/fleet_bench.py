"""Fleet benchmark: `kubecare fleet status` over N clusters against a kubectl-foreach-style
loop (`kubectl --context C get nodes; kubectl --context C version` per cluster, one after the
other), and fleet status over N clusters against over one.

    .venv/bin/python bench/fleet_bench.py [--runs 5] [--clusters 20]

Memory is short on this machine (2 cores), so the N clusters are N distinct kubeconfig files and
fleet entries that all reach one sandbox's apiserver (workers=3, audit log on): every cluster's
requests are real requests to a real apiserver, but one apiserver answers them all, so this
measures the client side's concurrency, not N control planes answering at once.

Fairness: both tools read the same N kubeconfig files, from the host, process start included;
the order alternates every run; requests are counted for both the same way, on the server, from
the apiserver's audit log by user agent. kubecare's status asks much more per cluster than the
loop (the whole upgrade preflight: every node's drain, PDBs, deprecated APIs, the journal, the
leases, the serving certificate), so its request count is higher; the loop shows less.
Medians of --runs. Prints a Markdown table; writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from kubecare import __version__
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl

sys.path.insert(0, str(Path(__file__).parent))
from drain_bench import AuditCounter

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"


def timed(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if out.returncode not in ok:
        raise SystemExit(f"{' '.join(argv[:4])} failed ({out.returncode}): {out.stderr[-1500:]}")
    return took


def fleet_file(sb: Sandbox, work: Path, n: int) -> tuple[Path, list[Path]]:
    """N copies of the sandbox's kubeconfig, and a fleet file naming each as its own cluster."""
    copies = []
    for i in range(n):
        p = work / f"cluster-{i:02d}.yaml"
        shutil.copy(sb.kubeconfig, p)
        os.chmod(p, 0o600)
        copies.append(p)
    context = f"kubecare-{sb.name}"
    doc = {
        "clusters": [
            {"name": f"c{i:02d}", "context": context, "kubeconfig": str(p)}
            for i, p in enumerate(copies)
        ]
    }
    path = work / f"fleet-{n}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, copies


def kubectl_loop(kubectl: str, copies: list[Path], context: str) -> list[list[str]]:
    return [
        argv
        for p in copies
        for argv in (
            [kubectl, "--kubeconfig", str(p), "--context", context, "get", "nodes"],
            [kubectl, "--kubeconfig", str(p), "--context", context, "version", "-o", "json"],
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clusters", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    kubectl = str(find_kubectl())
    sb = Sandbox("fleet-bench")
    import asyncio

    asyncio.run(sb.up(SandboxOptions(workers=3, audit_log=True)))
    try:
        work = Path(tempfile.mkdtemp(prefix="kubecare-fleet-bench-"))
        many, copies = fleet_file(sb, work, args.clusters)
        (work / "one").mkdir()
        one, _ = fleet_file(sb, work / "one", 1)
        context = f"kubecare-{sb.name}"
        audit = AuditCounter(sb.dir / "logs" / "audit" / "audit.log")
        kubecare = [str(BIN / "kubecare"), "fleet", "status", "-o", "json"]
        times: dict[str, list[float]] = {"loop": [], "fleet": [], "fleet1": []}
        requests: dict[str, list[int]] = {"loop": [], "fleet": [], "fleet1": []}

        def fleet(path: Path, key: str) -> None:
            mark = audit.mark()
            # exit 0: every cluster read (1 would be a cluster that could not be)
            times[key].append(timed([*kubecare, "--fleet", str(path)]))
            requests[key].append(audit.count(mark, "kubecare/"))

        def loop() -> None:
            mark = audit.mark()
            t0 = time.perf_counter()
            for argv in kubectl_loop(kubectl, copies, context):
                timed(argv)
            times["loop"].append(time.perf_counter() - t0)
            requests["loop"].append(audit.count(mark, "kubectl/"))

        fleet(many, "fleet")  # warm: first imports, page cache
        times["fleet"].clear()
        requests["fleet"].clear()
        for run in range(args.runs):
            steps = [loop, lambda: fleet(many, "fleet"), lambda: fleet(one, "fleet1")]
            for step in steps if run % 2 == 0 else reversed(steps):
                step()
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "clusters": args.clusters,
            "runs": args.runs,
            "seconds": times,
            "median": med,
            "requests_median": {k: statistics.median(v) for k, v in requests.items()},
            "ratio_loop_over_fleet": med["loop"] / med["fleet"],
            "fleet_n_over_fleet_1": med["fleet"] / med["fleet1"],
            "versions": {
                "kubectl": json.loads(
                    subprocess.run([kubectl, "version", "--client", "-o", "json"],
                                   capture_output=True, text=True, check=True).stdout
                )["clientVersion"]["gitVersion"],
                "kubecare": __version__,
            },
        }  # fmt: skip
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
        req = result["requests_median"]
        print("| scenario | kubectl loop | kubecare fleet status | ratio |")
        print("|---|---|---|---|")
        print(f"| {args.clusters} clusters | {med['loop']:.2f} s ({req['loop']:.0f} requests) | "
              f"{med['fleet']:.2f} s ({req['fleet']:.0f} requests) | "
              f"**{result['ratio_loop_over_fleet']:.2f}x** |")  # fmt: skip
        print(f"| fleet status, {args.clusters} clusters vs 1 | | {med['fleet']:.2f} s vs "
              f"{med['fleet1']:.2f} s | **{result['fleet_n_over_fleet_1']:.2f}x** (goal <= 2x) |")  # fmt: skip
    finally:
        sb.down()


if __name__ == "__main__":
    main()
