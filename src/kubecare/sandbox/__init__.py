"""A real local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).

``Sandbox`` and ``SandboxOptions`` are loaded on first use: the lifecycle module pulls in
cryptography, which commands that never touch a sandbox should not pay for at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubecare.sandbox.lifecycle import Sandbox, SandboxOptions

__all__ = ["Sandbox", "SandboxOptions"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from kubecare.sandbox import lifecycle

        return getattr(lifecycle, name)
    raise AttributeError(name)
