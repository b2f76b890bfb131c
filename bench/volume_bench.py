"""Volume backups: the throughput of a claim's data into a backup, kubecare against the tools.

    .venv/bin/python bench/volume_bench.py [--runs 3] [--mib 256]

One sandbox (one control plane, one kwok worker, one real node). A StatefulSet on the real node
writes ``--mib`` MiB to its claim of the sandbox's local-path class: one file of random bytes
(incompressible: no tool gains by compressing) and 512 files of 16 KiB. Then, per run, in
alternating order, the same directory is copied by:

- **floor**: ``tar -cf FILE -C DIR .`` on the node itself (entered with nsenter), to the node's
  disk: what no copy through the cluster can beat;
- **kubectl**: ``kubectl exec POD -- tar -cf - -C /data . > FILE`` (what ``kubectl cp`` does),
  through the apiserver and the kubelet's streaming, into a file on this machine;
- **kubecare**: ``kubecare backup create --volumes`` of the namespace: its objects, a helper pod
  on the node, ``du``, the tar over exec into the compressed, checksummed archive.

kubecare's time includes what kubectl's does not (listing the namespace's objects, starting the
helper pod and deleting it): it is the whole command. Requests are counted from the audit log by
user agent. Then the restore (the namespace deleted, ``backup restore``: the claims made, the
data unpacked through a helper pod) is timed once per run.

Prints Markdown tables and writes bench/results/volume.json.
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
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from drain_bench import AuditCounter, versions
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import CONTAINERD_VERSION, DEFAULT_KUBE_VERSION, find_kubectl
from kubecare.sandbox.images import TOOLS
from kubecare.sandbox.localpath import CLASS
from kubecare.sandbox.realnode import TOLERATION

RESULTS = Path(__file__).parent / "results"
NS = "vbench"


def statefulset(mib: int) -> dict[str, Any]:
    big = max(1, mib - 8)
    script = (
        f"[ -f /data/.written ] || {{ head -c $(({big}*1048576)) /dev/urandom > /data/blob && "
        "mkdir -p /data/small && for i in $(seq 512); do head -c 16384 /dev/urandom > "
        "/data/small/$i; done && touch /data/.written; }; exec sleep 360000"
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "real-1"},
                    "tolerations": [TOLERATION],
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "db", "image": TOOLS, "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                        "readinessProbe": {"exec": {"command": ["test", "-f", "/data/.written"]},
                                           "periodSeconds": 1},
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"storageClassName": CLASS, "accessModes": ["ReadWriteOnce"],
                         "resources": {"requests": {"storage": "4Gi"}}},
            }],
        },
    }  # fmt: skip


async def wait_ready(kube: Kube, ns: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = await kube.http.get(f"/api/v1/namespaces/{ns}/pods/db-0")
        if r.status_code == 200:
            conds = r.json().get("status", {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return
        await asyncio.sleep(0.5)
    raise SystemExit(f"db-0 in {ns} never became Ready")


def timed(argv: list[str], **kw: Any) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, **kw)
    return time.monotonic() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256)
    args = ap.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    sb = Sandbox(f"vbench-{uuid.uuid4().hex[:6]}")
    kubectl = str(find_kubectl())
    cli = [sys.executable, "-m", "kubecare.cli.app", "--kubeconfig", str(sb.kubeconfig)]
    work = Path(tempfile.mkdtemp(prefix="kubecare-vbench-"))
    out: dict[str, Any] = {"mib": args.mib, "runs": args.runs}
    try:
        await sb.up(SandboxOptions(workers=1, real_nodes=1, audit_log=True))
        audit = AuditCounter(sb.dir / "logs" / "audit" / "audit.log")
        async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
            await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": NS}})
            await asyncio.sleep(1)  # the namespace's default ServiceAccount
            await kube.request_json(
                "POST", f"/apis/apps/v1/namespaces/{NS}/statefulsets", body=statefulset(args.mib)
            )
            await wait_ready(kube, NS)
            claim = await kube.get_json(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/data-db-0")
            volume = await kube.get_json(f"/api/v1/persistentvolumes/{claim['spec']['volumeName']}")
        path = volume["spec"]["hostPath"]["path"]
        size = sum(
            f.stat().st_size
            for f in (sb.node_dir("real-1") / path.lstrip("/")).rglob("*")
            if f.is_file()
        )
        out["bytes"] = size
        enter = sb.enter_argv(sb.load(), "real-1")
        times: dict[str, list[float]] = {"floor": [], "kubectl": [], "kubecare": [],
                                         "kubecare_volume": []}  # fmt: skip
        requests: dict[str, list[int]] = {"kubectl": [], "kubecare": []}

        def floor(_run: int) -> None:
            times["floor"].append(timed(
                [*enter, "sh", "-c", f"tar -cf /var/tmp/floor.tar -C {path} . && sync -f "
                 "/var/tmp/floor.tar; rm -f /var/tmp/floor.tar"]))  # fmt: skip

        def by_kubectl(i: int) -> None:
            mark = audit.mark()
            with (work / f"kubectl-{i}.tar").open("wb") as f:
                times["kubectl"].append(timed(
                    [kubectl, "--kubeconfig", str(sb.kubeconfig), "-n", NS, "exec", "db-0", "--",
                     "tar", "-cf", "-", "-C", "/data", "."], stdout=f))  # fmt: skip
            requests["kubectl"].append(audit.count(mark, "kubectl"))
            (work / f"kubectl-{i}.tar").unlink()

        def by_kubecare(i: int) -> None:
            mark = audit.mark()
            t0 = time.monotonic()
            done = subprocess.run(
                [*cli, "backup", "create", f"b{i}", "--to", str(work), "--include-namespaces", NS,
                 "--exclude-resources", "secrets", "--volumes", "--volume-helper-image", TOOLS,
                 "-o", "json"], check=True, capture_output=True, text=True)  # fmt: skip
            times["kubecare"].append(time.monotonic() - t0)
            # the volume's own part: helper pod start, du, the copy into the archive
            times["kubecare_volume"].append(json.loads(done.stdout)["volumes"][0]["seconds"])
            requests["kubecare"].append(audit.count(mark, "kubecare"))

        for i in range(args.runs):
            steps = [floor, by_kubectl, by_kubecare]
            for step in steps if i % 2 == 0 else steps[::-1]:
                step(i)
        restores = []
        for i in range(args.runs):
            async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
                target = f"{NS}-r{i}"
                t0 = time.monotonic()
                subprocess.run(
                    [*cli, "backup", "restore", f"b{i}", "--from", str(work), "--namespace-map",
                     f"{NS}={target}", "--include-resources", "namespaces,persistentvolumeclaims",
                     "--volume-helper-image", TOOLS, "-o", "json"],
                    check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip
                restores.append(time.monotonic() - t0)
                await kube.http.delete(f"/api/v1/namespaces/{target}")
        mib = size / 2**20
        med = {k: statistics.median(v) for k, v in times.items()}
        out["seconds"] = {k: {"median": round(m, 2), "all": [round(x, 2) for x in times[k]]}
                          for k, m in med.items()}  # fmt: skip
        out["mib_per_s"] = {k: round(mib / m, 1) for k, m in med.items()}
        out["ratio_vs_floor"] = round(med["floor"] / med["kubecare"], 2)
        out["ratio_vs_kubectl"] = round(med["kubectl"] / med["kubecare"], 2)
        out["volume_ratio_vs_kubectl"] = round(med["kubectl"] / med["kubecare_volume"], 2)
        out["requests_median"] = {k: statistics.median(v) for k, v in requests.items()}
        out["restore_s"] = {"median": round(statistics.median(restores), 2),
                            "all": [round(x, 2) for x in restores]}  # fmt: skip
        out["restore_mib_per_s"] = round(mib / statistics.median(restores), 1)
        out["archive_bytes"] = (work / "b0.tar.zst").stat().st_size
        out["versions"] = {**versions(kubectl), "kubernetes": DEFAULT_KUBE_VERSION,
                           "containerd": CONTAINERD_VERSION}  # fmt: skip
    finally:
        sb.down()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "volume.json").write_text(json.dumps(out, indent=2))
    s, r = out["seconds"], out["mib_per_s"]
    print(f"volume: {out['bytes'] / 2**20:.0f} MiB (one random file, 512 x 16 KiB), "
          f"{args.runs} runs, medians\n")  # fmt: skip
    print("| copy | seconds | MiB/s | requests |\n|---|---|---|---|")
    print(f"| floor: `tar` on the node, to its disk | {s['floor']['median']} | {r['floor']} | 0 |")
    print(f"| `kubectl exec POD -- tar -c` > file | {s['kubectl']['median']} | {r['kubectl']} | "
          f"{out['requests_median']['kubectl']:g} |")  # fmt: skip
    print(f"| `kubecare backup create --volumes` (whole command) | {s['kubecare']['median']} | "
          f"{r['kubecare']} | {out['requests_median']['kubecare']:g} |")  # fmt: skip
    print(f"| ... of which the volume (helper pod start, `du`, the copy) | "
          f"{s['kubecare_volume']['median']} | {r['kubecare_volume']} | |")  # fmt: skip
    print(f"\nkubecare / floor: **{out['ratio_vs_floor']}x**; kubecare / kubectl: "
          f"**{out['ratio_vs_kubectl']}x** (the volume part: {out['volume_ratio_vs_kubectl']}x); restore (claim + data): {out['restore_s']['median']} s "
          f"({out['restore_mib_per_s']} MiB/s)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
