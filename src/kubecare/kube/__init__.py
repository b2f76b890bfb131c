"""The only package that talks to the apiserver."""

from kubecare.kube.client import JSON, Kube
from kubecare.kube.config import ClientOptions

__all__ = ["JSON", "ClientOptions", "Kube"]
