"""The gate between two waves of a fleet upgrade: is an upgraded cluster still healthy?

Three checks, each a one-line reason when it fails: every node Ready; no workload crash-looping
that was not crash-looping before the wave began (a workload is its controller, so a Deployment's
pods replaced by a drain are the same workload, and a bare pod is itself); and the user's own
command (``--gate CMD``), run by ``sh -c`` with the cluster's kubeconfig and context in its
environment, which must exit 0.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ..kube import JSON
from .fleetfile import FleetCluster

#: The reason kubelet gives a container it is waiting to restart after repeated failures.
CRASH_LOOP = "CrashLoopBackOff"
GATE_TIMEOUT = 300.0


def workload(pod: JSON) -> str:
    """``namespace/Kind/name`` of the pod's controller, or of the pod itself when bare."""
    meta = pod.get("metadata") or {}
    ns = meta.get("namespace", "")
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller"):
            return f"{ns}/{ref.get('kind')}/{ref.get('name')}"
    return f"{ns}/Pod/{meta.get('name', '')}"


def crash_looping(pods: Iterable[JSON]) -> set[str]:
    """The workloads with a container (or init container) kubelet holds in CrashLoopBackOff."""
    out: set[str] = set()
    for p in pods:
        status = p.get("status") or {}
        for cs in [*(status.get("initContainerStatuses") or []),
                   *(status.get("containerStatuses") or [])]:  # fmt: skip
            if ((cs.get("state") or {}).get("waiting") or {}).get("reason") == CRASH_LOOP:
                out.add(workload(p))
                break
    return out


def judge(nodes: Iterable[JSON], pods: Iterable[JSON], baseline: Iterable[str]) -> list[str]:
    """Why the cluster is not healthy (empty: healthy), against the crash-looping ``baseline``
    taken before its upgrade."""
    from ..nodes.inventory import ready_status

    reasons = []
    for n in nodes:
        status = ready_status(n)
        if status != "True":
            reasons.append(f"node {n['metadata']['name']} is not Ready (Ready={status})")
    new = sorted(crash_looping(pods) - set(baseline))
    if new:
        more = f" and {len(new) - 3} more" if len(new) > 3 else ""
        reasons.append(f"crash-looping since the upgrade: {', '.join(new[:3])}{more}")
    return reasons


@dataclass(frozen=True)
class GateCommand:
    command: str
    timeout: float = GATE_TIMEOUT


def gate_env(cluster: FleetCluster) -> dict[str, str]:
    env = dict(os.environ)
    if cluster.kubeconfig:
        env["KUBECONFIG"] = os.path.expanduser(cluster.kubeconfig)
    env["KUBECARE_CONTEXT"] = cluster.context
    env["KUBECARE_CLUSTER"] = cluster.name
    return env


async def run_gate(gate: GateCommand, cluster: FleetCluster) -> str:
    """The reason the user's gate command failed on ``cluster``, or "" when it exited 0."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", gate.command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=gate_env(cluster),
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), gate.timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"the gate command did not finish within {gate.timeout:.0f}s"
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode == 0:
        return ""
    last = next(
        (ln for ln in reversed(out.decode(errors="replace").splitlines()) if ln.strip()), ""
    )
    return f"the gate command exited {proc.returncode}" + (f": {last.strip()}" if last else "")
