"""A node's own view of the machine: what ``kubecare sandbox exec NODE -- CMD`` runs CMD in.

A control-plane node's tree lives in the sandbox's state dir (``nodes/<node>/etc/kubernetes``,
``var/lib/etcd``, ``var/lib/kubelet``). The course's commands name kubeadm's real paths
(``kubeadm certs check-expiration`` reads ``/etc/kubernetes/pki``; ``etcdutl snapshot restore
--data-dir /var/lib/etcd-from-backup``), so the command runs in a private mount namespace
(``unshare --mount``, root) where:

- ``/etc`` and ``/var`` are overlays on the machine's own whose upper layers are the node's
  ``etc/`` and ``var/``: the node's files appear at kubeadm's paths, and whatever the command
  writes there lands in the node's tree — exactly where the static pod runner maps the same
  hostPath (``/var/lib/etcd-from-backup`` is ``nodes/<node>/var/lib/etcd-from-backup`` for
  both) — never in the machine's real ``/etc`` or ``/var``. ``/tmp`` stays the machine's (the
  course's ``mv kube-apiserver.yaml /tmp/`` must survive the shell; test sandboxes live there);
- ``/run`` is an empty tmpfs: no socket of the machine's (systemd, D-Bus, containerd) is in
  reach, so nothing typed on the node stops a real service through them. The node's own
  container runtime is: ``/run/containerd/containerd.sock`` links the sandbox's CRI socket
  (:mod:`kubecare.sandbox.cri`), which kubeadm's preflight asks;
- the node's ``usr/local/bin`` comes first on PATH: ``kubeadm`` (the version installed on that
  node: ``sandbox install``), ``kubectl``, ``etcdctl``, ``etcdutl``, and a ``systemctl`` of the
  node's own, also mounted over ``/usr/bin/systemctl``: kubeadm stops, starts and restarts "the
  kubelet" through systemctl, and a sandbox node's kubelet is kwok's. It answers for the kubelet
  and refuses the rest. A ``kubelet`` of the node's too: ``kubelet --version`` says the version
  the node runs (kubeadm's preflight asks it), and nothing else runs.

The command also runs in the node's network namespace (:mod:`kubecare.sandbox.network`): its
``127.0.0.1:2379`` is the node's own etcd member and ``192.0.2.x:6443`` its apiserver, as on a
real node, so etcdctl's and kubeadm's defaults just work. Processes are the machine's: it is a
view, not a container. The mounts live only as long as the command: nothing is left behind. Pure planning
(:func:`plan`) and one ``exec`` (:func:`argv`); the CLI replaces itself with it.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from kubecare.errors import SandboxError, UsageError

#: the machine's dirs the node's tree is laid over (its upper layer: the same path in the tree)
OVERLAYS = ("/etc", "/var")
#: made in the node's tree so a fresh node has them at kubeadm's paths; bound over the overlays,
#: so they hold the node's files only
NODE_DIRS = ("etc/kubernetes", "var/lib/etcd", "var/lib/kubelet")
BIN = "usr/local/bin"

#: Where the node's ``systemctl (re)start kubelet`` leaves its mark (in the node's tree): the
#: runner, the node's kubelet for its static pods, rereads ``var/lib/kubelet/config.yaml`` then,
#: as a kubelet reads its configuration when it starts.
KUBELET_STARTS = ".ns/kubelet-starts"

#: The kubelet unit's wanted state, "running" or "stopped" (``systemctl start|stop kubelet``):
#: a real node's init follows it (:mod:`kubecare.sandbox.nodeinit`).
KUBELET_WANTED = ".ns/kubelet-wanted"

SYSTEMCTL = """#!/bin/sh
# kubecare sandbox node: its kubelet is the sandbox's (kwok's, or a real one its init runs; a
# control plane's static pods the runner's), and nothing here may reach the machine's init
# system.
case " $* " in
  *" kubelet "*|*" kubelet.service "*)
    case " $* " in
      *" start "*|*" restart "*|*" try-restart "*|*" reload-or-restart "*)
        # the runner rereads var/lib/kubelet/config.yaml, as a starting kubelet does; a real
        # node's init restarts its kubelet
        echo running > {wanted}.tmp && mv -f {wanted}.tmp {wanted}
        date +%s%N > {starts}.tmp && mv -f {starts}.tmp {starts} ;;
      *" stop "*)
        echo stopped > {wanted}.tmp && mv -f {wanted}.tmp {wanted} ;;
    esac
    echo "kubecare sandbox: systemctl $* (node $KUBECARE_SANDBOX_NODE)" >&2
    exit 0 ;;
  *" daemon-reload "*)
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
    netns: str | None = None  # /proc/<holder>/ns/net of the node (None: the machine's network)
    cri: Path | None = None  # the sandbox's CRI socket, linked at containerd's path
    # a real node's running namespaces (``nsenter -t INIT ...``): entered as they are, not
    # made for the command (its mounts, its containerd, its processes)
    enter: tuple[str, ...] | None = None

    @property
    def bin(self) -> Path:
        return self.root / BIN

    @property
    def scratch(self) -> Path:
        """Overlay work dirs (overlayfs needs an empty dir on the upper layer's file system)."""
        return self.root / ".ns"

    def work(self, target: str) -> Path:
        return self.scratch / f"{target.strip('/').replace('/', '-')}-work"

    def script(self) -> str:
        """The shell run inside the new mount namespace before ``exec "$@"``."""
        q = shlex.quote
        lines = [
            'fail() { echo "kubecare sandbox exec: cannot $1 (a private mount namespace '
            'needs root and overlayfs); nothing was changed" >&2; exit 125; }',
            "mount --make-rprivate / || fail 'make the mounts private'",
        ]
        for target in OVERLAYS:
            up, work = self.root / target.strip("/"), self.work(target)
            lines.append(
                f"mount -t overlay kubecare-{self.node} "
                f"-o lowerdir={q(target)},upperdir={q(str(up))},workdir={q(str(work))} {q(target)}"
                f" || fail {q('overlay ' + target)}"
            )
        for rel in NODE_DIRS:
            # The node's own, not merged with the machine's: on a machine that is a kubeadm node
            # itself, /etc/kubernetes/pki would otherwise show its CA to the node's kubeadm.
            own, target = q(str(self.root / rel)), q("/" + rel)
            lines.append(f"mount --bind {own} {target} || fail {q('bind ' + '/' + rel)}")
        lines.append(
            f"mount -t tmpfs -o mode=755 kubecare-{self.node}-run /run || fail 'mount /run'"
        )
        if self.cri is not None:
            lines.append(
                "mkdir -p /run/containerd && "
                f"ln -s {q(str(self.cri))} /run/containerd/containerd.sock "
                "|| fail 'link the CRI socket'"
            )
        shim = q(str(self.bin / "systemctl"))
        lines.append(
            "if [ -e /usr/bin/systemctl ]; then "
            f"mount --bind {shim} /usr/bin/systemctl || fail 'cover /usr/bin/systemctl'; fi"
        )
        lines.append('exec "$@"')
        return "\n".join(lines)


def plan(
    node: str,
    root: Path,
    *,
    sandbox: str,
    netns: str | None = None,
    cri: Path | None = None,
) -> NodeView:
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
    return NodeView(node, root, tuple(env), netns, cri)


def prepare(view: NodeView) -> None:
    """The dirs the mounts need (inside the node's tree only)."""
    for rel in NODE_DIRS:
        (view.root / rel).mkdir(parents=True, exist_ok=True)
    for target in OVERLAYS:
        view.work(target).mkdir(parents=True, exist_ok=True)
    view.bin.mkdir(parents=True, exist_ok=True)
    shim = view.bin / "systemctl"
    text = SYSTEMCTL.format(
        starts=shlex.quote(str(view.root / KUBELET_STARTS)),
        wanted=shlex.quote(str(view.root / KUBELET_WANTED)),
    )
    if not shim.exists() or shim.read_text() != text:
        from kubecare.files import write_atomic

        write_atomic(shim, text, mode=0o755)


KUBELET = """#!/bin/sh
# kubecare sandbox node: its kubelet is kwok's; this answers what kubeadm asks of the binary.
case "$1" in
  --version|version) echo "Kubernetes v{version}"; exit 0 ;;
esac
echo "kubecare sandbox: node $KUBECARE_SANDBOX_NODE runs kubelet v{version} (kwok's); it is not started by hand" >&2
exit 1
"""


def kubelet(view: NodeView, version: str) -> None:
    """The node's ``kubelet`` stand-in, reporting ``version`` (what the node runs)."""
    from kubecare.files import write_atomic

    text = KUBELET.format(version=version)
    shim = view.bin / "kubelet"
    if not shim.exists() or shim.read_text() != text:
        write_atomic(shim, text, mode=0o755)


def link(view: NodeView, name: str, target: Path) -> None:
    """``usr/local/bin/<name>`` -> ``target``, replaced atomically (as a package upgrade does)."""
    view.bin.mkdir(parents=True, exist_ok=True)
    tmp = view.bin / f".{name}.new"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, view.bin / name)


def tools() -> tuple[str, str]:
    """The paths of unshare and nsenter (util-linux), or a SandboxError naming the package."""
    import shutil

    unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
    if unshare is None or nsenter is None:
        raise SandboxError(
            "unshare/nsenter not found: install util-linux (apt-get install util-linux)"
        )
    return unshare, nsenter


def argv(
    view: NodeView, command: list[str], *, unshare: str, nsenter: str = "nsenter"
) -> list[str]:
    """What to exec: ``[nsenter --net=NODE --] unshare --mount ... sh -c SCRIPT sh CMD...``."""
    if not command:
        raise UsageError("give the command to run on the node: kubecare sandbox exec NODE -- CMD")
    if view.enter is not None:
        return [*view.enter, *command]
    net = [nsenter, f"--net={view.netns}", "--"] if view.netns else []
    return [*net, unshare, "--mount", "--propagation", "private", "sh", "-c", view.script(), "sh",
            *command]  # fmt: skip


def environment(view: NodeView, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(view.env)
    env["PATH"] = f"{view.bin}:{base.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    return env


def check_views(scratch: Path) -> None:
    """Refuse early when this machine cannot make a node's view: kubeadm writes every node's
    tree in one (a private mount namespace with overlays), so ``sandbox up`` needs it before
    it writes anything. A trial overlay in a scratch dir under ``scratch``, removed after."""
    import subprocess
    import tempfile

    unshare, _ = tools()
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".view-check-", dir=scratch) as tmp:
        dirs = [Path(tmp) / d for d in ("lower", "upper", "work", "merged")]
        for d in dirs:
            d.mkdir()
        lower, upper, work, merged = (shlex.quote(str(d)) for d in dirs)
        try:
            res = subprocess.run(
                [unshare, "--mount", "--propagation", "private", "sh", "-c",
                 f"mount -t overlay kubecare-check -o lowerdir={lower},upperdir={upper},"
                 f"workdir={work} {merged}"],
                capture_output=True, text=True, timeout=20, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            res = subprocess.CompletedProcess([], 1, "", str(e))
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SandboxError(
            "kubecare sandbox up cannot make a node's view here (a private mount namespace with "
            f"overlayfs, where kubeadm writes the node's tree): {why[0]}; it needs root and the "
            "kernel's overlay file system (modprobe overlay), outside a container that forbids "
            "mounts"
        )
