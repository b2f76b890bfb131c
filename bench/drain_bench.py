"""Drain benchmark: kubecare drain vs kubectl drain on the same sandbox, in the same run.

    .venv/bin/python bench/drain_bench.py [--runs 5] [--deployments 30] [--replicas 10]

Scenarios (each drains the node holding the pods to the other worker, so every run starts from
the same state):
(a) 300 pods from 30 Deployments, deleted at once (kwok removes a pod as soon as it is deleted);
(b) 10 pods under a PodDisruptionBudget with maxUnavailable=1 whose replacements become Ready
    after about a second, deleted at once;
(c) closer to real nodes: 10 pods under the same budget, each taking 5 s to terminate (grace
    period 30 s, kwok deletes after 5 s) and whose replacements take 3 s to become Ready.

Fairness: both tools run the same command line shape against the same sandbox; the order
alternates every run (kubectl first, then kubecare first), so each tool drains in both directions
equally often; API requests are counted the same way for both, on the server, from the
apiserver's audit log by user agent; both tools' peak RSS is taken by GNU time. Versions are
recorded. Medians of ``--runs``. Writes bench/results/drain.json and prints a Markdown table.
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

from kubecare import __version__
from kubecare.kube import ClientOptions, Kube
from kubecare.kube.objects import is_pod_ready
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
NODES = ("worker-1", "worker-2")
AGENTS = {"kubectl": "kubectl/", "kubecare": "kubecare/"}


def run_timed(argv: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of the process; exits on failure.

    The peak comes from GNU time, not from this process's wait4: Linux carries a forked child's
    high-water mark over exec, so wait4 here would report this (large) Python process's RSS for
    every tool.
    """
    with tempfile.NamedTemporaryFile(mode="r") as peak:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", peak.name, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return seconds, int(peak.read().split()[-1])


class AuditCounter:
    """Requests per tool, read from the apiserver's audit log (one line per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def count(self, since: int, agent: str) -> int:
        time.sleep(1.0)  # watches are logged when they end, just after the process exits
        with open(self.path, "rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        count = 0
        for line in lines:
            try:
                count += json.loads(line).get("userAgent", "").startswith(agent)
            except ValueError:
                continue  # a line still being written
        return count


async def set_schedulable(kube: Kube, node: str, schedulable: bool) -> None:
    await kube.request_json(
        "PATCH",
        f"/api/v1/nodes/{node}",
        body={"spec": {"unschedulable": None if schedulable else True}},
        content_type="application/merge-patch+json",
    )


async def wait_ready_on(kube: Kube, ns: str, node: str, count: int, timeout: float = 600) -> None:
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
    name: str, replicas: int, annotations: dict[str, str] | None = None, grace: int = 0
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
                    "terminationGracePeriodSeconds": grace,
                },
            },
        },
    }


PDB = {
    "apiVersion": "policy/v1",
    "kind": "PodDisruptionBudget",
    "metadata": {"name": "web"},
    "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
}


async def scenario(
    kube: Kube,
    sb: Sandbox,
    audit: AuditCounter,
    ns: str,
    objects: list[dict[str, object]],
    total: int,
    runs: int,
    pdb: str | None,
    nodes: tuple[str, str] = NODES,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Drain the node holding ``total`` pods to the other, ``runs`` times per tool, the tools
    alternating first; ``extra``: flags both tools get."""
    kubectl = str(find_kubectl())
    await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    while (
        await kube.http.get(f"/api/v1/namespaces/{ns}/serviceaccounts/default")
    ).status_code != 200:
        await asyncio.sleep(0.1)
    await set_schedulable(kube, nodes[1], False)
    await set_schedulable(kube, nodes[0], True)
    for obj in objects:
        path = (
            f"/apis/apps/v1/namespaces/{ns}/deployments"
            if obj["kind"] == "Deployment"
            else f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets"
        )
        await kube.request_json("POST", path, body=obj)
    await wait_ready_on(kube, ns, nodes[0], total)
    source = 0
    times: dict[str, list[float]] = {"kubectl": [], "kubecare": []}
    rss: dict[str, list[int]] = {"kubectl": [], "kubecare": []}
    requests: dict[str, list[int]] = {"kubectl": [], "kubecare": []}
    directions: dict[str, list[str]] = {"kubectl": [], "kubecare": []}
    for i in range(runs):
        order = ("kubectl", "kubecare") if i % 2 == 0 else ("kubecare", "kubectl")
        for tool in order:
            src, dst = nodes[source], nodes[1 - source]
            await set_schedulable(kube, dst, True)
            if pdb:
                await wait_pdb_allows(kube, ns, pdb)
            common = ["--kubeconfig", str(sb.kubeconfig), "drain", src, "--timeout", "900s",
                      *extra]  # fmt: skip
            argv = (
                [kubectl, *common] if tool == "kubectl" else [str(BIN / "kubecare"), *common, "-q"]
            )
            mark = audit.mark()
            seconds, max_rss = run_timed(argv)
            times[tool].append(seconds)
            rss[tool].append(max_rss)
            requests[tool].append(audit.count(mark, AGENTS[tool]))
            directions[tool].append(f"{src}->{dst}")
            await wait_ready_on(kube, ns, dst, total)
            source = 1 - source
    await kube.http.delete(f"/api/v1/namespaces/{ns}")
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "kubectl_s": round(med["kubectl"], 2),
        "kubecare_s": round(med["kubecare"], 2),
        "ratio": round(med["kubecare"] / med["kubectl"], 2),
        "all_s": {k: [round(x, 2) for x in v] for k, v in times.items()},
        "directions": directions,
        "requests_median": {k: statistics.median(v) for k, v in requests.items()},
        "requests": requests,
        "peak_rss_mib": {k: round(max(v) / 1024) for k, v in rss.items()},
    }


def versions(kubectl: str) -> dict[str, str]:
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, check=True
    )
    return {
        "kubectl": json.loads(out.stdout)["clientVersion"]["gitVersion"],
        "kubecare": __version__,
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--deployments", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--pdb-pods", type=int, default=10)
    parser.add_argument("--only", choices=("a", "b", "c"), action="append")
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    sb = Sandbox("bench-drain")
    await sb.up(SandboxOptions(workers=2, audit_log=True))
    audit = AuditCounter(sb.dir / "logs" / "audit" / "audit.log")
    wanted = set(args.only or ("a", "b", "c"))
    results: dict[str, Any] = {}
    try:
        async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
            kube.http.headers["User-Agent"] = "drain-bench"  # not counted as either tool
            total = args.deployments * args.replicas
            if "a" in wanted:
                results["a"] = await scenario(
                    kube,
                    sb,
                    audit,
                    "bench-a",
                    [deployment(f"app-{i:02d}", args.replicas) for i in range(args.deployments)],
                    total,
                    args.runs,
                    None,
                )
            if "b" in wanted:
                slow = {"pod-ready.stage.kwok.x-k8s.io/delay": "1s"}
                results["b"] = await scenario(
                    kube,
                    sb,
                    audit,
                    "bench-b",
                    [deployment("web", args.pdb_pods, slow), PDB],
                    args.pdb_pods,
                    args.runs,
                    "web",
                )
            if "c" in wanted:
                real = {
                    "pod-ready.stage.kwok.x-k8s.io/delay": "3s",
                    "pod-delete.stage.kwok.x-k8s.io/delay": "5s",
                }
                results["c"] = await scenario(
                    kube,
                    sb,
                    audit,
                    "bench-c",
                    [deployment("web", args.pdb_pods, real, grace=30), PDB],
                    args.pdb_pods,
                    args.runs,
                    "web",
                )
        kube_version = sb.load().version
    finally:
        sb.down()
    result = {
        "runs": args.runs,
        "cores": os.cpu_count(),
        "versions": {**versions(str(find_kubectl())), "kubernetes": kube_version},
        **results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "drain.json").write_text(json.dumps(result, indent=2))
    names = {
        "a": f"(a) {args.deployments * args.replicas} pods from {args.deployments} Deployments, deleted at once",
        "b": f"(b) {args.pdb_pods} pods under a PDB (maxUnavailable=1), replacements Ready after ~1 s, deleted at once",
        "c": f"(c) {args.pdb_pods} pods under a PDB, 5 s to terminate, replacements Ready after 3 s",
    }
    print(
        "| scenario | `kubectl drain` | `kubecare drain` | ratio | API requests (kubectl / kubecare) | peak RSS MiB (kubectl / kubecare) |"
    )
    print("|---|---|---|---|---|---|")
    for key, r in results.items():
        req, mem = r["requests_median"], r["peak_rss_mib"]
        print(
            f"| {names[key]} | {r['kubectl_s']} s | {r['kubecare_s']} s | **{r['ratio']}x** | "
            f"{req['kubectl']:g} / {req['kubecare']:g} | {mem['kubectl']} / {mem['kubecare']} |"
        )
    print(f"\nversions: {result['versions']}; medians of {args.runs} runs per tool")


if __name__ == "__main__":
    asyncio.run(main())
