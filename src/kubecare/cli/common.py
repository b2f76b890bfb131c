"""What every command shares: running the async library, and the kubectl-style client options."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
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
    """Open a client, run ``body`` with it, close it."""
    async with Kube(options) as kube:
        return await body(kube)
