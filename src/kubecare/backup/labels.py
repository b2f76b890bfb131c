"""Label selector strings (``-l app=web,tier!=db,env in (a,b),!legacy``) parsed and matched as
k8s.io/apimachinery/pkg/labels does, for filtering the objects of an archive on restore and diff
(on create the apiserver applies the selector itself)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UsageError

# A qualified key (optional DNS prefix + "/" + name) and a label value, as validation allows.
_KEY = r"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(\s*({_VALUE}(?:\s*,\s*{_VALUE})*)\s*\)$")
_CMP = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_NUM = re.compile(rf"^({_KEY})\s*(>|<)\s*(-?[0-9]+)$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # in, notin, exists, !, gt, lt
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "in":
            return present and labels[self.key] in self.values
        if self.op == "notin":
            return not present or labels[self.key] not in self.values
        if self.op == "exists":
            return present
        if self.op in ("gt", "lt"):  # labels.Requirement.Matches: both sides as integers
            try:
                value, bound = int(labels[self.key]), int(next(iter(self.values)))
            except (KeyError, ValueError):
                return False
            return value > bound if self.op == "gt" else value < bound
        return not present  # "!"


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse(text: str) -> tuple[Requirement, ...]:
    """The requirements of a selector string; an empty string selects everything."""
    if not text.strip():
        return ()
    out = []
    for raw in _split(text):
        part = raw.strip()
        if m := _SET.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(","))
            out.append(Requirement(m.group(1), m.group(2), values))
        elif m := _CMP.match(part):
            op = "notin" if m.group(2) == "!=" else "in"
            out.append(Requirement(m.group(1), op, frozenset({m.group(3)})))
        elif m := _NUM.match(part):
            out.append(
                Requirement(
                    m.group(1), "gt" if m.group(2) == ">" else "lt", frozenset({m.group(3)})
                )
            )
        elif m := _EXISTS.match(part):
            out.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise UsageError(
                f"invalid label selector {text!r} at {part!r}; examples: app=web, "
                "tier!=db, 'env in (prod,stage)', '!legacy'"
            )
    return tuple(out)


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str] | None) -> bool:
    return all(r.matches(labels or {}) for r in requirements)
