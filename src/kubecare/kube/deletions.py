"""Which pods still exist, by UID, from one watch: how a drain knows a pod is really gone.

kubectl polls every pod once a second (gone = NotFound or a different UID). :class:`DeletionTracker`
gets the same answer from one watch per field selector (e.g. the pods of one node), started from
the resourceVersion of the list the caller planned from, so no deletion in between is missed; a
410 re-lists. A pod recreated under the same name has a new UID and so does not hide the deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from kubecare.errors import OperationFailed
from kubecare.kube.client import JSON, Kube
from kubecare.kube.objects import parse_time
from kubecare.kube.watch import watch


class DeletionTracker:
    """The pods matching ``field_selector``, kept current by a watch; wait for one to be gone."""

    def __init__(
        self,
        kube: Kube,
        pods: Sequence[JSON],
        version: str,
        *,
        field_selector: str,
        what: str,
        skip_after: int = 0,
    ) -> None:
        self.kube, self.what, self.skip_after = kube, what, skip_after
        self.params = {"fieldSelector": field_selector}
        self.present: dict[str, JSON] = {p["metadata"]["uid"]: p for p in pods}
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._run(version))

    async def _run(self, version: str) -> None:
        async def relist() -> tuple[list[JSON], str]:
            return await self.kube.list_all("/api/v1/pods", params=self.params, what=self.what)

        try:
            async for ev in watch(
                self.kube,
                "/api/v1/pods",
                resource_version=version,
                params=self.params,
                relist=relist,
                what=f"watch on {self.what}",
            ):
                if ev.type == "RELISTED":
                    self.present = {p["metadata"]["uid"]: p for p in ev.object.get("items", [])}
                elif ev.type == "DELETED":
                    self.present.pop(ev.object["metadata"]["uid"], None)
                else:
                    self.present[ev.object["metadata"]["uid"]] = ev.object
                async with self._changed:
                    self._changed.notify_all()
        finally:  # the watch gave up (apiserver gone too long): wake the waiters so they can fail
            async with self._changed:
                self._changed.notify_all()

    def exists(self, uid: str) -> bool:
        """Whether the pod with this UID is still there, as far as the watch has seen."""
        return uid in self.present

    def gone(self, uid: str) -> bool:
        """Gone, or (kubectl's --skip-wait-for-delete-timeout) terminating for longer than that."""
        pod = self.present.get(uid)
        if pod is None:
            return True
        if self.skip_after > 0:
            deleted = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
            if deleted is not None and time.time() - deleted.timestamp() > self.skip_after:
                return True
        return False

    def _check_alive(self) -> None:
        if self._task.done() and not self._task.cancelled():
            error = self._task.exception()
            raise OperationFailed(
                f"lost the watch on {self.what}: {error or 'it ended'}; the node stays cordoned; "
                "run the same drain again to resume"
            )

    async def wait_gone(self, uid: str, timeout: float | None = None) -> bool:
        """Wait until the pod ``uid`` is gone; False if ``timeout`` passed first.

        Raises :class:`OperationFailed` if the watch itself failed (never waits on a dead watch).
        """
        try:
            async with asyncio.timeout(timeout), self._changed:
                while not self.gone(uid):
                    self._check_alive()
                    with contextlib.suppress(TimeoutError):
                        # Wake now and then: the skip-wait rule depends on the clock, not events.
                        async with asyncio.timeout(1.0 if self.skip_after > 0 else None):
                            await self._changed.wait()
                return True
        except TimeoutError:
            return False

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
