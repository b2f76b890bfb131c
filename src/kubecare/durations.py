"""Durations as users and Kubernetes components write them: ``90``, ``15s``, ``2m``, ``1m30s``,
``1h``, ``500ms`` (Go's time.ParseDuration units; a bare number is seconds)."""

from __future__ import annotations

import re

from kubecare.errors import UsageError

_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration_seconds(text: str) -> float | None:
    """Seconds in a Go duration string (or a bare number of seconds); None if it is not one."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or _PART.sub("", text) != "":
        return None
    return sum(float(n) * _SECONDS[unit] for n, unit in _PART.findall(text))


def parse_duration(value: str | int | None, what: str) -> int | None:
    """A user's duration flag -> whole seconds; :class:`UsageError` if malformed or negative."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if text.startswith("-"):
        raise UsageError(f"{what} must not be negative (got {value!r})")
    seconds = go_duration_seconds(text)
    if seconds is None:
        raise UsageError(f"{what} {value!r} is not a duration; use e.g. 90s, 15m or 1m30s")
    return int(seconds)
