"""PID 1 of a real sandbox node: it boots the node, keeps its services up, and reaps orphans.

Started by the sandbox as ``unshare --pid --fork --mount --uts --net -- python -m
kubecare.sandbox.nodeinit ROOT`` (ROOT: the node's tree; its ``.ns/node.json`` says the rest,
:class:`~kubecare.sandbox.realnode.RealNodeSpec`). At boot it mounts the node's view, a fresh
``/proc`` and ``/run``, its boot ID; names the host; waits for the cable the sandbox plugs into
its network namespace and gives eth0 the node's address; makes the node's cgroup subtree; starts
containerd and imports the sandbox's images; then runs the kubelet as systemd runs kubeadm's
unit — once ``/var/lib/kubelet/config.yaml`` exists (kubeadm join's kubelet-start writes it),
restarted when it exits (``Restart=always``) and when ``systemctl restart kubelet`` on the node
leaves its mark, stopped while the unit is stopped (``.ns/kubelet-wanted``).

SIGTERM stops the kubelet and containerd (containers keep running until the init exits; then
the kernel kills every process of the namespace). SIGKILL is a power cut. Logs go to stdout (the
sandbox's ``logs/realnode-<name>.log``); the kubelet's and containerd's to their own files in the
node's ``var/log``.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from kubecare.sandbox import realnode
from kubecare.sandbox.nodeshell import KUBELET_STARTS, KUBELET_WANTED, plan, prepare
from kubecare.sandbox.realnode import RealNodeSpec


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} nodeinit: {msg}", flush=True)


def sh(script: str, what: str) -> None:
    done = subprocess.run(["sh", "-ec", script], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"nodeinit: {what} failed: {(done.stderr or done.stdout).strip()}")


class Service:
    """One supervised process (systemd's Restart=always, 2 s apart)."""

    def __init__(self, name: str, log_file: Path) -> None:
        self.name, self.log_file = name, log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_start = 0.0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reaped(self, pid: int, status: int) -> None:
        """The init's reaper took this service's exit status: say it (Popen cannot now)."""
        if self.proc is not None and self.proc.pid == pid:
            log(f"{self.name} exited ({os.waitstatus_to_exitcode(status)}); restarting in 2 s")

    def start(self, argv: list[str]) -> None:
        self.last_start = time.monotonic()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.log_file, "ab") as out:
                self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        except OSError as e:  # a dangling kubelet link: a unit that fails, not a dead node
            log(f"{self.name} cannot start: {e}")
            self.proc = None
            return
        log(f"{self.name} started (pid {self.proc.pid})")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log(f"{self.name} stopped")
        self.proc = None


def boot(spec: RealNodeSpec) -> None:
    root = Path(spec.root)
    view = plan(spec.name, root, sandbox=spec.sandbox)
    prepare(view)
    (root / realnode.CONTAINERD_ROOT).mkdir(parents=True, exist_ok=True)
    (root / realnode.VOLUMES.lstrip("/")).mkdir(parents=True, exist_ok=True)
    q = shlex.quote
    overlays = []
    for target in realnode.EXTRA_OVERLAYS:
        if not Path(target).is_dir():
            continue
        up, work = root / target.strip("/"), root / ".ns" / f"{target.strip('/')}-work"
        up.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        overlays.append(
            f"mount -t overlay kubecare-{spec.name} -o lowerdir={q(target)},upperdir={q(str(up))},"
            f"workdir={q(str(work))} {q(target)}\n"
        )
    boot_id = root / realnode.BOOT_ID
    tunables = root / realnode.SYSCTLS
    binds = []
    for name, value in realnode.KERNEL_TUNABLES.items():
        f = tunables / name.replace("/", ".")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(value + "\n")
        binds.append(f"mount --bind -o ro {q(str(f))} /proc/sys/{name}\n")
    # the system dirs first: the view's binds (the systemctl shim over /usr/bin) go on top
    sh("mount --make-rprivate /\n" + "".join(overlays), "overlaying the node's system dirs")
    sh(view.script().replace('exec "$@"', "true"), "mounting the node's view")
    sh(
        "mount -t proc proc /proc\n"
        + f"mount --bind {q(str(boot_id))} /proc/sys/kernel/random/boot_id\n"
        + "".join(binds)
        + f"mount --bind {q(str(root / realnode.CONTAINERD_ROOT))} /var/lib/containerd\n"
        # the provisioner's volumes: their data in the tree itself, not in an overlay's upper
        # dir, so the runner can remove a reclaimed one from outside (sandbox.localpath)
        + f"mkdir -p {realnode.VOLUMES}\n"
        + f"mount --bind {q(str(root / realnode.VOLUMES.lstrip('/')))} {realnode.VOLUMES}\n"
        # projected volumes (service-account tokens) reach containers only through a shared
        # mount of the kubelet's root dir
        + "mount --make-rshared /var/lib/kubelet\n"
        + "mkdir -p /run/containerd /var/log/pods /var/log/containers /etc/cni/net.d\n",
        "mounting /proc, the boot ID and containerd's root",
    )
    sh(f"hostname {shlex.quote(spec.name)}", "naming the node")
    deadline = time.monotonic() + 30
    while subprocess.run(["ip", "link", "show", "eth0"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("nodeinit: the node's cable (eth0) never arrived")
        time.sleep(0.05)
    done = subprocess.run(
        ["ip", "-batch", "-"], input=realnode.network_script(spec).encode(), capture_output=True
    )
    if done.returncode != 0:
        raise SystemExit(f"nodeinit: network: {done.stderr.decode().strip()}")
    make_cgroups(spec)
    log(f"booted: {spec.ip}, boot id {boot_id.read_text().strip()}")


def make_cgroups(spec: RealNodeSpec) -> None:
    """The node's subtree in every hierarchy, each level made (a new cpuset has no CPUs until
    given its parent's)."""
    top = Path("/sys/fs/cgroup")
    for hierarchy in sorted(p for p in top.iterdir() if p.is_dir()):
        d = hierarchy
        for part in spec.cgroup.strip("/").split("/"):
            d = d / part
            d.mkdir(exist_ok=True)
            if hierarchy.name == "cpuset":
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((d.parent / f).read_text())


def import_images(spec: RealNodeSpec) -> None:
    ctr = [str(Path(spec.containerd) / "ctr"), "-n", "k8s.io"]
    deadline = time.monotonic() + 30
    while subprocess.run([*ctr, "version"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise SystemExit("nodeinit: containerd did not answer within 30s")
        time.sleep(0.1)
    for tar in spec.images:  # an image already there is replaced by the same bytes: quick
        done = subprocess.run([*ctr, "images", "import", tar], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"nodeinit: importing {tar}: {done.stderr.strip()}")
    log("images imported")


def kubelet_argv(spec: RealNodeSpec) -> list[str] | None:
    """The kubelet's command line, or None while kubeadm has not configured it."""
    kubelet = Path("/var/lib/kubelet")
    if not (kubelet / "config.yaml").exists():
        return None

    def text(p: Path) -> str:
        try:
            return p.read_text()
        except OSError:
            return ""

    return realnode.kubelet_argv(
        spec.kubelet, text(kubelet / "kubeadm-flags.env"), text(Path("/etc/default/kubelet"))
    )


def main(root: Path) -> None:
    spec = RealNodeSpec.from_json((root / realnode.SPEC).read_text())
    stopping = False
    booted = False

    def on_term(_sig: int, _frame: object) -> None:
        # PID 1 of a namespace gets only signals it handles. While booting there is nothing
        # to shut down in order: leave at once (the kernel ends the rest).
        nonlocal stopping
        if not booted:
            raise SystemExit(0)
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    boot(spec)
    logs = Path("/var/log")
    containerd = Service("containerd", logs / "containerd.log")
    kubelet = Service("kubelet", logs / "kubelet.log")
    ctd = [str(Path(spec.containerd) / "containerd"), "--config", "/etc/containerd/config.toml"]
    env_path = f"{spec.containerd}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    os.environ["PATH"] = env_path  # containerd finds its shim on PATH
    containerd.start(ctd)
    import_images(spec)
    booted = True
    marks = root / KUBELET_STARTS
    wanted = root / KUBELET_WANTED
    seen_mark = marks.stat().st_mtime_ns if marks.exists() else 0
    while not stopping:
        while True:  # reap: orphaned shims and their children are ours
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            containerd.reaped(pid, status)
            kubelet.reaped(pid, status)
        now = time.monotonic()
        if not containerd.running() and now - containerd.last_start > 2:
            containerd.start(ctd)
        want = not wanted.exists() or wanted.read_text().strip() != "stopped"
        mark = marks.stat().st_mtime_ns if marks.exists() else 0
        if mark != seen_mark:
            seen_mark = mark
            if want:
                kubelet.stop()  # systemctl restart
        if not want:
            kubelet.stop()
        elif not kubelet.running() and now - kubelet.last_start > 2:
            argv = kubelet_argv(spec)
            if argv is not None:
                kubelet.start(argv)
        time.sleep(0.2)
    kubelet.stop()
    containerd.stop()
    log("shut down")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
