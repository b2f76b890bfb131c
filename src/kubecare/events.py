"""Progress events: how the library reports what it is doing without printing.

Long operations take an ``on_event`` callback; the CLI renders events on stderr, tests collect
them, automation can log them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something happened: ``kind`` says what (e.g. "evicted"), ``node``/``pod`` where."""

    kind: str
    message: str
    node: str = ""
    pod: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)


EventSink = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """The default sink: drop everything."""
