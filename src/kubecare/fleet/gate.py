"""The gate between two waves of a fleet upgrade: is an upgraded cluster still healthy?

Three checks, each a one-line reason when it fails: every node Ready; no workload crash-looping
that was not crash-looping before the wave began (a workload is its controller, so a Deployment's
pods replaced by a drain are the same workload, and a bare pod is itself); and the user's own
command (``--gate CMD``), run by ``sh -c`` with the cluster's kubeconfig and context in its
environment (``KUBECONFIG`` with that context current, ``KUBECARE_CONTEXT``,
``KUBECARE_CLUSTER``), which must exit 0.
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
    """``namespace/Kind/name`` of what the pod belongs to, stable across the pod's replacement:
    a ReplicaSet's pod is its Deployment's (the upgrade may roll the ReplicaSet, as kubeadm's
    CoreDNS update does; the pod-template-hash is the ReplicaSet's suffix), a mirror pod (owned
    by its Node) and a bare pod are themselves."""
    meta = pod.get("metadata") or {}
    ns = meta.get("namespace", "")
    for ref in meta.get("ownerReferences") or []:
        if not ref.get("controller"):
            continue
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        if kind == "Node":
            break  # every static pod of a node has that owner: each is its own workload
        suffix = "-" + str((meta.get("labels") or {}).get("pod-template-hash", ""))
        if kind == "ReplicaSet" and len(suffix) > 1 and name.endswith(suffix):
            return f"{ns}/Deployment/{name.removesuffix(suffix)}"
        return f"{ns}/{kind}/{name}"
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


def gate_env(cluster: FleetCluster, context_file: str) -> dict[str, str]:
    """The gate's environment: ``KUBECONFIG`` is a file naming only the cluster's context as
    current (no credentials copied) before the cluster's kubeconfig, so a plain ``kubectl`` in
    the gate talks to this cluster, as kubectl takes the first current-context it reads."""
    env = dict(os.environ)
    files = (
        [os.path.expanduser(cluster.kubeconfig)]
        if cluster.kubeconfig
        else [f for f in env.get("KUBECONFIG", "").split(os.pathsep) if f]
        or [os.path.expanduser("~/.kube/config")]
    )
    env["KUBECONFIG"] = os.pathsep.join([context_file, *files])
    env["KUBECARE_CONTEXT"] = cluster.context
    env["KUBECARE_CLUSTER"] = cluster.name
    return env


async def run_gate(gate: GateCommand, cluster: FleetCluster) -> str:
    """The reason the user's gate command failed on ``cluster``, or "" when it exited 0."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kubecare-gate-") as tmp:
        context_file = os.path.join(tmp, "context.yaml")
        fd = os.open(context_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            # JSON is YAML: the context's name quoted whatever it holds
            f.write(json.dumps({"apiVersion": "v1", "kind": "Config",
                                "current-context": cluster.context}))  # fmt: skip
        try:
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", gate.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=gate_env(cluster, context_file),
            )  # fmt: skip
        except OSError as e:
            return f"the gate command could not start: {e.strerror or e}"
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
