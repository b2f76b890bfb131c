"""Kubernetes version strings, parsed and ordered as k8s.io/apimachinery/pkg/util/version does.

``ParseSemantic`` there accepts ``[v]MAJOR.MINOR.PATCH[-PRE][+BUILD]`` and orders pre-releases
below their release (semver 2.0.0, section 11); build metadata does not take part in ordering.
``ParseGeneric`` also accepts ``MAJOR.MINOR``; kubecare only uses it for image tags.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from kubecare.errors import UsageError

_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"  # numeric: no leading zero
_SEMANTIC = re.compile(
    r"^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)
_GENERIC = re.compile(r"^v?([0-9]+)\.([0-9]+)(?:\.([0-9]+))?")


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: str = ""
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Version:
        """A full semantic version (``v1.37.2``, ``1.37.2``, ``v1.38.0-rc.1``)."""
        m = _SEMANTIC.match(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a version like v1.37.2")
        return cls(int(m[1]), int(m[2]), int(m[3]), m[4] or "", m[5] or "")

    @classmethod
    def generic(cls, text: str) -> Version | None:
        """The leading ``MAJOR.MINOR[.PATCH]`` of an image tag (``v1.37.2``, ``3.6.8-0``)."""
        m = _GENERIC.match(text.strip())
        if not m:
            return None
        rest = text.strip()[m.end() :]
        pre = rest[1:] if rest.startswith("-") else ""
        return cls(int(m[1]), int(m[2]), int(m[3] or 0), pre.split("+")[0])

    def __str__(self) -> str:
        out = f"v{self.major}.{self.minor}.{self.patch}"
        if self.pre:
            out += f"-{self.pre}"
        if self.build:
            out += f"+{self.build}"
        return out

    @property
    def minor_line(self) -> str:
        return f"{self.major}.{self.minor}"

    def _pre_key(self) -> tuple[tuple[int, int | str], ...]:
        return tuple((0, int(p)) if p.isdigit() else (1, p) for p in self.pre.split("."))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        a = (self.major, self.minor, self.patch)
        b = (other.major, other.minor, other.patch)
        if a != b:
            return a < b
        if not self.pre or not other.pre:
            return bool(self.pre) and not other.pre  # a pre-release sorts below its release
        return self._pre_key() < other._pre_key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return (self.major, self.minor, self.patch, self.pre) == (
            other.major,
            other.minor,
            other.patch,
            other.pre,
        )

    def __hash__(self) -> int:
        return hash((self.major, self.minor, self.patch, self.pre))

    def minors_from(self, other: Version) -> int:
        """How many minor versions ``self`` is ahead of ``other`` (negative: behind)."""
        if self.major != other.major:
            return (self.major - other.major) * 1000
        return self.minor - other.minor


def parse_target(text: str, flag: str = "--to") -> Version:
    """The version a user asked for, or a one-line usage error naming the flag."""
    try:
        return Version.parse(text)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r}: not a Kubernetes version; give MAJOR.MINOR.PATCH, e.g. v1.37.2"
        ) from None


def image_version(image: str) -> Version | None:
    """The version in an image reference's tag (``registry.k8s.io/kube-apiserver:v1.37.2``);
    kubeadm writes ``+`` as ``_`` in tags (versiongetter.go), which is undone here."""
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return None
    tag = tag.split("@")[0].replace("_", "+")
    try:
        return Version.parse(tag)
    except ValueError:
        return Version.generic(tag)
