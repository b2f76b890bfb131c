"""Byte sizes as people write them: ``64Mi``, ``2Gi``, ``500M``, ``1048576``."""

from __future__ import annotations

import re

from .errors import UsageError

_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
}


def parse_size(text: str, flag: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]i?)?[bB]?\s*", text)
    if m is None:
        raise UsageError(f"{flag} {text!r} is not a size; write e.g. 64Mi, 2Gi or 1048576")
    return int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
