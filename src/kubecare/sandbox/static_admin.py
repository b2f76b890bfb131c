"""What a kubeadm node's administrator does to its static pods, on a sandbox's control-plane
nodes: stop one by moving its manifest out of ``manifests/``, start it by moving it back,
change its image tag (as ``kubeadm upgrade apply`` does) — and wait on the runner (the node's
kubelet) until it has acted. Mixed into :class:`~.lifecycle.Sandbox`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.errors import NotFound, SandboxError
from kubecare.files import write_atomic
from kubecare.sandbox import process
from kubecare.sandbox.binaries import resolve_version
from kubecare.sandbox.state import SandboxState
from kubecare.sandbox.staticpods import COMPONENTS as STATIC

if TYPE_CHECKING:
    from contextlib import AbstractContextManager


class StaticPodAdmin:
    """The static-pod half of :class:`~.lifecycle.Sandbox`."""

    if TYPE_CHECKING:  # what the Sandbox it is mixed into provides
        name: str

        def load(self) -> SandboxState: ...
        def save(self, state: SandboxState) -> None: ...
        def locked(self, wait: float = 0) -> AbstractContextManager[None]: ...
        def runner_report(self) -> dict[str, Any]: ...

    def _node(self, state: SandboxState, node: str | None) -> dict[str, Any]:
        if node is None:
            return state.control_planes[0]
        for cp in state.control_planes:
            if cp["node"] == node:
                return cp
        raise NotFound(
            f'"{node}" is not a control-plane node of sandbox "{self.name}"; control planes: '
            + ", ".join(cp["node"] for cp in state.control_planes),
            status=404,
        )

    def manifest_path(self, component: str, node: str | None = None) -> Path:
        """Where ``component``'s static pod manifest lives (``etc/kubernetes/manifests/``)."""
        if component not in STATIC:
            raise NotFound(
                f"{component!r} is not a static pod (one of: {', '.join(STATIC)})", status=404
            )
        return Path(self._node(self.load(), node)["manifests"]) / f"{component}.yaml"

    def _parked(self, manifest: Path) -> Path:
        # Outside manifests/, so the runner ignores it; inside the node's tree, as on a kubeadm
        # node where an admin moves the file one directory up.
        return manifest.parent.parent / f"{manifest.name}.stopped"

    def stop_component(self, name: str, *, node: str | None = None, timeout: float = 30) -> bool:
        """Stop a static pod by moving its manifest out of manifests/ (as on a kubeadm node) and
        wait until its process has exited; returns whether it was running. ``kwok`` and
        ``runner`` are processes, stopped by pid."""
        state = self.load()
        if name in state.components:
            with self.locked():
                comp = state.components[name]
                was = process.stop(comp.pid, comp.binary)
                comp.pid = None
                self.save(state)
                return was
        manifest = self.manifest_path(name, node)
        if not manifest.exists():
            return False
        was = bool((self._runner_pod(name, node) or {}).get("running"))
        os.replace(manifest, self._parked(manifest))
        # Until its process has exited (not only left the manifests), so a start right after
        # never races the old process for its ports.
        deadline = time.monotonic() + timeout
        while self._runner_pods(name, node):
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"{name} did not stop within {timeout:.0f}s; see kubecare sandbox logs runner"
                )
            time.sleep(0.2)
        return was

    async def start_component(
        self,
        name: str,
        *,
        version: str | None = None,
        node: str | None = None,
        timeout: float = 90,
    ) -> None:
        """Start a stopped static pod (its manifest moved back), optionally at another version
        (the image tag changed, as kubeadm upgrade does); wait until it is running and ready."""
        state = self.load()
        if name in state.components:
            raise SandboxError(
                f"{name} is a process of the sandbox, not a static pod; restart the sandbox"
            )
        manifest = self.manifest_path(name, node)
        parked = self._parked(manifest)
        if parked.exists():
            os.replace(parked, manifest)
        if version is not None:
            self.set_image(name, version, node=node)
        want = self._image_for(name, version) if version else None
        await asyncio.to_thread(
            self._wait_runner,
            name,
            node,
            lambda p: (
                p is not None
                and p.get("running")
                and p.get("ready")
                and (want is None or p.get("image") == want)
            ),
            timeout,
            "start",
        )

    async def restart_component(
        self, name: str, *, version: str | None = None, node: str | None = None
    ) -> None:
        """Restart a static pod: at another version by changing its image tag, else by moving
        its manifest out and back."""
        current = self._runner_pod(name, node)
        if (
            version is not None
            and current is not None
            and current.get("image") != self._image_for(name, version)
        ):
            await self.start_component(name, version=version, node=node)
            return
        await asyncio.to_thread(self.stop_component, name, node=node)
        await self.start_component(name, version=version, node=node)

    def _image_for(self, component: str, version: str) -> str:
        v = resolve_version(version)
        if component == "etcd":
            from kubecare.versions.kubeadm import etcd_tag

            return f"registry.k8s.io/etcd:{etcd_tag(int(v.split('.')[1]))}"
        return f"registry.k8s.io/{component}:v{v}"

    def set_image(self, component: str, version: str, *, node: str | None = None) -> Path:
        """Rewrite the manifest's image for Kubernetes ``version`` (etcd: the tag kubeadm pins for
        it), atomically, as ``kubeadm upgrade apply`` does; the runner restarts the component."""
        import yaml

        manifest = self.manifest_path(component, node)
        doc = yaml.safe_load(manifest.read_text())
        doc["spec"]["containers"][0]["image"] = self._image_for(component, version)
        write_atomic(manifest, yaml.safe_dump(doc, sort_keys=False), mode=0o600)
        return manifest

    def _runner_pods(self, name: str, node: str | None) -> list[dict[str, Any]]:
        """What the runner reports for ``name`` on ``node``: the current pod first, then any
        earlier process of it that is still terminating."""
        target = self._node(self.load(), node)["node"]
        pods = [
            dict(p)
            for p in self.runner_report().get("pods") or []
            if p.get("node") == target
            and p.get("component") == name
            and p.get("file", "").endswith(".yaml")
        ]
        return sorted(pods, key=lambda p: p.get("reason") == "Terminating")

    def _runner_pod(self, name: str, node: str | None) -> dict[str, Any] | None:
        """The current (not terminating) pod of ``name`` on ``node``."""
        current = [p for p in self._runner_pods(name, node) if p.get("reason") != "Terminating"]
        return current[0] if current else None

    def _wait_runner(
        self,
        name: str,
        node: str | None,
        done: Callable[[dict[str, Any] | None], Any],
        timeout: float,
        what: str,
    ) -> None:
        deadline = time.monotonic() + timeout
        while True:
            pod = self._runner_pod(name, node)
            if done(pod):
                return
            if time.monotonic() > deadline:
                detail = (pod or {}).get("error") or "see kubecare sandbox logs " + name
                raise SandboxError(f"{name} did not {what} within {timeout:.0f}s: {detail}")
            time.sleep(0.2)
