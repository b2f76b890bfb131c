"""Resource backup benchmark: `kubecare backup create/restore` against kubectl on the same
sandbox, in the same run.

    .venv/bin/python bench/backup_bench.py [--runs 3] [--namespaces 5]

A sandbox (one control plane, three kwok workers) is filled through the apiserver with
--namespaces namespaces of 4200 ConfigMaps, 2000 Secrets, 200 Deployments (their ReplicaSets and
pods made by the controllers), 800 pods bound to the kwok nodes and 2400 custom resources: with
the defaults about 51,000 objects. Then, --runs times, rotating which tool goes first:

backup
- kubecare: `kubecare backup create` of the whole cluster, Secrets encrypted with age (what an
  operator runs), and once more with --allow-plaintext-secrets (what the floor is compared with);
- (a) `kubectl get all -A -o yaml > file`: the classic advice; how many objects it misses;
- (b) the complete kubectl baseline: `kubectl get T1,T2,...,Tn -A -o json > file`, every type
  kubecare backs up, in one kubectl;
- (c) the floor: bench/backup_floor.py pages through the same types with kubecare's own HTTP
  client, the same page size (500) and concurrency (4), and discards the bodies;

restore (one namespace, ~9,400 objects, into a fresh namespace each run, deleted afterwards)
- kubecare: `kubecare backup restore --include-namespaces bench-0 --namespace-map bench-0=NEW`;
- kubectl: `kubectl apply --server-side -f list.json` of the very objects kubecare sends (the
  same restore transforms applied), the namespace first: what the issue's goal is measured
  against;
- kubectl-create: `kubectl create -f list.json` of the same list: one POST per object, as
  kubecare now sends for objects the cluster lacks — the same apiserver work, one at a time.

--skip-backup runs only the restores (the sandbox is filled the same way).

Peak RSS is sampled every 20 ms over each command's process tree (kubecare's worker processes
included; the sampling itself costs the timed command nothing but a little CPU on the other
core, the same for every tool); requests are counted server-side from the audit log by user
agent. Prints a Markdown table; writes bench/results/backup.json.
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

from drain_bench import AuditCounter, versions
from kubecare.kube import ClientOptions, Kube
from kubecare.sandbox import Sandbox, SandboxOptions
from kubecare.sandbox.binaries import find_kubectl

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
GROUP = "bench.example.com"
PER_NS = {"configmaps": 4200, "secrets": 2000, "deployments": 200, "pods": 800, "widgets": 2400}


def _tree_rss(pid: int) -> int:
    """KiB resident in ``pid`` and all its descendants now (kubecare's worker processes count)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        p = int(d.name)
        children.setdefault(int(fields.get("PPid", "0").strip() or 0), []).append(p)
        rss[p] = int(fields.get("VmRSS", "0 kB").split()[0] or 0)
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def measured(argv: list[str], stdout: Path | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command, its child processes included (sampled
    every 20 ms: the sum over the process tree); stdout to ``stdout`` or nowhere."""
    out = stdout.open("wb") if stdout else subprocess.DEVNULL
    peak = 0
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)
        took = time.perf_counter() - t0
        err = proc.stderr.read() if proc.stderr else b""
    finally:
        if stdout:
            out.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed: {err.decode()[-2000:]}")
    return took, peak


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]},
    }  # fmt: skip


def objects_for(ns: str, workers: list[str]) -> list[tuple[str, dict[str, Any]]]:
    pause = [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(PER_NS["configmaps"]):
        out.append((f"/api/v1/namespaces/{ns}/configmaps", {
            "metadata": {"name": f"cm-{i:05d}", "labels": {"app": f"a{i % 50}"}},
            "data": {"config.yaml": f"key: value-{i}\nlevel: info\n" * 4}}))  # fmt: skip
    for i in range(PER_NS["secrets"]):
        out.append((f"/api/v1/namespaces/{ns}/secrets", {
            "metadata": {"name": f"s-{i:05d}"}, "type": "Opaque",
            "stringData": {"password": f"pw-{i}-{os.urandom(8).hex()}"}}))  # fmt: skip
    for i in range(PER_NS["deployments"]):
        labels = {"app": f"d{i}"}
        out.append((f"/apis/apps/v1/namespaces/{ns}/deployments", {
            "metadata": {"name": f"d-{i:04d}"},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": pause}}}}))  # fmt: skip
    for i in range(PER_NS["pods"]):
        out.append((f"/api/v1/namespaces/{ns}/pods", {
            "metadata": {"name": f"p-{i:05d}"},
            "spec": {"nodeName": workers[i % len(workers)], "containers": pause}}))  # fmt: skip
    for i in range(PER_NS["widgets"]):
        out.append((f"/apis/{GROUP}/v1/namespaces/{ns}/widgets", {
            "apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": f"w-{i:05d}"},
            "spec": {"size": i, "tags": ["a", "b"], "owner": f"team-{i % 7}"}}))  # fmt: skip
    return out


async def populate(kube: Kube, namespaces: int, workers: list[str]) -> None:
    await kube.request_json("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                            body=crd())  # fmt: skip
    await asyncio.sleep(3)  # the CRD is established
    sem = asyncio.Semaphore(48)

    async def post(path: str, body: dict[str, Any]) -> None:
        async with sem:
            await kube.request_json("POST", path, body=body)

    for n in range(namespaces):
        ns = f"bench-{n}"
        await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        await asyncio.gather(*(post(p, b) for p, b in objects_for(ns, workers)))
        print(f"  {ns} filled", file=sys.stderr)
    want = namespaces * (PER_NS["pods"] + PER_NS["deployments"])
    for _ in range(600):  # the controllers made every ReplicaSet and pod: the cluster is quiet
        pods, _ = await kube.list_all(
            "/api/v1/pods", params={"fieldSelector": "status.phase=Running"}
        )
        if len([p for p in pods if p["metadata"]["namespace"].startswith("bench-")]) >= want:
            break
        await asyncio.sleep(2)
    await asyncio.sleep(5)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def run_backups(sb: Sandbox, kubectl: str, audit: AuditCounter, runs: int, work: Path,
                recipient: str) -> dict[str, Any]:  # fmt: skip
    kc = str(sb.kubeconfig)
    kubecare = [str(BIN / "kubecare"), "--kubeconfig", kc, "backup", "create"]
    # The types kubecare backs up: read from a first (unmeasured) backup's manifest.
    subprocess.run([*kubecare, "probe", "--to", str(work), "--allow-plaintext-secrets"],
                   check=True, capture_output=True)  # fmt: skip
    from kubecare.backup.archive import ArchiveReader

    with ArchiveReader.open(work / "probe.tar.zst") as r:
        manifest = r.manifest
    types = [f"{t['resource']}.{t['group']}" if t["group"] else t["resource"]
             for t in manifest["types"]]  # fmt: skip
    archived = sum(t["count"] for t in manifest["types"])
    listed = archived + sum(sum(t["skipped"].values()) for t in manifest["types"])
    (work / "probe.tar.zst").unlink()
    floor = [sys.executable, str(Path(__file__).parent / "backup_floor.py"), "--kubeconfig", kc,
             "--concurrency", "4", "--chunk-size", "500", *types]  # fmt: skip
    tools: dict[str, tuple[list[str], str, bool]] = {
        "kubecare": ([*kubecare, "NAME", "--to", str(work), "--encrypt-to", recipient],
                     "kubecare/", False),
        "kubecare-plaintext": ([*kubecare, "NAME", "--to", str(work),
                                "--allow-plaintext-secrets"], "kubecare/", False),
        "kubectl-get-all": ([kubectl, "--kubeconfig", kc, "get", "all", "-A", "-o", "yaml"],
                            "kubectl/", True),
        "kubectl-complete": ([kubectl, "--kubeconfig", kc, "get", ",".join(types), "-A", "-o",
                              "json"], "kubectl/", True),
        "floor": (floor, "floor/", False),
    }  # fmt: skip
    out: dict[str, dict[str, list[float]]] = {t: {"s": [], "rss": [], "req": []} for t in tools}
    got_all = 0
    names = list(tools)
    for run in range(runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for tool in order:
            argv, agent, to_file = tools[tool]
            argv = [a.replace("NAME", f"{tool}-{run}") for a in argv]
            mark = audit.mark()
            dest = work / f"{tool}-{run}.out" if to_file else None
            s, rss = measured(argv, dest)
            out[tool]["s"].append(s)
            out[tool]["rss"].append(rss / 1024)
            out[tool]["req"].append(audit.count(mark, agent))
            if tool == "kubectl-get-all" and dest:
                got_all = sum(1 for ln in dest.open("rb") if ln.startswith(b"- apiVersion:"))
            if dest:
                dest.unlink()
            for p in work.glob("*.tar.zst"):
                p.unlink()
            print(f"  backup run {run} {tool}: {s:.2f}s {rss / 1024:.0f} MiB", file=sys.stderr)
    result = {t: {k: median(v) for k, v in d.items()} for t, d in out.items()}
    for t in result:
        result[t]["objects_per_s"] = listed / result[t]["s"]
    return {"tools": result, "types": len(types), "listed": listed, "archived": archived,
            "get_all_objects": got_all, "runs": runs}  # fmt: skip


async def run_restores(sb: Sandbox, kubectl: str, audit: AuditCounter, runs: int, work: Path,
                       key: Path, recipient: str) -> dict[str, Any]:  # fmt: skip
    kc = str(sb.kubeconfig)
    subprocess.run([str(BIN / "kubecare"), "--kubeconfig", kc, "backup", "create", "src",
                    "--to", str(work), "--include-namespaces", "bench-0", "--encrypt-to",
                    recipient], check=True, capture_output=True)  # fmt: skip
    from kubecare.backup.archive import ArchiveReader, parse_member_path
    from kubecare.backup.rules import for_restore, restore_order, type_name
    from kubecare.backup.secrets import decryptor, identities
    from kubecare.backup.verify import checked_members

    decrypt = decryptor(identities(key))
    objects: list[tuple[str, dict[str, Any]]] = []
    with ArchiveReader.open(work / "src.tar.zst") as r:
        entries = {type_name(t["group"], t["resource"]): t for t in r.manifest["types"]}
        for name in restore_order(entries, {n for n, t in entries.items() if t.get("custom")}):
            for m in checked_members(r, entries[name]):
                enc = parse_member_path(m.path)[4]
                objects.append((name, json.loads(decrypt(m.data, m.path) if enc else m.data)))
    count = len(objects)
    tools = ("kubecare", "kubectl", "kubectl-create")
    out: dict[str, dict[str, list[float]]] = {t: {"s": [], "rss": [], "req": []}
                                              for t in tools}  # fmt: skip
    async with Kube(ClientOptions(kubeconfig=kc)) as kube:
        kube.http.headers["User-Agent"] = "bench/"
        for run in range(runs):
            for tool in tools[run % 3 :] + tools[: run % 3]:
                target = f"r{run}-{tool}"
                if tool == "kubecare":
                    argv = [str(BIN / "kubecare"), "--kubeconfig", kc, "backup", "restore", "src",
                            "--from", str(work), "--include-namespaces", "bench-0",
                            "--namespace-map", f"bench-0={target}", "--identity", str(key)]  # fmt: skip
                else:
                    items = [for_restore(gr, o, {"bench-0": target})[0] for gr, o in objects]
                    if tool == "kubectl-create":
                        # The namespace's default ServiceAccount is made by its controller as
                        # the namespace is: `kubectl create` would stop with AlreadyExists
                        # (kubecare counts it skipped, apply applies over it).
                        items = [i for i in items if not (i["kind"] == "ServiceAccount"
                                                          and i["metadata"]["name"] == "default")]  # fmt: skip
                    listing = work / "list.json"
                    listing.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                                   "items": items}))  # fmt: skip
                    verb = ["apply", "--server-side"] if tool == "kubectl" else ["create"]
                    argv = [kubectl, "--kubeconfig", kc, *verb, "-f", str(listing)]
                mark = audit.mark()
                # in a thread: the loop stays free to notice the server closing idle connections
                s, rss = await asyncio.to_thread(measured, argv)
                out[tool]["s"].append(s)
                out[tool]["rss"].append(rss / 1024)
                agent = "kubecare/" if tool == "kubecare" else "kubectl/"
                out[tool]["req"].append(audit.count(mark, agent))
                print(f"  restore run {run} {tool}: {s:.2f}s {rss / 1024:.0f} MiB", file=sys.stderr)
                await kube.http.delete(f"/api/v1/namespaces/{target}")
                for _ in range(900):
                    if (await kube.http.get(f"/api/v1/namespaces/{target}")).status_code == 404:
                        break
                    await asyncio.sleep(1)
    result = {t: {k: median(v) for k, v in d.items()} for t, d in out.items()}
    for t in result:
        result[t]["objects_per_s"] = count / result[t]["s"]
    return {"tools": result, "objects": count, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--namespaces", type=int, default=5)
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument("--skip-backup", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("KUBECARE_STATE_DIR", tempfile.mkdtemp(prefix="kubecare-bench-"))
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    work = Path(tempfile.mkdtemp(prefix="kubecare-backup-bench-"))
    key = work / "key.txt"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{ident}\n".encode())
    os.close(fd)
    recipient = str(ident.to_public())
    kubectl = str(find_kubectl())
    sb = Sandbox("bench-backup")
    try:
        asyncio.run(sb.up(SandboxOptions(workers=3, audit_log=True, max_pods=2000)))
        audit = AuditCounter(sb.dir / "logs" / "audit" / "audit.log")

        async def fill() -> None:
            async with Kube(ClientOptions(kubeconfig=str(sb.kubeconfig))) as kube:
                kube.http.headers["User-Agent"] = "bench/"
                nodes, _ = await kube.list_all("/api/v1/nodes")
                workers = [
                    n["metadata"]["name"] for n in nodes
                    if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
                ]  # fmt: skip
                t0 = time.perf_counter()
                await populate(kube, args.namespaces, workers)
                print(f"  filled in {time.perf_counter() - t0:.0f}s", file=sys.stderr)

        asyncio.run(fill())
        backup = (
            None
            if args.skip_backup
            else run_backups(sb, kubectl, audit, args.runs, work, recipient)
        )
        restore = (
            None if args.skip_restore
            else asyncio.run(run_restores(sb, kubectl, audit, args.runs, work, key, recipient))
        )  # fmt: skip
        kube_version = sb.load().version
    finally:
        sb.down()
    result = {"cores": os.cpu_count(),
              "versions": {**versions(kubectl), "kubernetes": kube_version},
              "backup": backup, "restore": restore}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "backup.json").write_text(json.dumps(result, indent=2))
    if backup:
        print_backup(backup, args.runs)
    if restore:
        r = restore["tools"]
        print(f"\n| restore ({restore['objects']} objects) | seconds | objects/s | requests | peak RSS MiB |")  # fmt: skip
        print("|---|---|---|---|---|")
        for name, d in r.items():
            print(f"| {name} | {d['s']:.2f} | {d['objects_per_s']:.0f} | {d['req']:.0f} | {d['rss']:.0f} |")  # fmt: skip
        print(f"\nkubectl apply / kubecare restore = {r['kubectl']['s'] / r['kubecare']['s']:.2f}x; "
              f"kubectl create / kubecare = {r['kubectl-create']['s'] / r['kubecare']['s']:.2f}x")  # fmt: skip


def print_backup(backup: dict[str, Any], runs: int) -> None:
    t = backup["tools"]
    print(f"\n{backup['listed']} objects listed in {backup['types']} types, {backup['archived']} "
          f"archived; `kubectl get all` got {backup['get_all_objects']}. Medians of {runs}.\n")  # fmt: skip
    print("| backup | seconds | objects/s | vs kubecare | requests | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for name, d in t.items():
        ratio = d["s"] / t["kubecare"]["s"]
        print(f"| {name} | {d['s']:.2f} | {d['objects_per_s']:.0f} | {ratio:.2f}x | "
              f"{d['req']:.0f} | {d['rss']:.0f} |")  # fmt: skip
    print(f"\nkubecare (plaintext) / floor = {t['kubecare-plaintext']['s'] / t['floor']['s']:.2f}x;"
          f" complete kubectl / kubecare = {t['kubectl-complete']['s'] / t['kubecare']['s']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
