"""A node's own view of the machine: what ``kubecare sandbox exec NODE -- CMD`` runs CMD in.

A control-plane node's tree lives in the sandbox's state dir (``nodes/<node>/etc/kubernetes``,
``var/lib/etcd``, ``var/lib/kubelet``). The course's commands name kubeadm's real paths
(``kubeadm certs check-expiration`` reads ``/etc/kubernetes/pki``; ``etcdctl --cacert
/etc/kubernetes/pki/etcd/ca.crt``), so the command runs in a private mount namespace
(``unshare --mount``, root) where:

- ``/etc`` and ``/var/lib`` are overlays on the machine's own, their upper layers under the
  node's ``.ns/`` dir: whatever the command writes there stays in the sandbox, never in the
  machine's real ``/etc`` or ``/var``;
- the node's ``etc/kubernetes``, ``var/lib/etcd`` and ``var/lib/kubelet`` are bind-mounted on
  ``/etc/kubernetes``, ``/var/lib/etcd`` and ``/var/lib/kubelet``;
- the node's ``usr/local/bin`` comes first on PATH: ``kubeadm`` (the version installed on that
  node: ``sandbox install``), ``kubectl``, ``etcdctl``, ``etcdutl``, and a ``systemctl`` of the
  node's own: kubeadm stops, starts and restarts "the kubelet" through systemctl, and on a
  sandbox node that must never reach the machine's init system (a real kubelet running here
  would be stopped). It answers for the kubelet — kwok runs the node's — and refuses the rest.

The mounts live only as long as the command: nothing is left behind to clean up. Pure planning
(:func:`plan`) and one ``exec`` (:func:`argv`); the CLI replaces itself with it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from kubecare.errors import SandboxError, UsageError

#: (the node tree's dir, where the command sees it)
BINDS = (
    ("etc/kubernetes", "/etc/kubernetes"),
    ("var/lib/etcd", "/var/lib/etcd"),
    ("var/lib/kubelet", "/var/lib/kubelet"),
)
OVERLAYS = ("/etc", "/var/lib")
BIN = "usr/local/bin"

SYSTEMCTL = """#!/bin/sh
# kubecare sandbox node: this node's kubelet is kwok's, and nothing here may reach the
# machine's init system.
case " $* " in
  *" daemon-reload "*|*" kubelet "*|*" kubelet.service "*)
    echo "kubecare sandbox: systemctl $* (node $KUBECARE_SANDBOX_NODE: its kubelet is run by kwok)" >&2
    exit 0 ;;
esac
echo "kubecare sandbox: systemctl $* is not available on a sandbox node" >&2
exit 1
"""


@dataclass(frozen=True)
class NodeView:
    node: str
    root: Path  # nodes/<node>
    env: tuple[tuple[str, str], ...]

    @property
    def bin(self) -> Path:
        return self.root / BIN

    @property
    def scratch(self) -> Path:
        return self.root / ".ns"

    def script(self) -> str:
        """The shell run inside the new mount namespace before ``exec "$@"``."""
        q = shlex.quote
        lines = [
            'fail() { echo "kubecare sandbox exec: cannot $1 (a private mount namespace '
            'needs root and overlayfs); nothing was changed" >&2; exit 125; }',
            "mount --make-rprivate / || fail 'make the mounts private'",
        ]
        for target in OVERLAYS:
            layer = self.scratch / target.strip("/").replace("/", "-")
            up, work = layer / "upper", layer / "work"
            lines.append(
                f"mount -t overlay kubecare-{self.node} "
                f"-o lowerdir={q(target)},upperdir={q(str(up))},workdir={q(str(work))} {q(target)}"
                f" || fail {q('overlay ' + target)}"
            )
        for rel, target in BINDS:
            lines.append(
                f"mkdir -p {q(target)} && mount --bind {q(str(self.root / rel))} {q(target)}"
                f" || fail {q('mount the node tree on ' + target)}"
            )
        lines.append('exec "$@"')
        return "\n".join(lines)


def plan(node: str, root: Path, *, etcd_client_port: int | None, sandbox: str) -> NodeView:
    """The view of ``node`` (its tree at ``root``); refuses a state dir the overlays would hide."""
    resolved = root.resolve()
    for target in OVERLAYS:
        if resolved == Path(target) or Path(target) in resolved.parents:
            raise SandboxError(
                f"the sandbox's state dir {root} lies under {target}, which `sandbox exec` "
                "overlays; move it with KUBECARE_STATE_DIR (e.g. under /srv or your home)"
            )
    env = [
        ("KUBECONFIG", "/etc/kubernetes/admin.conf"),
        ("KUBECARE_SANDBOX_NODE", node),
        ("PS1", f"({sandbox}) root@{node}:\\w# "),
    ]
    if etcd_client_port is not None:
        # The sandbox's members listen on ports of their own (one machine), not on 2379: etcdctl
        # without --endpoints finds this node's member.
        env.append(("ETCDCTL_ENDPOINTS", f"https://127.0.0.1:{etcd_client_port}"))
    return NodeView(node, root, tuple(env))


def prepare(view: NodeView) -> None:
    """The dirs the mounts need (inside the node's tree only)."""
    for rel, _ in BINDS:
        (view.root / rel).mkdir(parents=True, exist_ok=True)
    for target in OVERLAYS:
        layer = view.scratch / target.strip("/").replace("/", "-")
        for part in ("upper", "work"):
            (layer / part).mkdir(parents=True, exist_ok=True)
    view.bin.mkdir(parents=True, exist_ok=True)
    shim = view.bin / "systemctl"
    if not shim.exists() or shim.read_text() != SYSTEMCTL:
        from kubecare.files import write_atomic

        write_atomic(shim, SYSTEMCTL, mode=0o755)


def link(view: NodeView, name: str, target: Path) -> None:
    """``usr/local/bin/<name>`` -> ``target``, replaced atomically (as a package upgrade does)."""
    view.bin.mkdir(parents=True, exist_ok=True)
    tmp = view.bin / f".{name}.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, view.bin / name)


def argv(view: NodeView, command: list[str], *, unshare: str) -> list[str]:
    if not command:
        raise UsageError("give the command to run on the node: kubecare sandbox exec NODE -- CMD")
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", view.script(), "sh",
            *command]  # fmt: skip


def environment(view: NodeView, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(view.env)
    env["PATH"] = f"{view.bin}:{base.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    return env
