"""Which clusters: kubectl-foreach's context patterns, and label selectors for fleet files.

Patterns (kubectl-foreach's ``filter.go``/``matcher.go``, table tests ported):

- ``NAME`` matches that context exactly;
- ``/RE/`` matches contexts the regular expression finds anywhere in (unanchored, as Go's
  ``MatchString``);
- a name with ``*``, ``?`` or ``[`` is a shell glob over the whole name (kubecare's addition,
  kubert's syntax);
- ``^`` before any of them removes what it matches;
- no additive pattern at all starts from every context.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError

Kind = Literal["exact", "regex", "glob"]


@dataclass(frozen=True)
class Filter:
    text: str  # as given, for messages
    kind: Kind
    value: str
    exclude: bool = False

    def match(self, name: str) -> bool:
        if self.kind == "exact":
            return name == self.value
        if self.kind == "glob":
            return fnmatch.fnmatchcase(name, self.value)
        return re.search(self.value, name) is not None


def parse_filter(text: str) -> Filter:
    if not text:
        raise UsageError("an empty string is no context pattern (give a name, a glob or /RE/)")
    body, exclude = (text[1:], True) if text[0] == "^" else (text, False)
    if len(body) > 1 and body[0] == "/" and body[-1] == "/":
        try:
            re.compile(body[1:-1])
        except re.error as e:
            raise UsageError(f"invalid context pattern {text!r}: {e}") from None
        return Filter(text, "regex", body[1:-1], exclude)
    if any(c in body for c in "*?["):
        return Filter(text, "glob", body, exclude)
    return Filter(text, "exact", body, exclude)


def match_contexts(names: list[str], filters: list[Filter]) -> list[str]:
    """The names the filters select, in the order given (kubectl-foreach's matchContexts)."""
    additive = [f for f in filters if not f.exclude]
    subtractive = [f for f in filters if f.exclude]
    return [
        n
        for n in names
        if (not additive or any(f.match(n) for f in additive))
        and not any(f.match(n) for f in subtractive)
    ]


def select(names: list[str], patterns: list[str]) -> list[str]:
    """:func:`match_contexts` of parsed ``patterns``; a selection of nothing is an error."""
    filters = [parse_filter(p) for p in patterns]
    got = match_contexts(names, filters)
    if not got:
        said = " ".join(patterns) if patterns else "(all)"
        known = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "") or "none"
        raise UsageError(f"no cluster matches {said}; the contexts are: {known}")
    return got


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Literal["=", "!=", "exists", "!exists"]
    value: str = ""

    def match(self, labels: dict[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


_KEY = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$")


def parse_selector(text: str) -> list[Requirement]:
    """An equality-based label selector (``env=prod,tier!=edge,canary,!legacy``): the subset of
    Kubernetes' syntax a fleet file's labels need; set-based terms are refused by name."""
    out: list[Requirement] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            raise UsageError(f"label selector {text!r} has an empty term")
        if " in " in term or " notin " in term or "(" in term:
            raise UsageError(
                f"label selector {text!r}: set-based terms are not supported for fleets; "
                "use key=value, key!=value, key or !key"
            )
        if "!=" in term:
            key, value = term.split("!=", 1)
            op: Literal["=", "!=", "exists", "!exists"] = "!="
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            op = "="
        elif term.startswith("!"):
            key, value, op = term[1:], "", "!exists"
        else:
            key, value, op = term, "", "exists"
        key = key.strip()
        if not _KEY.match(key):
            raise UsageError(f"label selector {text!r}: {key!r} is not a label key")
        out.append(Requirement(key, op, value.strip()))
    return out


def matches(requirements: list[Requirement], labels: dict[str, str]) -> bool:
    return all(r.match(labels) for r in requirements)
