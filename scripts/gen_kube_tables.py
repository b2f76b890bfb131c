"""Regenerate kubecare's Kubernetes type tables from the real Go types.

    .venv/bin/python scripts/gen_kube_tables.py [--version 1.37.2]

Builds scripts/gen_kube_tables/main.go against k8s.io/kubernetes@vVERSION (a wrapper module whose
go.mod replaces each k8s.io staging module with its published v0.X.Y, as the sandbox build does)
and writes its output, gzipped and deterministic, to
src/kubecare/etcd/tables/v<major>.<minor>.json.gz. The first build takes about 5 minutes on 2
cores; the Go module cache after `make setup` has every source it needs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "kubecare" / "etcd" / "tables"


def go_env(name: str) -> str:
    return subprocess.run(
        ["go", "env", name], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--version", default="1.37.2")
    args = ap.parse_args()
    major, minor, patch = args.version.split(".")
    cache = Path(go_env("GOMODCACHE"))
    kube_mod = cache / f"k8s.io/kubernetes@v{args.version}" / "go.mod"
    if not kube_mod.exists():
        subprocess.run(["go", "mod", "download", f"k8s.io/kubernetes@v{args.version}"], check=True)
    replaces = []
    in_replace = False
    for line in kube_mod.read_text().splitlines():
        if line.startswith("replace ("):
            in_replace = True
            continue
        if in_replace and line.startswith(")"):
            break
        if in_replace and "=>" in line:
            mod = line.split("=>")[0].strip()
            replaces.append(f"\t{mod} => {mod} v0.{minor}.{patch}")
    work = Path(tempfile.mkdtemp(prefix="kubecare-tables-"))
    try:
        (work / "go.mod").write_text(
            "module kubecare/gen_kube_tables\n\ngo 1.26.0\n\n"
            f"require k8s.io/kubernetes v{args.version}\n\nreplace (\n"
            + "\n".join(replaces)
            + "\n)\n"
        )
        shutil.copy(ROOT / "scripts" / "gen_kube_tables" / "main.go", work / "main.go")
        env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
        subprocess.run(["go", "mod", "tidy"], cwd=work, env=env, check=True)
        subprocess.run(["go", "build", "-o", "gen", "."], cwd=work, env=env, check=True)
        out = subprocess.run([str(work / "gen")], cwd=work, capture_output=True, check=True)
        table = json.loads(out.stdout)
        table["version"] = args.version
        OUT.mkdir(parents=True, exist_ok=True)
        data = json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
        target = OUT / f"v{major}.{minor}.json.gz"
        with (
            open(target, "wb") as f,
            gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz,
        ):
            gz.write(data)
        sys.stderr.write(out.stderr.decode().split("  custom:")[0])
        print(f"wrote {target} ({target.stat().st_size} bytes)", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
