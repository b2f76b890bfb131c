"""Reads a user may not be allowed: what read-only commands do with a 403.

A ServiceAccount that may list nodes but not pods can run ``kubectl get nodes``; kubecare's
read-only commands show it what it may see, leave the rest blank, and say in one line per gap
what could not be seen and which permission would show it. Only the object a command is about
(the nodes of ``kubecare nodes``) stays a hard error.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from kubecare.errors import Forbidden

T = TypeVar("T")


def note(what: str, permission: str, consequence: str = "") -> str:
    """``<what> not shown: this user may not <permission>[; <consequence>]``."""
    return f"{what} not shown: this user may not {permission}" + (
        f"; {consequence}" if consequence else ""
    )


async def or_unseen(
    read: Awaitable[T],
    default: T,
    notes: list[str],
    what: str,
    permission: str,
    consequence: str = "",
) -> T:
    """``await read``, or ``default`` with a note in ``notes`` when RBAC forbids it."""
    try:
        return await read
    except Forbidden:
        notes.append(note(what, permission, consequence))
        return default
