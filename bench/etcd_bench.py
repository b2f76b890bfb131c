"""etcd snapshot benchmark: `kubecare etcd snapshot save/status` vs `etcdctl snapshot save` and
`etcdutl snapshot status`, on the same sandbox etcd and the same file, in the same run.

    .venv/bin/python bench/etcd_bench.py [--runs 5] [--size-mb 1100]

A sandbox (one control plane, one worker) whose etcd is filled through the apiserver with
ConfigMaps of 900 kB until its database is at least --size-mb (real Kubernetes objects, the way
a big cluster's etcd grows). Then, --runs times, alternating which tool goes first:
- save: each tool streams a snapshot from the same member with the same certificates into a
  fresh file; time, throughput (snapshot bytes / wall time) and peak RSS (GNU time);
- status: each tool reads the same snapshot; time and peak RSS, and the numbers are compared.
Both tools are the whole command (process start included). Prints a Markdown table; writes
bench/results/etcd.json.
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

from kubecare.etcd.members import read_members
from kubecare.kube import Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import DEFAULT_KUBE_VERSION, binary_path, etcd_version_for
from kubecare.sandbox.target import etcd_target

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
GNU_TIME = "/usr/bin/time"


def measured(argv: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stdout) of one command."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        out = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", rss.name, *argv],
            check=True,
            capture_output=True,
            text=True,
        )
        took = time.perf_counter() - t0
        return took, int(rss.read().strip().splitlines()[-1]), out.stdout


async def fill(sb: Sandbox, size_mb: int) -> int:
    """ConfigMaps of 900 kB until etcd's database is size_mb; returns the objects written."""
    blob = "x" * 900_000
    n = 0
    sem = asyncio.Semaphore(8)
    async with Kube(sb.client_options()) as kube:

        async def one(i: int) -> None:
            async with sem:
                await kube.request_json(
                    "POST",
                    "/api/v1/namespaces/default/configmaps",
                    body={"metadata": {"name": f"big-{i}"}, "data": {"blob": blob}},
                )

        while True:
            await asyncio.gather(*(one(n + i) for i in range(100)))
            n += 100
            status = json.loads(
                subprocess.run(
                    [str(BIN / "kubecare"), "etcd", "status", "--sandbox", sb.name, "-o", "json"],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
            )[0]
            if status["dbSize"] >= size_mb * 1_000_000:
                return n


#: The default sandbox's etcd, and the etcdctl/etcdutl of the same release.
ETCD_VERSION = etcd_version_for(DEFAULT_KUBE_VERSION)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=1100)
    args = parser.parse_args()
    if not os.path.exists(GNU_TIME):
        sys.exit("GNU time is needed for peak RSS: apt-get install time (make bench does)")
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    etcdctl, etcdutl = binary_path("etcdctl", ETCD_VERSION), binary_path("etcdutl", ETCD_VERSION)
    assert etcdctl and etcdutl, "make setup builds etcdctl and etcdutl"
    sb = Sandbox("bench-etcd")
    asyncio.run(sb.up(SandboxOptions(workers=1)))
    work = Path(tempfile.mkdtemp(prefix="kubecare-etcd-bench-"))
    try:
        objects = asyncio.run(fill(sb, args.size_mb))
        ep = read_members(*etcd_target(sb.name))[0].endpoint
        tls = [f"--cacert={ep.cacert}", f"--cert={ep.cert}", f"--key={ep.key}"]
        save_cmds = {
            "etcdctl": lambda f: [str(etcdctl), f"--endpoints={ep.url}", *tls, "snapshot", "save", f],
            "kubecare": lambda f: [
                str(BIN / "kubecare"), "etcd", "snapshot", "save", f,
                f"--endpoints={ep.url}", *tls,
            ],
        }  # fmt: skip
        status_cmds = {
            "etcdutl": lambda f: [str(etcdutl), "-w", "json", "snapshot", "status", f],
            "kubecare": lambda f: [
                str(BIN / "kubecare"),
                "etcd",
                "snapshot",
                "status",
                f,
                "-o",
                "json",
            ],
            # the same work as etcdutl's status: no SHA-256 check
            "kubecare-nosha": lambda f: [
                str(BIN / "kubecare"),
                "etcd",
                "snapshot",
                "status",
                f,
                "-o",
                "json",
                "--skip-hash-check",
            ],
        }
        save: dict[str, list[tuple[float, int, int]]] = {k: [] for k in save_cmds}
        stat: dict[str, list[tuple[float, int]]] = {k: [] for k in status_cmds}
        listing: list[tuple[float, int]] = []
        same = True
        for run in range(args.runs):
            order = list(save_cmds) if run % 2 == 0 else list(reversed(save_cmds))
            files = {}
            for tool in order:
                f = work / f"{tool}-{run}.db"
                took, rss, _ = measured(save_cmds[tool](str(f)))
                save[tool].append((took, rss, f.stat().st_size))
                files[tool] = f
            # status of the same file by both (the kubecare-saved one on odd runs)
            target = str(files["kubecare" if run % 2 else "etcdctl"])
            answers: dict[str, Any] = {}
            for tool in list(status_cmds) if run % 2 == 0 else list(reversed(status_cmds)):
                took, rss, out = measured(status_cmds[tool](target))
                stat[tool].append((took, rss))
                answers[tool] = json.loads(out)
            for tool in ("kubecare", "kubecare-nosha"):
                ours = {k: answers[tool][k] for k in answers["etcdutl"]}
                same = same and ours == answers["etcdutl"]
            took, rss, _ = measured(
                [str(BIN / "kubecare"), "etcd", "snapshot", "ls", target, "-o", "json"]
            )
            listing.append((took, rss))
            for f in files.values():
                f.unlink()
        size = statistics.median(s for _, _, s in save["kubecare"])

        def med(rows: list[Any], i: int) -> float:
            return float(statistics.median(r[i] for r in rows))

        t_ctl, t_kc = med(save["etcdctl"], 0), med(save["kubecare"], 0)
        s_utl, s_kc = med(stat["etcdutl"], 0), med(stat["kubecare"], 0)
        s_nosha = med(stat["kubecare-nosha"], 0)
        result = {
            "snapshot_bytes": size,
            "objects": objects,
            "runs": args.runs,
            "versions": {"etcd": ETCD_VERSION, "etcdctl": ETCD_VERSION, "etcdutl": ETCD_VERSION},
            "save": {
                "etcdctl_s": t_ctl,
                "kubecare_s": t_kc,
                "etcdctl_MBps": size / t_ctl / 1e6,
                "kubecare_MBps": size / t_kc / 1e6,
                "throughput_ratio": t_ctl / t_kc,
                "rss_MiB": {k: med(v, 1) / 1024 for k, v in save.items()},
            },
            "status": {
                "etcdutl_s": s_utl,
                "kubecare_s": s_kc,
                "ratio": s_kc / s_utl,
                "kubecare_skip_hash_check_s": s_nosha,
                "ratio_skip_hash_check": s_nosha / s_utl,
                "rss_MiB": {k: med(v, 1) / 1024 for k, v in stat.items()},
                "same_numbers": same,
            },
            "ls": {
                "kubecare_s": med(listing, 0),
                "ratio_to_etcdutl_status": med(listing, 0) / s_utl,
                "rss_MiB": med(listing, 1) / 1024,
            },
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "etcd.json").write_text(json.dumps(result, indent=1) + "\n")
        print(
            f"snapshot: {size / 1e9:.2f} GB ({objects} ConfigMaps of 900 kB); medians of {args.runs} runs"
        )
        print("| operation | etcd's tool | kubecare | ratio | peak RSS MiB (etcd's / kubecare) |")
        print("|---|---|---|---|---|")
        print(
            f"| snapshot save | etcdctl {t_ctl:.2f} s ({size / t_ctl / 1e6:.0f} MB/s) | "
            f"{t_kc:.2f} s ({size / t_kc / 1e6:.0f} MB/s) | **{t_ctl / t_kc:.2f}x** throughput | "
            f"{med(save['etcdctl'], 1) / 1024:.0f} / {med(save['kubecare'], 1) / 1024:.0f} |"
        )
        print(
            f"| snapshot status (+ SHA-256 check) | etcdutl {s_utl:.2f} s | {s_kc:.2f} s | **{s_kc / s_utl:.2f}x** time | "
            f"{med(stat['etcdutl'], 1) / 1024:.0f} / {med(stat['kubecare'], 1) / 1024:.0f} |"
        )
        print(
            f"| snapshot status --skip-hash-check (etcdutl's work) | etcdutl {s_utl:.2f} s | "
            f"{s_nosha:.2f} s | **{s_nosha / s_utl:.2f}x** time | "
            f"{med(stat['etcdutl'], 1) / 1024:.0f} / {med(stat['kubecare-nosha'], 1) / 1024:.0f} |"
        )
        l_kc = med(listing, 0)
        print(
            f"| snapshot ls (every key) | etcdutl status {s_utl:.2f} s | {l_kc:.2f} s | "
            f"**{l_kc / s_utl:.2f}x** time | - / {med(listing, 1) / 1024:.0f} |"
        )
        print(f"status numbers identical to etcdutl's in every run: {same}")
    finally:
        sb.down()
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
