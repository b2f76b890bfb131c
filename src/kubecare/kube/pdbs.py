"""PodDisruptionBudgets as they change: how many disruptions each allows, from one watch.

:class:`PdbWatcher` lets callers that were refused an eviction (429) wait until a budget covering
their pod allows a disruption again, instead of retrying blindly. It also rations the wake-ups:
when a budget allows ``n`` disruptions, at most ``n`` waiters of that budget are let through until
the budget's status changes again, so a single allowed disruption does not send sixty evictions at
the apiserver at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from kubecare.kube.client import JSON, Kube
from kubecare.kube.objects import ref
from kubecare.kube.watch import watch

PDB_PATH = "/apis/policy/v1/poddisruptionbudgets"


@dataclass(frozen=True)
class Claim:
    """One waiter let through by a budget (``pdb``) at one state of it (``generation``)."""

    pdb: str
    generation: int


class PdbWatcher:
    """Current ``disruptionsAllowed`` of every PDB, and a rationed way to wait for one."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.allowed: dict[str, int] = {}
        # Waiters let through per budget since its status last changed (reset by every update),
        # and a generation per budget so a late release does not undo a newer count.
        self.claimed: dict[str, int] = {}
        self._generation: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()

    async def ensure_started(self) -> None:
        """List the budgets once and keep them current with a watch (idempotent)."""
        async with self._start_lock:
            if self._task is not None:
                return
            items, version = await self.kube.list_all(PDB_PATH, what="PodDisruptionBudgets")
            self._update(items)
            self._task = asyncio.create_task(self._run(version))

    def _update(self, items: Sequence[JSON]) -> None:
        for pdb in items:
            key = ref(pdb)
            self.allowed[key] = int((pdb.get("status") or {}).get("disruptionsAllowed") or 0)
            self.claimed[key] = 0
            self._generation[key] = self._generation.get(key, 0) + 1

    async def _run(self, version: str) -> None:
        async def relist() -> tuple[list[JSON], str]:
            return await self.kube.list_all(PDB_PATH, what="PodDisruptionBudgets")

        try:
            async for ev in watch(
                self.kube,
                PDB_PATH,
                resource_version=version,
                relist=relist,
                what="PodDisruptionBudgets",
            ):
                if ev.type == "RELISTED":
                    self.allowed.clear()
                    self._update(ev.object.get("items", []))
                elif ev.type == "DELETED":
                    self.allowed.pop(ref(ev.object), None)
                    self.claimed.pop(ref(ev.object), None)
                else:
                    self._update([ev.object])
                async with self._changed:
                    self._changed.notify_all()
        finally:  # the watch gave up: wake the waiters, who fall back to their back-off
            async with self._changed:
                self._changed.notify_all()

    def knows(self, keys: Sequence[str]) -> bool:
        """Whether the watch is running and has every budget of ``keys``."""
        return (
            self._task is not None
            and not self._task.done()
            and all(key in self.allowed for key in keys)
        )

    def _claim(self, keys: Sequence[str]) -> Claim | None:
        for key in keys:
            if self.allowed.get(key, 0) - self.claimed.get(key, 0) > 0:
                self.claimed[key] = self.claimed.get(key, 0) + 1
                return Claim(key, self._generation.get(key, 0))
        return None

    async def admit(self, keys: Sequence[str], timeout: float) -> Claim | None:
        """Wait until a budget in ``keys`` allows one more disruption and claim it; return the
        budget claimed, or None after ``timeout`` (the caller then retries on its own schedule).

        The caller was just refused, so it first waits for news: a budget that still shows an
        allowed disruption from before the refusal must not let it straight through again.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait()
                while (claimed := self._claim(keys)) is None:
                    if self._task is not None and self._task.done():
                        return None
                    await self._changed.wait()
                return claimed
        return None

    def release(self, claim: Claim | None) -> None:
        """Give back a claim whose eviction was refused again, unless the budget has changed
        since (then the count was reset already)."""
        if claim is None or self._generation.get(claim.pdb) != claim.generation:
            return
        if self.claimed.get(claim.pdb, 0) > 0:
            self.claimed[claim.pdb] -= 1

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
