"""Mirror pods: how the API shows a node's static pods (pure: the runner's view in, Pod JSON out).

As the kubelet does (pkg/kubelet/pod/mirror_client.go, pkg/kubelet/types): the mirror of static
pod ``<name>`` on node ``<node>`` is ``<name>-<node>`` in the manifest's namespace, annotated
``kubernetes.io/config.mirror`` / ``config.hash`` (the manifest's digest), ``config.source: file``
and ``config.seen``, owned by the Node (controller ownerReference). A changed manifest gets a new
mirror (delete + create); its status follows the process: Running and Ready, waiting in
CrashLoopBackOff between restarts, ErrImagePull for an image the sandbox never built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MIRROR = "kubernetes.io/config.mirror"
HASH = "kubernetes.io/config.hash"
SOURCE = "kubernetes.io/config.source"
SEEN = "kubernetes.io/config.seen"


@dataclass(frozen=True)
class PodView:
    """What the runner knows of one static pod, as the mirror pod shows it."""

    name: str
    namespace: str
    node: str
    digest: str
    manifest: dict[str, Any] | None  # None when the manifest could not be parsed
    image: str
    running: bool
    ready: bool
    started_at: float | None
    restarts: int
    waiting_reason: str = ""  # CrashLoopBackOff, ErrImagePull, ContainerCreating
    waiting_message: str = ""
    node_ip: str = "127.0.0.1"

    @property
    def mirror_name(self) -> str:
        return f"{self.name}-{self.node}"


def _time(epoch: float | None) -> str:
    dt = datetime.fromtimestamp(epoch or 0, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def mirror_pod(view: PodView, node_uid: str, seen: float) -> dict[str, Any]:
    """The mirror Pod object to create for ``view`` (its manifest with the kubelet's additions)."""
    assert view.manifest is not None
    pod = copy.deepcopy(view.manifest)
    meta = pod.setdefault("metadata", {})
    meta["name"] = view.mirror_name
    meta["namespace"] = view.namespace
    annotations = dict(meta.get("annotations") or {})
    annotations.update({MIRROR: view.digest, HASH: view.digest, SOURCE: "file", SEEN: _time(seen)})
    meta["annotations"] = annotations
    meta["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Node", "name": view.node, "uid": node_uid, "controller": True}
    ]
    meta.pop("creationTimestamp", None)
    spec = pod.setdefault("spec", {})
    spec["nodeName"] = view.node
    # The kubelet's static pods tolerate every NoExecute taint (pkg/kubelet/config/common.go).
    tolerations = list(spec.get("tolerations") or [])
    if not any(
        t.get("operator") == "Exists" and t.get("effect") == "NoExecute" and not t.get("key")
        for t in tolerations
    ):
        tolerations.append({"operator": "Exists", "effect": "NoExecute"})
    spec["tolerations"] = tolerations
    pod.pop("status", None)
    return pod


def mirror_status(view: PodView, now: float) -> dict[str, Any]:
    """The status the runner reports for the mirror pod (merge-patched onto ``/status``)."""
    container = ((view.manifest or {}).get("spec") or {}).get("containers") or [{}]
    cname = str(container[0].get("name") or view.name)
    ready = view.running and view.ready
    state: dict[str, Any]
    if view.running:
        state = {"running": {"startedAt": _time(view.started_at)}}
    else:
        state = {"waiting": {"reason": view.waiting_reason or "ContainerCreating"}}
        if view.waiting_message:
            state["waiting"]["message"] = view.waiting_message
    stamp = _time(now)

    def condition(kind: str, ok: bool) -> dict[str, str]:
        return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": stamp}

    return {
        "phase": "Running" if view.running else "Pending",
        "hostIP": view.node_ip,
        "hostIPs": [{"ip": view.node_ip}],
        "podIP": view.node_ip,
        "podIPs": [{"ip": view.node_ip}],
        "startTime": _time(view.started_at or now),
        "conditions": [
            condition("PodReadyToStartContainers", True),
            condition("Initialized", True),
            condition("Ready", ready),
            condition("ContainersReady", ready),
            condition("PodScheduled", True),
        ],
        "containerStatuses": [
            {
                "name": cname,
                "image": view.image,
                "imageID": view.image,
                "ready": ready,
                "started": view.running,
                "restartCount": view.restarts,
                "state": state,
            }
        ],
        "qosClass": "Burstable",
    }


def status_key(status: dict[str, Any]) -> tuple[Any, ...]:
    """What matters for deciding whether a status changed (timestamps aside)."""
    c = status["containerStatuses"][0]
    return (
        status["phase"],
        c["ready"],
        c["restartCount"],
        tuple(sorted(c["state"])),
        str(c["state"]),
    )
