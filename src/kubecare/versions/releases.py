"""The Kubernetes releases kubecare knows, for ``upgrade plan`` without ``--to``.

``kubeadm upgrade plan`` asks dl.k8s.io for ``stable-1.X.txt``; kubecare must also work where that
cannot be reached, so it carries a pinned list: the newest patch of each minor that the Go module
proxy listed for ``k8s.io/kubernetes`` (``go list -m -versions k8s.io/kubernetes``) on
:data:`PINNED_ON`. ``scripts/pin_releases.py`` prints a fresh list. A newer release than this list
knows is always reachable with ``--to``.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubecare.versions.semver import Version

PINNED_ON = "2026-12-07"
SOURCE = f"kubecare's release list (newest patch per minor on the Go module proxy, {PINNED_ON})"

#: The newest patch of each minor, oldest first.
NEWEST_PATCHES = (
    "1.29.6",
    "1.30.14",
    "1.31.14",
    "1.32.13",
    "1.33.13",
    "1.34.4",
    "1.35.4",
    "1.36.3",
    "1.37.2",
)
_NEWEST = {(v.major, v.minor): v for v in map(Version.parse, NEWEST_PATCHES)}


@dataclass(frozen=True)
class DefaultTarget:
    version: Version
    reason: str


def default_target(cluster: Version) -> DefaultTarget:
    """What to plan for a cluster whose oldest kube-apiserver is ``cluster``: the next minor's
    newest release (one minor at a time); at the newest minor known, its newest patch; when
    the cluster is already there, the cluster's own version (nothing to do)."""
    nxt = _NEWEST.get((cluster.major, cluster.minor + 1))
    if nxt is not None:
        return DefaultTarget(nxt, f"the newest v{nxt.major}.{nxt.minor} release in {SOURCE}")
    same = _NEWEST.get((cluster.major, cluster.minor))
    if same is not None and same > cluster:
        return DefaultTarget(
            same,
            f"no newer minor is known; the newest v{same.major}.{same.minor} patch in {SOURCE}",
        )
    if same is not None:
        return DefaultTarget(
            cluster, f"the cluster is at the newest release in {SOURCE}; pass --to for a newer one"
        )
    return DefaultTarget(
        cluster,
        f"{SOURCE} has no release after {cluster}; pass --to with the version to upgrade to",
    )
