"""The etcd step of ``kubeadm join --control-plane``, for the sandbox's other control planes.

kubeadm (phases/etcd/local.go, CreateStackedEtcdStaticPodManifestFile) adds the joining node
to the running cluster as a learner (MemberAdd), writes its etcd.yaml with
``--initial-cluster=<the members after the add>`` and ``--initial-cluster-state=existing``,
promotes the learner once it has caught up (MemberPromote, retried: etcd refuses a learner
not yet in sync) and waits until the cluster is available. The first control plane is a
cluster of its own (``kubeadm init``). So the sandbox's manifests are kubeadm's shape: only the
last joiner's manifest names every member, and only the data dirs know the whole cluster.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubecare.errors import EtcdError, SandboxError
from kubecare.etcd.members import Endpoint


def endpoint(client_port: int, pki: Path) -> Endpoint:
    """The member's loopback client URL with kubeadm's healthcheck client certificate."""
    etcd = pki / "etcd"
    return Endpoint(
        f"https://127.0.0.1:{client_port}",
        etcd / "ca.crt",
        etcd / "healthcheck-client.crt",
        etcd / "healthcheck-client.key",
    )


async def wait_healthy(ep: Endpoint, timeout: float, what: str) -> None:
    from kubecare.etcd.grpc import member_status

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status = await member_status(ep, 2)
            if status.healthy and not status.is_learner:
                return
            last = "; ".join(status.errors) or ("a learner" if status.is_learner else "no leader")
        except EtcdError as e:
            last = str(e)
        await asyncio.sleep(0.1)
    raise SandboxError(f"{what} did not become healthy within {timeout:.0f}s ({last})")


async def _add(cluster: Endpoint, peer_url: str, deadline: float) -> tuple[int, list[Any]]:
    """MemberAdd as a learner, retried as kubeadm retries it: etcd answers "unhealthy cluster"
    until its leader has been connected to every voting member for 5 s (mayAddMember's
    HealthInterval), i.e. for a while after the previous member joined. A member already
    there with this peer URL (an earlier attempt whose answer was lost) is the one added."""
    from kubecare.etcd.grpc import member_add, member_list

    while True:
        try:
            listed = await member_list(cluster, 2)
            mine = [m for m in listed if peer_url in m.peer_urls]
            if mine:
                return mine[0].id, listed
            return await member_add(cluster, peer_url, learner=True)
        except EtcdError as e:
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"etcd did not accept a new member at {peer_url}: {e}; see the sandbox's "
                    "logs/ for etcd's own messages"
                ) from None
        await asyncio.sleep(0.25)


async def join(
    cluster: Endpoint,
    name: str,
    peer_url: str,
    own: Endpoint,
    write_manifest: Callable[[list[tuple[str, str]]], None],
    timeout: float,
) -> None:
    """Add member ``name`` (``peer_url``) through ``cluster`` as kubeadm does; ``write_manifest``
    gets the member list its --initial-cluster names and writes etcd.yaml."""
    from kubecare.etcd.grpc import member_list, member_promote

    deadline = time.monotonic() + timeout
    learner_id, members = await _add(cluster, peer_url, deadline)
    # kubeadm names the new member itself; a member without a name yet by its ID (util/etcd)
    joined = [
        (name if peer_url in m.peer_urls else (m.name or f"{m.id:x}"), m.peer_urls[0])
        for m in members
    ]
    write_manifest(joined)
    last = ""
    while True:
        try:
            listed = {m.id: m for m in await member_list(cluster, 2)}
            if learner_id in listed and not listed[learner_id].is_learner:
                break  # promoted (perhaps by an attempt whose answer was lost)
            await member_promote(cluster, learner_id, 2)
            break
        except EtcdError as e:  # "can only promote a learner member which is in sync"
            last = str(e)
        if time.monotonic() > deadline:
            raise SandboxError(
                f"etcd member {name} was added as a learner but could not be promoted within "
                f"{timeout:.0f}s ({last}); see its log in the sandbox's logs/"
            )
        await asyncio.sleep(0.1)
    await wait_healthy(own, max(1.0, deadline - time.monotonic()), f"etcd member {name}")
