"""What every command that talks to a cluster shares: one client, one event loop."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubecare.cli.args import client_options

if TYPE_CHECKING:
    from kubecare.kube import Kube

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one library coroutine to completion (the CLI is the only place that does)."""
    import asyncio

    return asyncio.run(coro)


def with_cluster(args: argparse.Namespace, body: Callable[[Kube], Awaitable[T]]) -> T:
    """Open a client from the global flags, run ``body`` with it, close it.

    With $KUBECARE_REQUEST_COUNT_FILE set, the number of HTTP requests sent is written there at
    the end (benchmarks compare it with the server's own count).
    """
    from kubecare.kube import Kube

    async def main() -> T:
        kube = Kube(client_options(args))
        try:
            return await body(kube)
        finally:
            await kube.close()
            count_file = os.environ.get("KUBECARE_REQUEST_COUNT_FILE")
            if count_file:
                Path(count_file).write_text(str(kube.requests))  # noqa: ASYNC240 (once, at exit)

    return run(main())


def confirm(yes: bool, refusal: str) -> None:
    """Ask on the terminal before a change, unless ``--yes``. Without a terminal there is no
    one to ask: ``refusal`` (which names --yes) is the error, and nothing was done."""
    import sys

    from kubecare.errors import UsageError

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(refusal)
    sys.stderr.write("go on? [y/N] ")
    sys.stderr.flush()
    if sys.stdin.readline().strip().lower() not in ("y", "yes"):
        raise UsageError("nothing done")
