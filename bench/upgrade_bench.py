"""Upgrade benchmark: a rolling upgrade of 100 workers, 10 % at a time, on one sandbox.

    .venv/bin/python bench/upgrade_bench.py [--runs 3] [--workers 100] [--deployments 20]

The sandbox (one control-plane node, Kubernetes 1.36, ``--workers`` kwok workers, 20 Deployments
of 10 pods, each under a PDB with maxUnavailable 2) is upgraded to 1.37 in two ways:

(a) once, ``kubecare upgrade apply --executor sandbox --max-unavailable 10%`` from 1.36: the
    real kubeadm on every node (``kubeadm upgrade apply`` on the control plane: its static pods
    restarted at the new version; ``kubeadm upgrade node`` on each worker), in batches of 10.
    Reported: total time, kubecare's own overhead per node beyond its drain and executor time
    (from the journal: each node's total minus drain minus executor, plus its share of the
    batch's health gate), peak RSS.
(b) ``--runs`` times, the workers only (the kubelets reset to 1.36 between runs), by kubecare and
    by the script an operator would write from the kubeadm docs: batches of 10 nodes, each
    ``kubectl drain --ignore-daemonsets`` → the same executor action, one script both run (the
    kubelet version and a new boot ID reported for the node, one status patch; kubecare through
    ``--executor command``) → ``kubectl wait --for=condition=Ready`` → ``kubectl uncordon``;
    after each batch ``kubectl wait --for=condition=Available`` on every Deployment (kubecare's
    health gate). The order alternates every run.

Fairness: same sandbox, same workload, same batches; requests are counted the same way for both,
on the server, from the apiserver's audit log by user agent; wall time and peak RSS by GNU time
(for the script: the peak of its largest process). kubecare also takes its maintenance lock per
node, writes its journal and plans first (preflight over every node); the script does none of
that, which is part of what is measured. What this does not represent: real nodes, where the
executor (apt, kubeadm, a kubelet restart) takes minutes and dominates; here it is one API call,
so the numbers isolate the orchestration. Writes bench/results/upgrade.json, prints a table.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from drain_bench import AuditCounter, run_timed, versions
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl
from kubecare.sandbox.nodes import set_kubelet_version

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
OLD, NEW = "1.36.3", "1.37.2"

#: the executor action of (b), the same file for both tools: the node reports the new kubelet and
#: a new boot ID (what apt, kubeadm and a kubelet restart end in on a real node)
STEP = r"""#!/bin/bash
set -uo pipefail
@KUBECTL@ --kubeconfig @KCFG@ patch node "$1" --subresource=status --type=merge -p \
  "{\"status\":{\"nodeInfo\":{\"kubeletVersion\":\"v$VERSION\",\"bootID\":\"$(cat /proc/sys/kernel/random/uuid)\"}}}" >/dev/null
"""

SCRIPT = r"""#!/bin/bash
# The kubeadm docs' worker loop, 10 nodes at a time.
set -uo pipefail
K="$KUBECTL --kubeconfig $KCFG"
one() {
  local n=$1
  $K drain "$n" --ignore-daemonsets --timeout=600s >/dev/null || return 1
  bash "$STEP" "$n" || return 1
  $K wait --for=condition=Ready "node/$n" --timeout=600s >/dev/null || return 1
  $K uncordon "$n" >/dev/null || return 1
}
batch() {
  local pids=() rc=0
  for n in "$@"; do one "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc -eq 0 ] || exit 1
  $K wait --for=condition=Available deployment --all -A --timeout=600s >/dev/null || exit 1
}
set -- $NODES
while [ $# -gt 0 ]; do
  group=()
  for _ in $(seq 1 "$BATCH"); do [ $# -gt 0 ] && { group+=("$1"); shift; }; done
  batch "${group[@]}"
done
"""


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


async def populate(kube: Kube, deployments: int, replicas: int) -> None:
    await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": "bench"}})
    for _ in range(100):
        r = await kube.http.get("/api/v1/namespaces/bench/serviceaccounts/default")
        if r.status_code == 200:
            break
        await asyncio.sleep(0.1)
    for i in range(deployments):
        name = f"app-{i}"
        await kube.request_json(
            "POST",
            "/apis/apps/v1/namespaces/bench/deployments",
            body={
                "metadata": {"name": name},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
                            "terminationGracePeriodSeconds": 0,
                        },
                    },
                },
            },
        )
        await kube.request_json(
            "POST",
            "/apis/policy/v1/namespaces/bench/poddisruptionbudgets",
            body={
                "metadata": {"name": name},
                "spec": {"maxUnavailable": 2, "selector": {"matchLabels": {"app": name}}},
            },
        )
    await available(kube, deployments * replicas)


async def available(kube: Kube, pods: int) -> None:
    for _ in range(1200):
        deps = await kube.list_objects("/apis/apps/v1/namespaces/bench/deployments")
        ready = sum(int((d.get("status") or {}).get("availableReplicas") or 0) for d in deps)
        cordoned = [
            n for n in await kube.list_objects("/api/v1/nodes") if n["spec"].get("unschedulable")
        ]
        if ready >= pods and not cordoned:
            return
        await asyncio.sleep(0.5)
    raise SystemExit("the workload did not become available")


async def reset_workers(sb: Sandbox, kube: Kube, workers: list[str], pods: int) -> None:
    """Every worker back at the old kubelet, the journal gone: the same start for each run."""
    sem = asyncio.Semaphore(20)

    async def one(n: str) -> None:
        async with sem:
            await set_kubelet_version(kube, n, OLD)

    await asyncio.gather(*(one(n) for n in workers))
    r = await kube.http.delete("/api/v1/namespaces/kube-system/configmaps/kubecare-upgrade")
    assert r.status_code in (200, 404)
    await available(kube, pods)


def overheads(journal: dict[str, Any], batch: int) -> list[float]:
    """Per worker: its total minus its drain and executor seconds, plus its share of the
    batch's health gate (the gate is waited for once per batch)."""
    out = []
    for n in journal["nodes"]:
        s = n["seconds"]
        if n["role"] != "worker":
            continue
        out.append(
            s.get("total", 0) - s.get("drain", 0) - s.get("executor", 0) + s.get("gate", 0) / batch
        )
    return out


def kubecare_argv(sb: Sandbox, journal_out: Path, step: Path | None = None) -> list[str]:
    """``step``: the executor action both tools run in (b) (``--executor command``); without it
    the sandbox executor (the real kubeadm on each node)."""
    executor = (
        ["--executor", "command", "--command", f"bash {step} {{node}}"]
        if step
        else ["--executor", "sandbox", "--sandbox", sb.name]
    )
    return [
        str(BIN / "kubecare"), "--kubeconfig", str(sb.kubeconfig), "upgrade", "apply",
        "--to", f"v{NEW}", *executor, "--yes",
        "--ignore-daemonsets", "--max-unavailable", "10%", "--no-snapshot", "--no-backup",
        "--journal", str(journal_out), "-q",
    ]  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    kubectl = find_kubectl()
    if kubectl is None:
        raise SystemExit("kubectl not found (make setup installs it)")
    batch = max(1, args.workers // 10)
    pods = args.deployments * args.replicas
    sb = Sandbox("bench-upgrade")
    work = Path(tempfile.mkdtemp(prefix="upgrade-bench-"))
    script = work / "upgrade-workers.sh"
    script.write_text(SCRIPT)
    step = work / "node-step.sh"
    # its tools named in it: the command executor passes only NODE/VERSION/MINOR/ROLE on
    step.write_text(STEP.replace("@KUBECTL@", str(kubectl)).replace("@KCFG@", str(sb.kubeconfig)))
    result: dict[str, Any] = {"versions": versions(str(kubectl)), "workers": args.workers}
    try:
        t0 = time.monotonic()
        await sb.up(SandboxOptions(workers=args.workers, version=OLD, audit_log=True, max_pods=110))
        print(f"sandbox up in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        audit = AuditCounter(sb.dir / "logs" / "audit" / "audit.log")
        workers = [f"worker-{i}" for i in range(1, args.workers + 1)]
        async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
            await populate(kube, args.deployments, args.replicas)

            # (a) the whole upgrade, control plane included
            journal_file = work / "full.json"
            mark = audit.mark()
            seconds, rss = run_timed(kubecare_argv(sb, journal_file))
            full = json.loads(journal_file.read_text())
            cp = next(n for n in full["nodes"] if n["role"] != "worker")
            over = overheads(full, batch)
            result["full"] = {
                "seconds": round(seconds, 1),
                "control_plane_seconds": cp["seconds"].get("total"),
                "peak_rss_kib": rss,
                "requests": audit.count(mark, "kubecare/"),
                "overhead_per_node_median": round(median(over), 3),
                "overhead_per_node_max": round(max(over), 3),
            }
            print(f"(a) full upgrade: {result['full']}", file=sys.stderr)

            # (b) workers only, both tools, alternating
            runs: dict[str, list[dict[str, float]]] = {"kubecare": [], "kubectl": []}
            env = {
                **os.environ,
                "KUBECTL": str(kubectl),
                "KCFG": str(sb.kubeconfig),
                "VERSION": NEW,
                "NODES": " ".join(workers),
                "STEP": str(step),
                "BATCH": str(batch),
            }
            for r in range(args.runs):
                order = ["kubecare", "kubectl"] if r % 2 == 0 else ["kubectl", "kubecare"]
                for tool in order:
                    await reset_workers(sb, kube, workers, pods)
                    mark = audit.mark()
                    if tool == "kubecare":
                        jf = work / f"run{r}.json"
                        seconds, rss = run_timed(kubecare_argv(sb, jf, step))
                        over = overheads(json.loads(jf.read_text()), batch)
                        extra = {"overhead_per_node": median(over)}
                    else:
                        t_0 = time.perf_counter()
                        proc = await asyncio.to_thread(
                            subprocess.run,
                            ["/usr/bin/time", "-f", "%M", "-o", str(work / "rss"), "bash", str(script)],
                            env=env, capture_output=True, text=True, check=False,
                        )  # fmt: skip
                        seconds = time.perf_counter() - t_0
                        if proc.returncode != 0:
                            raise SystemExit(f"the kubectl script failed: {proc.stderr[-2000:]}")
                        rss = int((work / "rss").read_text().split()[-1])
                        extra = {}
                    versions_now = {
                        n["status"]["nodeInfo"]["kubeletVersion"]
                        for n in await kube.list_objects("/api/v1/nodes")
                    }
                    assert versions_now == {f"v{NEW}"}, versions_now
                    runs[tool].append(
                        {
                            "seconds": seconds,
                            "peak_rss_kib": rss,
                            "requests": audit.count(mark, f"{tool}/"),
                            **extra,
                        }
                    )
                    print(f"run {r + 1} {tool}: {seconds:.1f}s", file=sys.stderr)
            summary = {
                tool: {k: median([x[k] for x in xs]) for k in xs[0]} for tool, xs in runs.items()
            }
            result["workers_only"] = {"runs": runs, "median": summary}
    finally:
        sb.down()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "upgrade.json").write_text(json.dumps(result, indent=2) + "\n")
    m = result["workers_only"]["median"]
    f = result["full"]
    print(
        f"| full upgrade, {args.workers} workers, 10% at a time (kubecare) | {f['seconds']:.0f} s "
        f"(control plane {f['control_plane_seconds']:.0f} s) | overhead/node median "
        f"{f['overhead_per_node_median']:.2f} s, max {f['overhead_per_node_max']:.2f} s | "
        f"peak RSS {f['peak_rss_kib'] / 1024:.0f} MiB |"
    )
    print(
        f"| workers only: kubecare vs kubectl script | {m['kubecare']['seconds']:.1f} s vs "
        f"{m['kubectl']['seconds']:.1f} s ({m['kubectl']['seconds'] / m['kubecare']['seconds']:.2f}x) | "
        f"requests {m['kubecare']['requests']:.0f} vs {m['kubectl']['requests']:.0f} | "
        f"RSS {m['kubecare']['peak_rss_kib'] / 1024:.0f} vs {m['kubectl']['peak_rss_kib'] / 1024:.0f} MiB |"
    )


if __name__ == "__main__":
    asyncio.run(main())
