"""Restarting static pods on a kubeadm node so they read renewed certificates, as kubeadm's
docs say to: move the manifest out of the manifests dir, wait for the kubelet to notice (it
rereads the dir every ``fileCheckFrequency``, 20 s by default) and stop the pod, and move it
back.

Each component is seen stopped (its own probe, from its manifest, no longer answers) before its
manifest goes back, or the kubelet would find the same pod still running and keep it, old
certificates and all; and seen serving again before the next one is touched, so a component
that does not come back (a bad certificate) stops the restarts there, with the rest of the
control plane still up.
"""

from __future__ import annotations

import asyncio
import os
from functools import partial
from pathlib import Path

from ..errors import CertError, KubecareError

#: The kubelet's default fileCheckFrequency: how often it rereads the manifests dir.
FILE_CHECK = 20.0
#: How long a component may take to stop once its manifest is gone (its grace period is 30 s),
#: and to serve again once it is back.
STOP_TIMEOUT = 90.0
SERVE_TIMEOUT = 180.0


async def restart_static_pods(
    manifests: Path,
    components: list[str],
    wait: float = FILE_CHECK,
    *,
    stop_timeout: float = STOP_TIMEOUT,
    serve_timeout: float = SERVE_TIMEOUT,
) -> None:
    from ..etcd.restore import _is, _wait, probe_url

    async def stopped(url: str) -> bool:
        # refused twice in a row, a second apart: a probe that only timed out is a busy
        # component, not a stopped one
        if not await _refused(url):
            return False
        await asyncio.sleep(1.0)
        return await _refused(url)

    for c in components:
        manifest = manifests / f"{c}.yaml"
        parked = manifests.parent / f"{c}.yaml.kubecare-restart"
        if not manifest.exists():
            raise CertError(f"{manifest} not found; restart {c} yourself to use the new files")
        if parked.exists():
            raise CertError(
                f"{parked} exists (a restart that did not finish?); move it back to "
                f"{manifest} first"
            )
        try:
            url = probe_url(manifest)
        except KubecareError as e:
            raise CertError(f"{c}: {e}; restart it yourself") from None
        os.replace(manifest, parked)
        try:
            # the kubelet looks every `wait` seconds; then the pod has its grace period
            await _wait(f"{c} to stop after its manifest was moved out", partial(stopped, url),
                        wait + stop_timeout)  # fmt: skip
        except KubecareError as e:
            raise CertError(f"{e}; its manifest is back, restart {c} yourself") from None
        finally:
            os.replace(parked, manifest)
        try:
            await _wait(f"{c} to serve again", partial(_is, url, 200), serve_timeout)
        except KubecareError as e:
            rest = components[components.index(c) + 1 :]
            left = f"; not restarted: {', '.join(rest)}" if rest else ""
            raise CertError(f"{e} ({url}): look at its logs before going on{left}") from None


async def _refused(url: str) -> bool:
    """Whether nothing listens where the probe points (the connection refused)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), 2.0)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    return False
