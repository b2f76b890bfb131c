"""Where sandboxes live and what state.json records: light enough for shell completion."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def state_root() -> Path:
    env = os.environ.get("KUBECARE_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "kubecare" / "sandboxes"


@dataclass
class ComponentState:
    """One process of the sandbox, as recorded in state.json."""

    name: str
    binary: str
    args: list[str]
    port: int
    version: str
    health: str  # URL checked for health
    pid: int | None = None

    @property
    def log_name(self) -> str:
        return f"{self.name}.log"


@dataclass
class SandboxState:
    """state.json: what a sandbox is made of. The runner reads ``control_planes`` (each: node,
    ip, manifests dir, ports, runner_kubeconfig), ``options`` and ``balancer_port``."""

    name: str
    version: str
    created: float
    options: dict[str, Any]
    apiserver: str  # how clients reach the cluster (the balancer with several control planes)
    control_planes: list[dict[str, Any]] = field(default_factory=list)
    balancer_port: int | None = None
    nodes: list[str] = field(default_factory=list)
    components: dict[str, ComponentState] = field(default_factory=dict)  # runner, kwok
    next_node_index: int = 0
    # `sandbox install NODE kubeadm|kubelet VERSION`: what each node has, where it differs from
    # ``version`` (the sandbox's own)
    installed: dict[str, dict[str, str]] = field(default_factory=dict)
    # kubeadm's controlPlaneEndpoint (host:port inside the sandbox's network, 192.0.2.x:6443)
    endpoint: str = ""
    # real nodes (a real kubelet and containerd: :mod:`kubecare.sandbox.realnode`): name ->
    # {"index": its address and pod range}; they are in ``nodes`` too
    real_nodes: dict[str, dict[str, Any]] = field(default_factory=dict)


def list_sandboxes() -> list[str]:
    root = state_root()
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "state.json").exists())
