"""Maintenance windows: ``"Sat 02:00-06:00"``, ``"Mon-Fri 22:00-04:00"``, several separated by
commas. Times are the local time of the machine running kubecare (its TZ); a window whose end
is not after its start runs past midnight into the next day. A node is only *started* inside a
window; one in progress when the window closes is finished (stopping mid-node would leave it
cordoned), then the run pauses and the same command resumes it.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

from kubecare.errors import UsageError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_PART = re.compile(
    r"^(?:(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))?\s+)?(?P<h1>\d{1,2}):(?P<m1>\d{2})-(?P<h2>\d{1,2}):(?P<m2>\d{2})$"
)


@dataclass(frozen=True)
class Span:
    days: frozenset[int]  # weekday() of the day the window opens
    start: int  # minutes after midnight
    end: int


@dataclass(frozen=True)
class Window:
    text: str
    spans: tuple[Span, ...]

    def contains(self, when: datetime.datetime) -> bool:
        minute = when.hour * 60 + when.minute
        day = when.weekday()
        for s in self.spans:
            if s.start < s.end:
                if day in s.days and s.start <= minute < s.end:
                    return True
            else:  # past midnight: opened today, or yesterday and still open
                if (day in s.days and minute >= s.start) or (
                    (day - 1) % 7 in s.days and minute < s.end
                ):
                    return True
        return False

    def next_opening(self, when: datetime.datetime) -> datetime.datetime:
        """The first minute at or after ``when`` inside the window."""
        t = when.replace(second=0, microsecond=0)
        for _ in range(8 * 24 * 60):
            if self.contains(t):
                return t
            t += datetime.timedelta(minutes=1)
        raise UsageError(f"--window {self.text!r} never opens")  # unreachable for a valid span


def parse_window(text: str) -> Window:
    spans = []
    for raw in text.split(","):
        part = " ".join(raw.strip().lower().split())
        m = _PART.match(part)
        bad = UsageError(
            f"--window {text!r}: expected e.g. 'Sat 02:00-06:00' or 'Mon-Fri 22:00-04:00' "
            "(local time; several separated by commas)"
        )
        if not m:
            raise bad
        h1, m1, h2, m2 = (int(m[k]) for k in ("h1", "m1", "h2", "m2"))
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise bad
        if m["d1"] is None:
            days = frozenset(range(7))
        else:
            if m["d1"] not in DAYS or (m["d2"] and m["d2"] not in DAYS):
                raise bad
            a = DAYS.index(m["d1"])
            b = DAYS.index(m["d2"]) if m["d2"] else a
            days = frozenset((a + i) % 7 for i in range((b - a) % 7 + 1))
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end:
            raise bad
        spans.append(Span(days, start, end))
    return Window(text, tuple(spans))
