"""A type's objects kept current in memory: one list, then a watch (client-go's informer, small).

The health gate of an upgrade asks "is every node Ready, is every workload available" once a
second for minutes after each batch. Answering that with lists sends every pod, ReplicaSet,
Deployment, StatefulSet and DaemonSet of the cluster each second to a control plane that may have
just restarted; with an informer each object crosses the wire once and then only its changes.

The cache is trusted only while its watch is connected (:meth:`Informer.fresh`): a watch that
broke and came back gets ``settle`` seconds to replay what it missed, and an informer whose watch
gave up lists again, with back-off, until the apiserver answers. Stale data never passes a gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

from kubecare.errors import KubecareError
from kubecare.kube.client import JSON, Kube
from kubecare.kube.watch import watch


def _key(obj: JSON) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace') or ''}/{meta.get('name')}"


class Informer:
    def __init__(self, kube: Kube, path: str, *, what: str | None = None) -> None:
        self.kube, self.path, self.what = kube, path, what or path
        self.objects: dict[str, JSON] = {}
        self.lists = 0  # how many full lists it took (the first and every relist)
        self.error: KubecareError | None = None  # the last failure, while not connected
        self._live_since: float | None = None
        self._listed = False  # a list answered since the watch was last connected
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def fresh(self, settle: float = 1.0) -> bool:
        """Running, listed, and its watch connected since that list, or for at least ``settle``
        seconds since it resumed after a cut."""
        return (
            self._task is not None
            and not self._task.done()
            and self._live_since is not None
            and time.monotonic() - self._live_since >= settle
        )

    def items(self) -> list[JSON]:
        return list(self.objects.values())

    async def _list(self) -> tuple[list[JSON], str]:
        self.lists += 1
        answer = await self.kube.list_all(self.path, what=self.what)
        self._listed = True
        return answer

    def _connected(self, up: bool) -> None:
        if not up:
            self._live_since = None
        elif self._live_since is None:
            # A watch started from a list's resourceVersion is current at once: the list is a
            # consistent read. One resumed from its last event may first replay what it missed
            # while cut, so it is trusted only after ``settle`` seconds.
            self._live_since = time.monotonic() - (3600.0 if self._listed else 0.0)
        self._listed = False

    def _replace(self, items: Iterable[JSON]) -> None:
        self.objects = {_key(o): o for o in items}

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                items, version = await self._list()
                self._replace(items)
                self.error = None
                async for ev in watch(
                    self.kube,
                    self.path,
                    resource_version=version,
                    relist=self._list,
                    what=self.what,
                    on_connection=self._connected,
                ):
                    failures = 0
                    if ev.type == "RELISTED":
                        self._replace(ev.object.get("items", []))
                    elif ev.type == "DELETED":
                        self.objects.pop(_key(ev.object), None)
                    else:
                        self.objects[_key(ev.object)] = ev.object
            except Exception as e:  # never CancelledError: stop() ends it that way
                # The watch gave up (the apiserver down for longer than its retries), the list
                # failed (down, or forbidden: the gate's timeout then names this error), or an
                # answer was not what the API sends: not trusted until a new list succeeds.
                self._live_since = None
                self.error = (
                    e if isinstance(e, KubecareError) else KubecareError(f"{self.what}: {e!r}")
                )
                failures += 1
                await asyncio.sleep(min(0.5 * 2 ** min(failures, 4), 5.0))
            finally:
                self._live_since = None


class Informers:
    """Several informers started and stopped together."""

    def __init__(self, kube: Kube, paths: dict[str, str]) -> None:
        self.by_name = {name: Informer(kube, path, what=name) for name, path in paths.items()}

    def __getitem__(self, name: str) -> Informer:
        return self.by_name[name]

    def start(self) -> None:
        for inf in self.by_name.values():
            inf.start()

    async def stop(self) -> None:
        for inf in self.by_name.values():
            await inf.stop()

    def fresh(self, settle: float = 1.0) -> bool:
        return all(inf.fresh(settle) for inf in self.by_name.values())

    def error(self) -> KubecareError | None:
        return next((i.error for i in self.by_name.values() if i.error is not None), None)

    @property
    def lists(self) -> int:
        return sum(i.lists for i in self.by_name.values())
