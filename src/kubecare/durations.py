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


def _div(a: int, b: int) -> int:
    """Go's integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


SECOND_NS = 1_000_000_000


def human_duration(ns: int) -> str:
    """k8s.io/apimachinery's duration.HumanDuration (what ``kubeadm certs check-expiration``
    prints as RESIDUAL TIME), ported with its table tests. ``ns``: a Go time.Duration."""
    minute, hour = 60 * SECOND_NS, 3600 * SECOND_NS
    seconds = _div(ns, SECOND_NS)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = _div(ns, minute)
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = _div(ns, hour)
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def parse_age(value: str, what: str) -> int:
    """A duration that may be in days too (``30d``, ``12h``, ``90m``) -> seconds."""
    text = value.strip()
    m = re.fullmatch(r"(\d+)d", text)
    if m:
        return int(m.group(1)) * 86400
    seconds = parse_duration(text, what)
    if seconds is None:
        raise UsageError(f"{what} needs a duration, e.g. 30d or 12h")
    return seconds
