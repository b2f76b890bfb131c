"""Drain benchmark: kubecare drain vs kubectl drain on the same sandbox, in the same run.

    .venv/bin/python bench/drain_bench.py [--runs 3] [--deployments 30] [--replicas 10]

(a) a node with 300 pods from 30 Deployments: wall time, API requests (kubectl's from -v=6 in a
    separate run, kubecare's from its request counter), kubecare's peak RSS;
(b) 10 pods under a PodDisruptionBudget with maxUnavailable=1 whose replacements become Ready
    after about a second: wall time.
Runs alternate between the tools; each drain moves the pods from one worker to the other, so every
run starts from the same state. Prints a Markdown table; writes bench/results/drain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kubecare.kube import ClientOptions, Kube
from kubecare.kube.objects import is_pod_ready
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
NODES = ("worker-1", "worker-2")


def run_timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Wall seconds, peak RSS (KiB) of the process, stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
    return seconds, usage.ru_maxrss, err


async def set_schedulable(kube: Kube, node: str, schedulable: bool) -> None:
    await kube.request_json(
        "PATCH",
        f"/api/v1/nodes/{node}",
        body={"spec": {"unschedulable": None if schedulable else True}},
        content_type="application/merge-patch+json",
    )


async def wait_ready_on(kube: Kube, ns: str, node: str, count: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        items = [p async for p in kube.list_items(f"/api/v1/namespaces/{ns}/pods")]
        ready = [
            p
            for p in items
            if p["spec"].get("nodeName") == node
            and is_pod_ready(p)
            and not p["metadata"].get("deletionTimestamp")
        ]
        if len(ready) == count and len(items) == count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(ready)}/{count} pods ready on {node}")
        await asyncio.sleep(0.5)


async def wait_pdb_allows(kube: Kube, ns: str, name: str) -> None:
    for _ in range(600):
        st = (
            await kube.get_json(f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}")
        ).get("status") or {}
        if st.get("disruptionsAllowed", 0) >= 1:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("PDB never allowed a disruption")


def deployment(
    name: str, replicas: int, annotations: dict[str, str] | None = None
) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations or {}},
                "spec": {
                    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        },
    }


async def scenario(
    kube: Kube,
    sb: Sandbox,
    ns: str,
    objects: list[dict[str, object]],
    total: int,
    runs: int,
    pdb: str | None,
) -> dict[str, object]:
    kubectl = str(find_kubectl())
    await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    while (
        await kube.http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default")
    ).status_code != 200:
        await asyncio.sleep(0.1)
    await set_schedulable(kube, NODES[1], False)
    await set_schedulable(kube, NODES[0], True)
    for obj in objects:
        path = (
            f"/apis/apps/v1/namespaces/{ns}/deployments"
            if obj["kind"] == "Deployment"
            else f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"
        )
        await kube.request_json("POST", path, body=obj)
    await wait_ready_on(kube, ns, NODES[0], total)
    source = 0
    times: dict[str, list[float]] = {"kubectl": [], "kubecare": []}
    rss: list[int] = []
    requests: dict[str, int] = {}
    count_file = Path(tempfile.mkdtemp()) / "requests"
    schedule = [tool for _ in range(runs) for tool in ("kubectl", "kubecare")]
    schedule += ["kubectl-v6", "kubecare-count"]  # one more each, only to count requests
    for tool in schedule:
        src, dst = NODES[source], NODES[1 - source]
        await set_schedulable(kube, dst, True)
        if pdb:
            await wait_pdb_allows(kube, ns, pdb)
        env = dict(os.environ)
        if tool.startswith("kubectl"):
            argv = [kubectl, "--kubeconfig", str(sb.kubeconfig), "drain", src, "--timeout", "600s"]
            if tool == "kubectl-v6":
                argv.append("-v=6")
        else:
            argv = [
                str(BIN / "kubecare"),
                "--kubeconfig",
                str(sb.kubeconfig),
                "drain",
                src,
                "--timeout",
                "600s",
                "-q",
            ]
            if tool == "kubecare-count":
                env["KUBECARE_REQUEST_COUNT_FILE"] = str(count_file)
        seconds, max_rss, err = run_timed(argv, env)
        if tool in times:
            times[tool].append(seconds)
            if tool == "kubecare":
                rss.append(max_rss)
        elif tool == "kubectl-v6":
            requests["kubectl"] = len(
                re.findall(
                    r'verb="(?:GET|POST|PUT|PATCH|DELETE)"|\b(?:GET|POST|PUT|PATCH|DELETE) https://',
                    err,
                )
            )
        else:
            requests["kubecare"] = int(count_file.read_text())
        await wait_ready_on(kube, ns, dst, total)
        source = 1 - source
    await kube.http.delete(f"/api/v1/namespaces/{ns}")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "kubectl_s": round(med["kubectl"], 2),
        "kubecare_s": round(med["kubecare"], 2),
        "ratio": round(med["kubecare"] / med["kubectl"], 2),
        "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "requests": requests,
        "kubecare_peak_rss_mib": round(max(rss) / 1024) if rss else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deployments", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--pdb-pods", type=int, default=10)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    sb = Sandbox("bench-drain")
    await sb.up(SandboxOptions(workers=2))
    try:
        async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
            total = args.deployments * args.replicas
            a = await scenario(
                kube,
                sb,
                "bench-a",
                [deployment(f"app-{i:02d}", args.replicas) for i in range(args.deployments)],
                total,
                args.runs,
                None,
            )
            slow = {"pod-ready.stage.kwok.x-k8s.io/delay": "1s"}
            pdb = {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": {"name": "web"},
                "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
            }
            b = await scenario(
                kube,
                sb,
                "bench-b",
                [deployment("web", args.pdb_pods, slow), pdb],
                args.pdb_pods,
                args.runs,
                "web",
            )
    finally:
        sb.down()
    result = {"runs": args.runs, "a": a, "b": b, "cores": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drain.json").write_text(json.dumps(result, indent=2))
    print(
        "| scenario | kubectl drain | kubecare drain | ratio | API requests (kubectl / kubecare) |\n|---|---|---|---|---|"
    )
    print(
        f"| (a) {total} pods, {args.deployments} Deployments, one node | {a['kubectl_s']} s | {a['kubecare_s']} s | {a['ratio']}x | {a['requests'].get('kubectl')} / {a['requests'].get('kubecare')} |"
    )  # type: ignore[attr-defined]
    print(
        f"| (b) {args.pdb_pods} pods, PDB maxUnavailable=1, Ready after ~1 s | {b['kubectl_s']} s | {b['kubecare_s']} s | {b['ratio']}x | {b['requests'].get('kubectl')} / {b['requests'].get('kubecare')} |"
    )  # type: ignore[attr-defined]
    print(f"\nkubecare drain peak RSS in (a): {a['kubecare_peak_rss_mib']} MiB")


if __name__ == "__main__":
    asyncio.run(main())
