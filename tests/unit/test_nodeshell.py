"""The plan behind `sandbox exec`: which mounts, in which order, and what the command sees."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kubecare.errors import SandboxError, UsageError
from kubecare.sandbox import nodeshell


def test_the_nodes_tree_is_the_upper_layer_of_etc_and_var(tmp_path: Path) -> None:
    """So a path written in the view (/var/lib/etcd-from-backup) is where the runner maps the
    same hostPath: nodes/<node>/var/lib/etcd-from-backup."""
    view = nodeshell.plan("cp1", tmp_path / "cp1", sandbox="lab")
    script = view.script()
    lines = script.splitlines()
    assert (
        f"-o lowerdir=/etc,upperdir={tmp_path}/cp1/etc,workdir={tmp_path}/cp1/.ns/etc-work /etc"
        in script
    )
    assert f"upperdir={tmp_path}/cp1/var,workdir={tmp_path}/cp1/.ns/var-work /var" in script
    assert any("-t tmpfs" in ln and ln.split(" || ")[0].endswith(" /run") for ln in lines)
    # kubeadm's dirs are the node's alone, never merged with a machine's own /etc/kubernetes
    for rel in ("etc/kubernetes", "var/lib/etcd", "var/lib/kubelet"):
        bind = f"mount --bind {tmp_path}/cp1/{rel} /{rel} || fail"
        assert any(ln.startswith(bind) for ln in lines), rel
        overlay = next(i for i, ln in enumerate(lines) if f" /{rel.split('/')[0]} ||" in ln)
        assert overlay < next(i for i, ln in enumerate(lines) if ln.startswith(bind))
    assert f"mount --bind {tmp_path}/cp1/usr/local/bin/systemctl /usr/bin/systemctl" in script
    assert lines[-1] == 'exec "$@"'
    assert all("|| fail" in ln for ln in lines if ln.startswith("mount"))
    env = nodeshell.environment(view, {"PATH": "/usr/bin", "HOME": "/root"})
    assert env["PATH"] == f"{tmp_path}/cp1/usr/local/bin:/usr/bin" and env["HOME"] == "/root"
    assert env["KUBECONFIG"] == "/etc/kubernetes/admin.conf"
    assert "ETCDCTL_ENDPOINTS" not in env  # the node's etcd is on kubeadm's 127.0.0.1:2379


@pytest.mark.parametrize("root", ["/etc/kubecare/cp1", "/var/lib/kubecare/nodes/cp1", "/var"])
def test_a_state_dir_the_overlays_would_hide_is_refused(root: str) -> None:
    with pytest.raises(SandboxError, match="KUBECARE_STATE_DIR"):
        nodeshell.plan("cp1", Path(root), sandbox="lab")


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    view = nodeshell.plan("cp1", tmp_path, sandbox="lab")
    with pytest.raises(UsageError, match="give the command"):
        nodeshell.argv(view, [], unshare="unshare")


def test_the_systemctl_shim_answers_for_the_kubelet_only(tmp_path: Path) -> None:
    view = nodeshell.plan("cp1", tmp_path, sandbox="lab")
    nodeshell.prepare(view)
    shim = str(view.bin / "systemctl")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([shim, *args], capture_output=True, text=True, check=False)

    starts = tmp_path / nodeshell.KUBELET_STARTS
    for ok in (("daemon-reload",), ("is-active", "kubelet.service"), ("stop", "kubelet")):
        assert run(*ok).returncode == 0
    assert not starts.exists()  # only a start makes the runner reread the kubelet config
    wanted = tmp_path / nodeshell.KUBELET_WANTED
    assert wanted.read_text() == "stopped\n"  # a real node's init stops its kubelet
    marks = []
    for start in (("restart", "kubelet"), ("start", "kubelet.service"), ("try-restart", "kubelet")):
        assert run(*start).returncode == 0
        marks.append(starts.read_text())
    assert len(set(marks)) == 3 and not list(starts.parent.glob("*.tmp"))
    assert wanted.read_text() == "running\n"
    for refused in (("stop", "containerd"), ("restart", "kubelet-other"), ("poweroff",)):
        res = run(*refused)
        assert res.returncode == 1 and "not available on a sandbox node" in res.stderr


def test_link_replaces_a_tool_atomically(tmp_path: Path) -> None:
    view = nodeshell.plan("cp1", tmp_path, sandbox="lab")
    a, b = tmp_path / "kubeadm-a", tmp_path / "kubeadm-b"
    nodeshell.link(view, "kubeadm", a)
    nodeshell.link(view, "kubeadm", b)
    assert (view.bin / "kubeadm").readlink() == b and not list(view.bin.glob(".*"))


def test_the_command_runs_in_the_nodes_network_with_its_runtime_linked(tmp_path: Path) -> None:
    view = nodeshell.plan(
        "cp1", tmp_path, sandbox="lab", netns="/proc/42/ns/net",
        cri=tmp_path / "cri.sock",
    )  # fmt: skip
    argv = nodeshell.argv(view, ["kubeadm", "version"], unshare="/bin/unshare", nsenter="/bin/ns")
    # the network first (nsenter), then the private mount namespace, then the command
    assert argv[:4] == ["/bin/ns", "--net=/proc/42/ns/net", "--", "/bin/unshare"]
    assert argv[-2:] == ["kubeadm", "version"]
    script = view.script()
    # the runtime link comes after /run is the view's own tmpfs (it would hide it otherwise)
    assert script.index("ln -s") > script.index("-t tmpfs")
    assert f"ln -s {tmp_path}/cri.sock /run/containerd/containerd.sock" in script
    # etcd on kubeadm's port in the node's own network: etcdctl's defaults find it
    assert "ETCDCTL_ENDPOINTS" not in dict(view.env)
    plain = nodeshell.plan("cp1", tmp_path, sandbox="lab")
    assert nodeshell.argv(plain, ["true"], unshare="u")[0] == "u"  # no network: the machine's


def test_the_kubelet_stand_in_reports_the_nodes_version_and_runs_nothing(tmp_path: Path) -> None:
    view = nodeshell.plan("cp1", tmp_path, sandbox="lab")
    nodeshell.prepare(view)
    nodeshell.kubelet(view, "1.36.3")
    shim = str(view.bin / "kubelet")
    out = subprocess.run([shim, "--version"], capture_output=True, text=True, check=False)
    # kubeadm's GetKubeletVersion parses "Kubernetes vX.Y.Z"
    assert out.returncode == 0 and out.stdout == "Kubernetes v1.36.3\n"
    run = subprocess.run([shim, "--config", "x"], capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "kwok" in run.stderr
    nodeshell.kubelet(view, "1.37.2")  # after `sandbox install NODE kubelet 1.37.2`
    assert "v1.37.2" in subprocess.run([shim, "--version"], capture_output=True, text=True).stdout


def test_a_machine_that_cannot_make_a_view_is_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "unshare"
    fake.write_text("#!/bin/sh\necho 'mount: /m: permission denied.' >&2\nexit 32\n")
    fake.chmod(0o755)
    monkeypatch.setattr(nodeshell, "tools", lambda: (str(fake), "nsenter"))
    with pytest.raises(SandboxError, match=r"cannot make a node's view.*permission denied"):
        nodeshell.check_views(tmp_path / "state")
    assert list((tmp_path / "state").iterdir()) == []  # the trial dir is gone


def test_this_machine_can_make_a_view(tmp_path: Path) -> None:
    nodeshell.check_views(tmp_path)  # root, overlayfs: what `sandbox up` needs
    assert list(tmp_path.iterdir()) == []
