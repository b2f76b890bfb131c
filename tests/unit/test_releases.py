"""``upgrade plan`` without --to: the target chosen from kubecare's pinned release list."""

from __future__ import annotations

import pytest

from kubecare.versions.releases import NEWEST_PATCHES, default_target
from kubecare.versions.semver import Version


def test_the_list_has_one_release_per_minor_oldest_first() -> None:
    versions = [Version.parse(v) for v in NEWEST_PATCHES]
    assert versions == sorted(versions)
    minors = [(v.major, v.minor) for v in versions]
    assert len(set(minors)) == len(minors)
    assert all(not v.pre for v in versions)
    # the sandbox's releases are in it
    from kubecare.sandbox.binaries import KUBE_VERSIONS

    assert set(KUBE_VERSIONS) <= set(NEWEST_PATCHES)


@pytest.mark.parametrize(
    ("cluster", "target", "words"),
    [
        # one minor at a time: the next minor's newest patch, from any patch of this one
        ("v1.36.0", "v1.37.2", "newest v1.37 release"),
        ("v1.36.3", "v1.37.2", "newest v1.37 release"),
        ("v1.29.1", "v1.30.14", "newest v1.30 release"),
        # no newer minor known: the newest patch of this one
        ("v1.37.0", "v1.37.2", "no newer minor is known"),
        # already there, or past what the list knows: nothing to do, and how to ask for more
        ("v1.37.2", "v1.37.2", "pass --to"),
        ("v1.37.9", "v1.37.9", "pass --to"),
        ("v1.40.0", "v1.40.0", "pass --to"),
        ("v1.28.4", "v1.29.6", "newest v1.29 release"),
    ],
)
def test_default_target(cluster: str, target: str, words: str) -> None:
    got = default_target(Version.parse(cluster))
    assert str(got.version) == target
    assert words in got.reason
