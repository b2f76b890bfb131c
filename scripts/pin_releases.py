#!/usr/bin/env python3
"""Print the newest patch of each Kubernetes minor the Go module proxy lists, for
src/kubecare/versions/releases.py (NEWEST_PATCHES)."""

from __future__ import annotations

import re
import subprocess


def main() -> int:
    out = subprocess.run(
        ["go", "list", "-m", "-versions", "k8s.io/kubernetes"],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout.split()[1:]  # fmt: skip
    newest: dict[tuple[int, int], tuple[int, int, int]] = {}
    for v in out:
        m = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", v)  # releases only, no pre-releases
        if m:
            t = (int(m[1]), int(m[2]), int(m[3]))
            newest[t[:2]] = max(newest.get(t[:2], t), t)
    for key in sorted(newest):
        major, minor, patch = newest[key]
        print(f'    "{major}.{minor}.{patch}",')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
