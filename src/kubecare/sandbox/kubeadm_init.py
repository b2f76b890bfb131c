"""``kubeadm init`` and ``kubeadm join --control-plane``, done by the real kubeadm: its own
phases, each node's in that node's own view (:mod:`kubecare.sandbox.nodeshell`: the node's tree
at kubeadm's paths), so the tree is kubeadm's by construction.

Before the control plane runs (:data:`NODE_PHASES`): ``certs all`` (the first node makes the
CAs; a joiner is handed them first, as in kubeadm's manual certificate distribution, and makes
its own serving and client certificates), ``kubeconfig`` (admin.conf, kubelet.conf with the
node's own ``system:node:<name>`` identity, ...), ``etcd local`` on the first node and
``control-plane all`` on every node. Once it runs: a joiner's etcd member is added by ``kubeadm
join phase etcd-join`` (a learner, then promoted, the manifest written with the
members so far and ``--initial-cluster-state=existing``), one after another.

The API side: ``kubeadm init phase upload-config all`` (the ``kubeadm-config`` and ``kubelet-config``
ConfigMaps and the RBAC that lets nodes read them), ``bootstrap-token`` (a bootstrap token, the
``cluster-info`` ConfigMap in kube-public and the node-bootstrap RBAC) and ``addon all`` (CoreDNS
and kube-proxy: their Deployment, DaemonSet, ConfigMaps, Service and RBAC; kwok runs their pods).
So the objects ``kubeadm upgrade`` later reads are the ones kubeadm itself wrote, and every
sandbox runs the DaemonSet every real cluster has (kube-proxy), which drains and upgrades must
live with.

The configs kubeadm reads are written to ``<state>/kubeadm/``: ``init.yaml`` (the first node's,
with the bootstrap token; 0600), ``init-<node>.yaml`` (each joiner's own name and address, for
its file phases) and ``join-<node>.yaml`` (its etcd-join).
"""

from __future__ import annotations

import asyncio
import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubecare.errors import SandboxError
from kubecare.files import write_atomic

if TYPE_CHECKING:
    from kubecare.sandbox.nodeshell import NodeView

#: What each control-plane node's kubeadm writes into its tree before anything runs: (first
#: node's phases, a joiner's phases). ``kubeconfig all`` on the first node includes
#: super-admin.conf, which only ``kubeadm init`` writes. A joiner's ``control-plane all`` comes
#: after its etcd member has joined (:data:`JOINER_LATE`): kubeadm join writes those manifests
#: first and its kubelet crash-loops the apiserver until the local member is there; written
#: after, they start once, on a working etcd — the same files, seconds sooner.
NODE_PHASES = (
    (("certs", "all"), ("kubeconfig", "all"), ("etcd", "local"), ("control-plane", "all")),
    (
        ("certs", "all"),
        ("kubeconfig", "admin"),
        ("kubeconfig", "controller-manager"),
        ("kubeconfig", "scheduler"),
        ("kubeconfig", "kubelet"),
    ),
)
JOINER_LATE = (("control-plane", "all"),)

#: The cluster's own key material a joining control plane needs before ``certs all``
#: (kubeadm's "manual certificate distribution": copied from the first node).
SHARED_PKI = (
    "ca.crt", "ca.key", "sa.key", "sa.pub", "front-proxy-ca.crt", "front-proxy-ca.key",
    "etcd/ca.crt", "etcd/ca.key",
)  # fmt: skip

#: The phases, in kubeadm init's order (cmd/kubeadm/app/cmd/init.go: upload-config,
#: upload-certs, mark-control-plane, bootstrap-token, kubelet-finalize, addon). mark-control-plane
#: is the node's registration (the sandbox writes its labels and taints); upload-certs and
#: kubelet-finalize concern files of a real node's kubelet.
PHASES = (("upload-config", "all"), ("bootstrap-token",), ("addon", "all"))

_TOKEN_CHARS = string.ascii_lowercase + string.digits


def bootstrap_token() -> str:
    """A token in kubeadm's format, ``[a-z0-9]{6}.[a-z0-9]{16}`` (bootstraputil)."""

    def part(n: int) -> str:
        return "".join(secrets.choice(_TOKEN_CHARS) for _ in range(n))

    return f"{part(6)}.{part(16)}"


def init_configuration(node: str, address: str, bind_port: int, token: str) -> dict[str, Any]:
    """kubeadm's InitConfiguration (v1beta4) for a control-plane node: its name and its
    apiserver's advertise address (the node's 192.0.2.x: kubeadm refuses loopback)."""
    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "InitConfiguration",
        "bootstrapTokens": [
            {
                "token": token,
                "ttl": "24h0m0s",
                "groups": ["system:bootstrappers:kubeadm:default-node-token"],
                "usages": ["signing", "authentication"],
            }
        ],
        "localAPIEndpoint": {"advertiseAddress": address, "bindPort": bind_port},
        "nodeRegistration": {
            "name": node,
            "criSocket": "unix:///run/containerd/containerd.sock",
        },
    }


def join_configuration(node: str, address: str, bind_port: int) -> dict[str, Any]:
    """kubeadm's JoinConfiguration (v1beta4) for a control-plane node joining: discovery by the
    node's own admin.conf (its certificates are already there), its advertise address."""
    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "controlPlane": {"localAPIEndpoint": {"advertiseAddress": address, "bindPort": bind_port}},
        "discovery": {"file": {"kubeConfigPath": "/etc/kubernetes/admin.conf"}},
        "nodeRegistration": {
            "name": node,
            "criSocket": "unix:///run/containerd/containerd.sock",
        },
    }


def config_documents(init: dict[str, Any], cluster: dict[str, Any]) -> str:
    """The init configuration, the ClusterConfiguration, and the KubeletConfiguration and
    KubeProxyConfiguration every kubelet and kube-proxy of this machine needs (kubeadm uploads
    them as ``kubelet-config`` and ``kube-proxy``; real nodes read them when they join and at
    each ``kubeadm upgrade node``)."""
    import yaml

    from kubecare.sandbox.realnode import KUBE_PROXY_CONFIGURATION, KUBELET_CONFIGURATION

    docs = [init, cluster, KUBELET_CONFIGURATION, KUBE_PROXY_CONFIGURATION]
    return yaml.safe_dump_all(docs, sort_keys=False)


async def run_phases(view: NodeView, config: Path, log: Path, timeout: float = 60) -> None:
    """Run each API-side phase once, in order, in the first control-plane node's view (its
    network: kubeadm writes the server it talks to into ``cluster-info``, which joining nodes
    use; its files: kubeadm reads the node's pki, never the machine's), as super-admin (what
    ``kubeadm init`` uses before admin.conf's group is bound). A failing phase raises
    :class:`SandboxError` with kubeadm's own message."""
    for phase in PHASES:
        await in_view(
            view,
            ["init", "phase", *phase, "--kubeconfig", "/etc/kubernetes/super-admin.conf"],
            config,
            log,
            timeout,
        )


async def in_view(
    view: NodeView, args: list[str], config: Path, log: Path, timeout: float = 60
) -> None:
    """``kubeadm ARGS --config CONFIG`` in the node's own view (``sandbox exec``): what it writes
    lands in the node's tree; its systemctl calls reach the node's shim only."""
    import os

    from kubecare.sandbox import nodeshell

    unshare, nsenter = nodeshell.tools()
    argv = nodeshell.argv(
        view, ["kubeadm", *args, "--config", str(config)], unshare=unshare, nsenter=nsenter
    )
    env = nodeshell.environment(view, dict(os.environ))
    await _run(argv, f"kubeadm {' '.join(args)} on {view.node}", log, timeout, env)


async def node_phases(view: NodeView, config: Path, log: Path, *, first: bool) -> None:
    """The node's kubeadm init phases before anything runs (:data:`NODE_PHASES`)."""
    for phase in NODE_PHASES[0 if first else 1]:
        await in_view(view, ["init", "phase", *phase], config, log)


async def kubelet_start(view: NodeView, config: Path, log: Path, timeout: float = 60) -> None:
    """``kubeadm init phase kubelet-start``: kubeadm writes the node's
    ``/var/lib/kubelet/{config.yaml,instance-config.yaml,kubeadm-flags.env}``, which ``kubeadm
    upgrade`` reads back, and (re)starts the node's kubelet."""
    await in_view(view, ["init", "phase", "kubelet-start"], config, log, timeout)


async def join_etcd(
    view: NodeView, join: Path, init: Path, log: Path, timeout: float = 120
) -> None:
    """``kubeadm join phase etcd-join``: the node's member added to the running etcd cluster
    as kubeadm adds it, its manifest written; then the node's control-plane manifests
    (:data:`JOINER_LATE`, with its init configuration)."""
    await in_view(view, ["join", "phase", "etcd-join"], join, log, timeout)
    for phase in JOINER_LATE:
        await in_view(view, ["init", "phase", *phase], init, log)


async def _run(
    argv: list[str], what: str, log: Path, timeout: float, env: dict[str, str] | None = None
) -> None:
    await output(argv, what, log, timeout, env)


async def output(
    argv: list[str], what: str, log: Path, timeout: float, env: dict[str, str] | None = None
) -> str:
    """Run ``argv`` (kubeadm), its output appended to ``log``; returns the output, or raises
    :class:`SandboxError` with kubeadm's own error line."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=env,
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        await asyncio.to_thread(_append, log, f"$ {' '.join(argv)}\n(timed out)\n".encode())
        raise SandboxError(f"{what} did not finish within {timeout:.0f}s; see {log}") from None
    # one write per run: runs on several nodes at once do not interleave in the log
    await asyncio.to_thread(_append, log, f"$ {' '.join(argv)}\n".encode() + out)
    if proc.returncode != 0:
        lines = out.decode(errors="replace").strip().splitlines()
        why = next(
            (x for x in lines if x.startswith(("error", "kubecare sandbox exec"))),
            lines[-1] if lines else "",
        )
        raise SandboxError(
            f"{what} failed (exit {proc.returncode}): {why or 'no output'}; the whole output "
            f"is in {log}"
        )
    return out.decode(errors="replace")


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def write_config(
    directory: Path, init: dict[str, Any], cluster: dict[str, Any] | None, name: str = "init"
) -> Path:
    """``<state>/kubeadm/<name>.yaml`` (0600: it may hold the bootstrap token): the init (or
    join) configuration, and the ClusterConfiguration when given."""
    import yaml

    path = directory / "kubeadm" / f"{name}.yaml"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = config_documents(init, cluster) if cluster else yaml.safe_dump(init, sort_keys=False)
    write_atomic(path, text, mode=0o600)
    return path
