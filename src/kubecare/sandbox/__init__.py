"""A real local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)."""

from kubecare.sandbox.cluster import Sandbox, SandboxOptions

__all__ = ["Sandbox", "SandboxOptions"]
