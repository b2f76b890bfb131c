"""Durations as users type them (kubectl style): 15s, 2m, 90."""

from __future__ import annotations

from kubecare.errors import UsageError


def parse_duration(value: str | int | None, what: str) -> int | None:
    """``15s``/``2m``/``90`` -> seconds; :class:`UsageError` for anything else or negative."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    mult = 1
    if text.endswith("m"):
        mult, text = 60, text[:-1]
    elif text.endswith("s"):
        text = text[:-1]
    try:
        seconds = int(float(text) * mult)
    except ValueError:
        raise UsageError(f"{what} {value!r} is not a duration; use e.g. 15s or 2m") from None
    if seconds < 0:
        raise UsageError(f"{what} must not be negative (got {value!r})")
    return seconds
