"""Keeps the mirror pods of the runner's static pods current in the API (the runner's kubelet
half that talks to the apiserver). Best effort by design: while the apiserver is down (its own
manifest moved out, say) nothing can be written; the mirrors catch up when it is back, showing
Pending until then — as on a kubeadm node."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from kubecare.errors import Conflict, KubecareError, NotFound
from kubecare.sandbox.mirror import MIRROR, PodView, mirror_pod, mirror_status, status_key

VERIFY_EVERY = 10.0  # seconds between checks that every mirror pod is still there

if TYPE_CHECKING:
    from kubecare.kube import Kube
    from kubecare.sandbox.runner import Runner, StaticPod


class MirrorSync:
    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._wake = asyncio.Event()
        self._mirrors: dict[
            str, tuple[str, tuple[Any, ...] | None]
        ] = {}  # name -> (digest, status)
        self._node_uids: dict[str, str] = {}
        self._kube: Kube | None = None
        self._cleaned: set[str] = set()
        self._verified = 0.0

    def wake(self) -> None:
        self._wake.set()

    def _client(self) -> Kube:
        if self._kube is None:
            from kubecare.kube import ClientOptions, Kube

            self._kube = Kube(
                ClientOptions(
                    kubeconfig=str(self.runner.config.kubeconfig),
                    connect_timeout=2,
                    request_timeout=10,
                )
            )
        return self._kube

    async def run(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self._wake.wait()
                self._wake.clear()
                try:
                    await self.sync()
                except KubecareError:
                    pass  # the apiserver is not there (yet): try again on the next turn
                except Exception as e:  # never let one odd answer stop the mirrors for good
                    self.runner._log(f"mirror pods: {type(e).__name__}: {e}")
        finally:
            if self._kube is not None:
                await self._kube.close()

    def _view(self, pod: StaticPod, ip: str) -> PodView | None:
        if pod.doc is None:
            return None  # the kubelet makes no mirror for a manifest it cannot parse
        return PodView(
            name=pod.name,
            namespace=pod.namespace,
            node=pod.node,
            digest=pod.digest,
            manifest=pod.doc,
            image=pod.image,
            running=pod.running,
            ready=pod.ready,
            started_at=pod.started_at,
            restarts=pod.restarts,
            waiting_reason=pod.reason if not pod.running else "",
            waiting_message=pod.error if not pod.running else "",
            node_ip=ip,
        )

    async def _node_uid(self, kube: Kube, node: str) -> str | None:
        if node not in self._node_uids:
            try:
                obj = await kube.get_json(f"/api/v1/nodes/{node}", what=f'node "{node}"')
            except NotFound:
                return None  # not registered yet
            self._node_uids[node] = obj["metadata"]["uid"]
        return self._node_uids[node]

    async def sync(self) -> None:
        kube = self._client()
        ips = {nd.node: nd.ip for nd in self.runner.config.nodes}
        wanted: dict[str, PodView] = {}
        for pod in list(self.runner.pods.values()):
            view = self._view(pod, ips.get(pod.node, "127.0.0.1"))
            if view is not None:
                wanted[f"{view.namespace}/{view.mirror_name}"] = view
        for node in ips:
            if node not in self._cleaned and await self._node_uid(kube, node):
                await self._remove_strays(kube, node, set(wanted))
                self._cleaned.add(node)
        for key, view in wanted.items():
            await self._ensure(kube, key, view)
        for key in [k for k in self._mirrors if k not in wanted]:
            ns, name = key.split("/", 1)
            await self._delete(kube, f"/api/v1/namespaces/{ns}/pods/{name}")
            del self._mirrors[key]
        if time.monotonic() - self._verified > VERIFY_EVERY:
            await self._verify(kube, wanted)

    async def _delete(self, kube: Kube, path: str) -> None:
        """Delete a mirror pod at once: no kubelet will ever finish a graceful deletion of it."""
        with contextlib.suppress(NotFound):
            await kube.request_json(
                "DELETE", path, body={"gracePeriodSeconds": 0}, what=f"mirror pod {path}"
            )

    async def _verify(self, kube: Kube, wanted: dict[str, PodView]) -> None:
        """Mirror pods someone deleted (``kubectl delete pod``) are made again, as the kubelet
        does: the static pod itself is not affected."""
        self._verified = time.monotonic()
        items, _ = await kube.list_all(
            "/api/v1/pods", params={"labelSelector": "tier=control-plane"}, what="mirror pods"
        )
        live = set()
        for p in items:
            meta = p["metadata"]
            key = f"{meta['namespace']}/{meta['name']}"
            if not meta.get("deletionTimestamp"):
                live.add(key)
            elif MIRROR in (meta.get("annotations") or {}):
                await self._delete(
                    kube, f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"
                )
        for key in wanted:
            if key not in live:
                self._mirrors.pop(key, None)  # made again on the next pass
                self.wake()

    async def _remove_strays(self, kube: Kube, node: str, wanted: set[str]) -> None:
        """Mirror pods of this node that no manifest stands behind any more (from an earlier run)."""
        items, _ = await kube.list_all(
            "/api/v1/pods",
            params={"fieldSelector": f"spec.nodeName={node}"},
            what=f'pods of node "{node}"',
        )
        for p in items:
            meta = p.get("metadata") or {}
            key = f"{meta.get('namespace')}/{meta.get('name')}"
            if MIRROR in (meta.get("annotations") or {}) and key not in wanted:
                await self._delete(kube, f"/api/v1/namespaces/{key.replace('/', '/pods/', 1)}")

    async def _ensure(self, kube: Kube, key: str, view: PodView) -> None:
        ns, name = key.split("/", 1)
        path = f"/api/v1/namespaces/{ns}/pods/{name}"
        known = self._mirrors.get(key)
        if known is None or known[0] != view.digest:
            uid = await self._node_uid(kube, view.node)
            if uid is None:
                return
            with contextlib.suppress(NotFound):
                current = await kube.get_json(path, what=f"mirror pod {key}")
                if (current["metadata"].get("annotations") or {}).get(
                    MIRROR
                ) != view.digest or current["metadata"].get("deletionTimestamp"):
                    await self._delete(kube, path)
                    await self._gone(kube, path)
            try:
                await kube.request_json(
                    "POST",
                    f"/api/v1/namespaces/{ns}/pods",
                    body=mirror_pod(view, uid, time.time()),
                    what=f"mirror pod {key}",
                )
            except Conflict:
                return  # the old mirror is still being removed: try again on the next pass
            self._mirrors[key] = (view.digest, None)
        status = mirror_status(view, time.time())
        if self._mirrors[key][1] != status_key(status):
            await kube.request_json(
                "PATCH",
                f"{path}/status",
                body={"status": status},
                content_type="application/merge-patch+json",
                what=f"mirror pod {key} status",
            )
            self._mirrors[key] = (view.digest, status_key(status))

    async def _gone(self, kube: Kube, path: str) -> None:
        for _ in range(50):
            try:
                await kube.get_json(path)
            except NotFound:
                return
            await asyncio.sleep(0.1)
