"""Rendering results: tables for people, JSON/YAML for machines. Results go to stdout only."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum, StrEnum
from typing import Any


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"
    YAML = "yaml"


def say(line: str) -> None:
    """One line of progress or a note, on stderr (stdout carries results only)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def error(message: str) -> None:
    """The one ``error: ...`` line of a failed command (red on a terminal)."""
    red = sys.stderr.isatty() and not os.environ.get("NO_COLOR")
    sys.stderr.write(("\x1b[31merror:\x1b[0m " if red else "error: ") + message + "\n")


def plain(value: Any) -> Any:
    """Dataclasses/enums/tuples -> JSON-able data."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def emit(data: Any, output: Output | str, table: Callable[[], str]) -> None:
    """Print ``data`` as JSON/YAML, or the table ``table()`` builds."""
    if output == Output.JSON:
        import orjson

        sys.stdout.write(orjson.dumps(plain(data), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif output == Output.YAML:
        import yaml

        sys.stdout.write(yaml.safe_dump(plain(data), sort_keys=False))
    else:
        rendered = table()
        sys.stdout.write(rendered + ("\n" if rendered else ""))


def simple_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A kubectl-style table: upper-case headers, columns padded with three spaces, never cut."""
    cells = [[h.upper() for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def age(seconds: int) -> str:
    """kubectl's short age: 45s, 12m, 5h, 3d."""
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def mib(n: int) -> str:
    return f"{n / 1048576:.0f}Mi"
