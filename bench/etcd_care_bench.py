"""etcd care benchmark: `kubecare etcd members` + `health` against etcdctl's `member list`,
`endpoint status`, `endpoint health` and `endpoint hashkv`; and a defragmentation of three
members holding a >= 1 GB database, kubecare's rolling one against `etcdctl defrag` over the
same three endpoints, with the apiserver's unavailability during each.

    .venv/bin/python bench/etcd_care_bench.py [--runs 3] [--size-mb 1100]

One sandbox with three control planes (a 3-member etcd, quota 4 GiB) and one worker.
- survey: max(--runs, 5) times, alternating which tool goes first, the whole commands (process start
  included) from the host, through the same forwards with the same certificates;
- defrag: before each run, --size-mb of 1 MiB values are put under /kubecare-bench/ straight
  into etcd, half of them deleted and the key space compacted (so about half of every member's
  file is free); then one tool defragments all three members while a writer creates ConfigMaps
  through the apiserver's load balancer without pause, counting failed requests and the longest
  wait for one. Runs alternate between the tools.
Prints a Markdown table; writes bench/results/etcd_care.json.
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

from kubecare.etcd.members import Endpoint, read_members
from kubecare.kube import Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION, binary_path, etcd_version_for
from kubecare.sandbox.target import etcd_target

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
ETCD_VERSION = etcd_version_for(DEFAULT_KUBE_VERSION)
PREFIX = b"/kubecare-bench/"


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {out.stderr.strip()}")
    return took, out.stdout


async def _kv(ep: Endpoint, method: str, request: Any) -> Any:
    from kubecare.etcd._proto import maintenance_pb2_grpc as rpc
    from kubecare.etcd.grpc import channel

    async with channel(ep) as ch:
        return await getattr(rpc.KVStub(ch), method)(request, timeout=120)


async def fill(ep: Endpoint, size_mb: int) -> None:
    """size_mb values of 1 MiB, then every other one deleted and the key space compacted."""
    from kubecare.etcd._proto import maintenance_pb2 as pb

    value = os.urandom(1 << 20)
    sem = asyncio.Semaphore(4)

    async def put(i: int) -> None:
        async with sem:
            await _kv(ep, "Put", pb.PutRequest(key=PREFIX + b"%06d" % i, value=value))

    await asyncio.gather(*(put(i) for i in range(size_mb)))
    for i in range(0, size_mb, 2):
        await _kv(ep, "DeleteRange", pb.DeleteRangeRequest(key=PREFIX + b"%06d" % i))
    rev = (await _kv(ep, "Range", pb.RangeRequest(key=PREFIX, count_only=True))).header.revision
    await _kv(ep, "Compact", pb.CompactionRequest(revision=rev, physical=True))


async def clear(ep: Endpoint) -> None:
    from kubecare.etcd._proto import maintenance_pb2 as pb

    end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    await _kv(ep, "DeleteRange", pb.DeleteRangeRequest(key=PREFIX, range_end=end))


async def under_writes(sb: Sandbox, argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` while a writer creates ConfigMaps through the load balancer."""
    stop = asyncio.Event()
    failed, waits, done = 0, [0.0], 0
    async with Kube(sb.client_options()) as kube:

        async def writer() -> None:
            nonlocal failed, done
            while not stop.is_set():
                body = {"metadata": {"generateName": "w-"}, "data": {"n": str(done)}}
                t0 = time.perf_counter()
                try:
                    r = await kube.http.request(
                        "POST", "/api/v1/namespaces/bench/configmaps",
                        content=json.dumps(body).encode(),
                        headers={"Content-Type": "application/json"},
                    )  # fmt: skip
                    failed += r.status_code >= 300
                except Exception:
                    failed += 1
                waits.append(time.perf_counter() - t0)
                done += 1

        task = asyncio.create_task(writer())
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        _, err = await proc.communicate()
        took = time.perf_counter() - t0
        stop.set()
        await task
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {err.decode().strip()}")
    return {"seconds": took, "failed": failed, "writes": done, "longestWait": max(waits)}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1100)
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    etcdctl = binary_path("etcdctl", ETCD_VERSION)
    assert etcdctl, "make setup builds etcdctl"
    sb = Sandbox("bench-etcd-care")
    asyncio.run(sb.up(SandboxOptions(workers=1, control_planes=3, etcd_quota=4 << 30)))
    try:
        members = read_members(*etcd_target(sb.name))
        ep = members[0].endpoint
        urls = ",".join(m.endpoint.url for m in members)
        tls = [f"--cacert={ep.cacert}", f"--cert={ep.cert}", f"--key={ep.key}"]
        ctl = [str(etcdctl), f"--endpoints={urls}", *tls, "-w", "json"]
        kc = [str(BIN / "kubecare"), "etcd"]
        survey = {
            "etcdctl": [
                [*ctl, "member", "list"],
                [*ctl, "endpoint", "status"],
                [*ctl, "endpoint", "health"],
                [*ctl, "endpoint", "hashkv"],
            ],
            "kubecare": [
                [*kc, "members", "--sandbox", sb.name, "-o", "json"],
                [*kc, "health", "--sandbox", sb.name, "-o", "json"],
            ],
        }
        times: dict[str, list[float]] = {"etcdctl": [], "kubecare": []}
        for run in range(max(args.runs, 5)):
            order = ["etcdctl", "kubecare"] if run % 2 == 0 else ["kubecare", "etcdctl"]
            for tool in order:
                times[tool].append(sum(timed(argv)[0] for argv in survey[tool]))
        asyncio.run(_namespace(sb))
        defrag_cmds = {
            # etcdctl's default --command-timeout (5 s) fails every member of this size: given
            # what an operator gives it after the first failure
            "etcdctl": [
                str(etcdctl),
                f"--endpoints={urls}",
                *tls,
                "--command-timeout=10m",
                "defrag",
            ],
            "kubecare": [*kc, "defrag", "--sandbox", sb.name],
        }
        defrag: dict[str, list[dict[str, Any]]] = {"etcdctl": [], "kubecare": []}
        sizes = []
        for run in range(args.runs):
            order = ["etcdctl", "kubecare"] if run % 2 == 0 else ["kubecare", "etcdctl"]
            for tool in order:
                asyncio.run(fill(ep, args.size_mb))
                st = json.loads(timed([*kc, "status", "--sandbox", sb.name, "-o", "json"])[1])
                sizes.append(min(s["dbSize"] for s in st))
                defrag[tool].append(asyncio.run(under_writes(sb, defrag_cmds[tool])))
                asyncio.run(clear(ep))
    finally:
        sb.down()
    result = {
        "etcd": ETCD_VERSION,
        "survey": {t: median(v) for t, v in times.items()},
        "surveyRuns": times,
        "dbSizeBeforeDefrag": min(sizes),
        "defrag": {
            t: {
                "seconds": median([r["seconds"] for r in v]),
                "failed": sum(r["failed"] for r in v),
                "longestWait": median([r["longestWait"] for r in v]),
                "runs": v,
            }
            for t, v in defrag.items()
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "etcd_care.json").write_text(json.dumps(result, indent=2))
    s, d = result["survey"], result["defrag"]
    print(f"etcd v{ETCD_VERSION}, 3 members; medians")
    print("| | etcdctl | kubecare | ratio |\n|---|---|---|---|")
    print(
        f"| members + health (4 etcdctl commands, 2 kubecare) | {s['etcdctl']:.2f} s | "
        f"{s['kubecare']:.2f} s | {s['etcdctl'] / s['kubecare']:.2f}x |"
    )
    print(
        f"| defrag of 3 members, each >= {result['dbSizeBeforeDefrag'] / 1e9:.2f} GB | "
        f"{d['etcdctl']['seconds']:.2f} s | {d['kubecare']['seconds']:.2f} s | "
        f"{d['etcdctl']['seconds'] / d['kubecare']['seconds']:.2f}x |"
    )
    print(
        f"| longest apiserver write during it | {d['etcdctl']['longestWait']:.2f} s | "
        f"{d['kubecare']['longestWait']:.2f} s | |"
    )
    print(f"| failed writes (all runs) | {d['etcdctl']['failed']} | {d['kubecare']['failed']} | |")


async def _namespace(sb: Sandbox) -> None:
    async with Kube(sb.client_options()) as kube:
        await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": "bench"}})


if __name__ == "__main__":
    main()
