"""Retention: which backups ``--keep-last N`` / ``--keep-within DURATION`` let go (restic's
rules: a backup is kept if either rule keeps it), applied per cluster as restic applies them per
host and paths (``--group-by``): two clusters sharing a store never rotate each other's backups
out. A pinned backup (an unfinished upgrade's rollback backup) is never let go."""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping, Sequence

from .stores import Info


def to_delete(
    infos: Sequence[Info],
    *,
    keep_last: int | None,
    keep_within: float | None,
    now: datetime.datetime,
    groups: Mapping[str, str] | None = None,
    pinned: Collection[str] = (),
) -> list[Info]:
    """Pure: the backups neither rule keeps within their group (``groups``: name -> cluster;
    absent: one group), oldest first. With no rule, nothing is deleted."""
    if keep_last is None and keep_within is None:
        return []
    by_group: dict[str, list[Info]] = {}
    for i in infos:
        by_group.setdefault((groups or {}).get(i.name, ""), []).append(i)
    gone = [
        i
        for members in by_group.values()
        for i in _one_group(members, keep_last, keep_within, now)
        if i.name not in pinned
    ]
    return sorted(gone, key=lambda i: (i.modified, i.name))


def _one_group(
    infos: Sequence[Info], keep_last: int | None, keep_within: float | None, now: datetime.datetime
) -> list[Info]:
    newest_first = sorted(infos, key=lambda i: (i.modified, i.name), reverse=True)
    keep: set[str] = set()
    if keep_last is not None:
        keep.update(i.name for i in newest_first[:keep_last])
    if keep_within is not None:
        horizon = now - datetime.timedelta(seconds=keep_within)
        keep.update(i.name for i in newest_first if i.modified >= horizon)
    return [i for i in reversed(newest_first) if i.name not in keep]


_DAYS = {"d": 1, "w": 7, "y": 365}


def parse_keep_within(text: str) -> float:
    """``30d``, ``2w``, ``1y``, ``12h``, ``1d12h``: seconds."""
    import re

    from ..durations import go_duration_seconds
    from ..errors import UsageError

    rest, seconds = text.strip(), 0.0
    for n, unit in re.findall(r"(\d+)([dwy])", rest):
        seconds += int(n) * _DAYS[unit] * 86400
    rest = re.sub(r"\d+[dwy]", "", rest)
    if rest:
        more = go_duration_seconds(rest)
        if more is None:
            seconds = -1
        else:
            seconds += more
    if seconds <= 0:
        raise UsageError(f"--keep-within {text!r} is not a duration; use e.g. 30d, 2w or 12h")
    return seconds
