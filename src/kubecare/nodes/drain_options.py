"""The options of a drain: kubectl drain's flags plus kubecare's own.

A module of its own so that ``drain --plan`` and argument parsing do not import the drain
machinery (lock, watches, eviction) they do not use.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubecare.nodes.cordon import DryRun
from kubecare.nodes.filters import FilterOptions


@dataclass(frozen=True)
class DrainOptions:
    """kubectl drain's flags, plus kubecare's own (concurrency, lock). One object for every
    command that drains (drain, maintain), as kubectl's drain.Helper is."""

    ignore_daemonsets: bool = False
    force: bool = False
    delete_emptydir_data: bool = False
    grace_period: int = -1  # -1: the pod's own terminationGracePeriodSeconds; 0: immediately
    timeout: float = 0  # seconds for the eviction phase; 0 = forever
    pod_selector: str | None = None
    disable_eviction: bool = False  # delete instead of evict: bypasses PodDisruptionBudgets
    skip_wait_for_delete_timeout: int = 0
    chunk_size: int = 500
    dry_run: DryRun = DryRun.NONE
    concurrency: int = 50
    ignore_errors: bool = False  # several nodes: go on after a node fails (kubectl's flag)
    lock: bool = True
    lock_namespace: str = "kube-system"
    max_concurrent_drains: int = 1
    lock_ttl: int = 60
    lock_timeout: float = 0  # seconds to wait for a free slot; 0 = forever
    # a pod no PDB will ever let go, owned by a Deployment whose rollout keeps every replica
    # up: roll the Deployment out (node cordoned) instead of waiting (kubecare.nodes.surge)
    surge: bool = False

    def filters(self) -> FilterOptions:
        return FilterOptions(
            ignore_daemonsets=self.ignore_daemonsets,
            force=self.force,
            delete_emptydir_data=self.delete_emptydir_data,
            skip_wait_for_delete_timeout=self.skip_wait_for_delete_timeout,
            eviction=not self.disable_eviction,
        )
