"""PdbWatcher lets through at most as many waiters as a budget allows (pure asyncio, no cluster:
the watch's updates are fed in by hand)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from kubecare.kube import Kube
from kubecare.kube.pdbs import Claim, PdbWatcher


def budget(allowed: int) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "web"},
        "status": {"disruptionsAllowed": allowed},
    }


async def publish(w: PdbWatcher, allowed: int) -> None:
    w._update([budget(allowed)])
    async with w._changed:
        w._changed.notify_all()


async def test_one_allowed_disruption_admits_one_waiter_per_change() -> None:
    w = PdbWatcher(cast(Kube, None))
    w._task = asyncio.create_task(asyncio.Event().wait())  # a live "watch"
    await publish(w, 0)
    admitted: list[Claim | None] = []

    async def waiter() -> None:
        admitted.append(await w.admit(["ns/web"], timeout=2))

    tasks = [asyncio.create_task(waiter()) for _ in range(5)]
    await asyncio.sleep(0.05)
    await publish(w, 1)
    await asyncio.sleep(0.05)
    assert len([a for a in admitted if a]) == 1
    await publish(w, 2)
    await asyncio.sleep(0.05)
    assert len([a for a in admitted if a]) == 3
    # A claim given back after a new refusal, within the same state of the budget, frees a turn.
    w.release(admitted[0])
    await publish(w, 0)
    await asyncio.gather(*tasks)
    assert len([a for a in admitted if a]) == 3  # the other two timed out and will retry
    w._task.cancel()


async def test_a_release_after_the_budget_changed_does_not_undo_the_new_count() -> None:
    w = PdbWatcher(cast(Kube, None))
    w._task = asyncio.create_task(asyncio.Event().wait())
    await publish(w, 1)
    waiting = asyncio.create_task(w.admit(["ns/web"], timeout=2))
    await asyncio.sleep(0.01)
    await publish(w, 1)
    claim = await waiting
    assert claim is not None and w.claimed["ns/web"] == 1
    await publish(w, 1)  # a newer state: the count starts again
    w.release(claim)  # stale: ignored
    assert w.claimed["ns/web"] == 0
    w._task.cancel()


async def test_a_waiter_never_waits_past_its_timeout() -> None:
    w = PdbWatcher(cast(Kube, None))
    w._task = asyncio.create_task(asyncio.Event().wait())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await w.admit(["ns/web"], timeout=0.2) is None
    assert loop.time() - t0 < 1
    w._task.cancel()


async def test_knows_only_budgets_a_live_watch_has_seen() -> None:
    w = PdbWatcher(cast(Kube, None))
    assert not w.knows(["ns/web"])  # no watch yet
    w._task = asyncio.create_task(asyncio.Event().wait())
    await publish(w, 0)
    assert w.knows(["ns/web"]) and not w.knows(["ns/web", "ns/other"])
    w._task.cancel()
    await asyncio.sleep(0)
    assert not w.knows(["ns/web"])  # the watch gave up: waiters fall back to their back-off
