"""What every command shares: running the async library, and the kubectl-style client options."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer

from kubecare.kube import ClientOptions, Kube

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one library coroutine to completion (the CLI is the only place that does)."""
    return asyncio.run(coro)


def client_options(ctx: typer.Context) -> ClientOptions:
    """The global --kubeconfig/--context/-n options, stored by the root callback."""
    opts = ctx.find_root().obj
    assert isinstance(opts, ClientOptions)
    return opts


async def with_kube(options: ClientOptions, body: Callable[[Kube], Awaitable[T]]) -> T:
    """Open a client, run ``body`` with it, close it.

    With $KUBECARE_REQUEST_COUNT_FILE set, the number of HTTP requests sent is written there at
    the end (the drain benchmark compares it with kubectl's -v=6 request log).
    """
    kube = Kube(options)
    try:
        return await body(kube)
    finally:
        await kube.close()
        count_file = os.environ.get("KUBECARE_REQUEST_COUNT_FILE")
        if count_file:
            Path(count_file).write_text(str(kube.requests))  # noqa: ASYNC240 (once, at exit)
