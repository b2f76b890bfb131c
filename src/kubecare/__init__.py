"""kubecare: the maintenance chapter of a Kubernetes administrator's job, as a library and CLI."""

__version__ = "0.1.0"
