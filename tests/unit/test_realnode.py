"""Real nodes' pure planning: their configs, addresses, join configuration and images."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from kubecare.errors import SandboxError
from kubecare.sandbox import images, realnode
from kubecare.sandbox.realnode import RealNodeSpec


def spec(index: int = 1) -> RealNodeSpec:
    return RealNodeSpec(
        name="real-2", sandbox="sb", index=index, root="/srv/sb/nodes/real-2",
        gateway="192.0.2.10", prefix=24, kubelet="/srv/sb/nodes/real-2/usr/local/bin/kubelet",
        containerd="/c/node", cni_bin="/c/node", runc="/usr/sbin/runc", images=["/x/pause.tar"],
    )  # fmt: skip


def test_addresses_and_pod_ranges_never_overlap_and_stay_in_the_documentation_ranges() -> None:
    ips = [realnode.node_ip(i) for i in range(realnode.MAX_REAL_NODES)]
    cidrs = [realnode.pod_cidr(i) for i in range(realnode.MAX_REAL_NODES)]
    assert ips[0] == "192.0.2.101" and len(set(ips)) == len(ips)
    assert cidrs[0] == "198.51.100.0/27" and cidrs[-1] == "198.51.100.224/27"
    with pytest.raises(SandboxError, match="at most 8"):
        realnode.node_ip(realnode.MAX_REAL_NODES)


def test_the_spec_round_trips_through_its_file() -> None:
    s = spec()
    assert RealNodeSpec.from_json(s.to_json()) == s
    assert s.cgroup == "/kubecare/sb/real-2" and s.ip == "192.0.2.102"


def test_containerd_config_is_toml_with_what_this_machine_needs() -> None:
    conf = tomllib.loads(realnode.containerd_config(spec()))
    assert conf["version"] == 3 and conf["imports"] == []
    runtime = conf["plugins"]["io.containerd.cri.v1.runtime"]
    assert runtime["restrict_oom_score_adj"] is True  # no CAP_SYS_RESOURCE here
    assert runtime["cni"] == {"bin_dirs": ["/c/node"], "conf_dir": "/etc/cni/net.d"}
    runc = runtime["containerd"]["runtimes"]["runc"]["options"]
    assert runc == {"BinaryName": "/usr/sbin/runc", "SystemdCgroup": False}
    pinned = conf["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]
    assert pinned["sandbox"] == images.PAUSE
    assert conf["plugins"]["io.containerd.grpc.v1.cri"]["stream_server_address"] == "127.0.0.1"


def test_cni_config_is_one_bridge_on_the_nodes_own_range_without_masquerade() -> None:
    conf = json.loads(realnode.cni_config(spec(3)))
    (bridge,) = conf["plugins"]
    assert bridge["type"] == "bridge" and bridge["ipMasq"] is False
    (rng,) = bridge["ipam"]["ranges"][0]
    assert rng == {"subnet": "198.51.100.96/27", "gateway": "198.51.100.97"}


def test_the_kubelet_runs_as_kubeadms_drop_in_starts_it() -> None:
    flags = 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10.2"\n'
    extra = realnode.kubelet_defaults(spec())
    argv = realnode.kubelet_argv("/k/kubelet", flags, extra)
    assert argv == [
        "/k/kubelet",
        "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
        "--kubeconfig=/etc/kubernetes/kubelet.conf",
        "--config=/var/lib/kubelet/config.yaml",
        "--container-runtime-endpoint=unix:///run/containerd/containerd.sock",
        "--pod-infra-container-image=registry.k8s.io/pause:3.10.2",
        "--node-ip=192.0.2.102",
        "--cgroup-root=/kubecare/sb/real-2",
    ]
    # an empty or missing environment file adds nothing (systemd's "-" prefix)
    assert realnode.kubelet_argv("/k", "", "") == realnode.kubelet_argv("/k", "# x\n", "")
    assert realnode.kubelet_argv("/k", 'KUBELET_KUBEADM_ARGS="unclosed\n', "")[4:] == []


def test_the_join_configuration_is_kubeadms_worker_join_with_the_taint() -> None:
    conf = realnode.join_configuration("192.0.2.11:6443", "abcdef.0123456789abcdef",
                                       "sha256:00", "real-1")  # fmt: skip
    assert conf["kind"] == "JoinConfiguration" and "controlPlane" not in conf
    assert conf["discovery"]["bootstrapToken"]["caCertHashes"] == ["sha256:00"]
    assert conf["nodeRegistration"]["taints"] == [realnode.TAINT]
    assert realnode.TOLERATION["key"] == realnode.TAINT["key"]


def test_the_switch_plugs_the_nodes_cable_into_its_namespace() -> None:
    assert realnode.switch_script(2, 4242).splitlines() == [
        "link add vreal2 type veth peer name eth0 netns 4242",
        "link set vreal2 master br0",
        "link set vreal2 up",
    ]
    net = realnode.network_script(spec())
    assert "addr add 192.0.2.102/24 dev eth0" in net and "via 192.0.2.10" in net


def test_the_kernel_tunables_are_the_ones_the_kubelet_checks() -> None:
    # pkg/kubelet/cm/container_manager_linux.go setupKernelTunables and
    # component-helpers/node/util/sysctl: the flag names and the values it wants
    assert realnode.KERNEL_TUNABLES == {
        "vm/overcommit_memory": "1",
        "vm/panic_on_oom": "0",
        "kernel/panic": "10",
        "kernel/panic_on_oops": "1",
        "kernel/keys/root_maxkeys": "1000000",
        "kernel/keys/root_maxbytes": "25000000",
    }


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_an_image_is_a_valid_oci_layout_whose_digests_match(tmp_path: Path) -> None:
    program = tmp_path / "prog"
    program.write_bytes(b"\x7fELF program")
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF busybox")
    cat = images.catalogue(program, busybox)
    assert [i.ref for i in cat] == [images.PAUSE, images.HTTP, images.TOOLS]
    data = images.layout(cat[2])
    assert images.layout(cat[2]) == data  # deterministic: the same image, the same digests
    files = _members(data)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["annotations"]["io.containerd.image.name"] == images.TOOLS

    def blob(digest: str) -> bytes:
        body = files[f"blobs/sha256/{digest.removeprefix('sha256:')}"]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        return body

    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    (layer_desc,) = manifest["layers"]
    layer = blob(layer_desc["digest"])
    assert config["rootfs"]["diff_ids"] == [layer_desc["digest"]]  # uncompressed: same digest
    assert config["config"]["Entrypoint"] == ["/bin/sh"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        names = {m.name: m for m in tar}
    assert names["bin/busybox"].mode == 0o755
    assert names["bin/sh"].issym() and names["bin/sh"].linkname == "busybox"
    assert names["tmp"].isdir() and names["tmp"].mode == 0o1777


LDD = """\tlinux-vdso.so.1 (0x00007ffd8f3f5000)
\tlibxtables.so.12 => /lib/x86_64-linux-gnu/libxtables.so.12 (0x00007f7a92160000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f7a91f43000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f7a92228000)
\tlibgone.so.1 => not found
"""


def test_the_libraries_ldd_names_are_the_ones_an_image_needs() -> None:
    assert images.ldd_paths(LDD) == [
        "/lib/x86_64-linux-gnu/libxtables.so.12",
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
    ]
    files = images.closure([Path("/usr/sbin/xtables-nft-multi")], lambda _p: LDD)
    # at the paths the loader looks, whatever symlinks lead there on this machine
    assert set(files) == {
        "usr/sbin/xtables-nft-multi",
        "lib/x86_64-linux-gnu/libxtables.so.12",
        "lib/x86_64-linux-gnu/libc.so.6",
        "lib64/ld-linux-x86-64.so.2",
    }


def test_kube_proxy_runs_from_kubeadms_path_with_iptables_beside_it(tmp_path: Path) -> None:
    proxy = tmp_path / "kube-proxy"
    proxy.write_bytes(b"\x7fELF")
    image = images.kube_proxy("1.37.2", proxy, lambda _p: "")
    assert image.ref == "registry.k8s.io/kube-proxy:v1.37.2"
    assert image.entrypoint == ("/usr/local/bin/kube-proxy",)
    assert image.files["usr/local/bin/kube-proxy"] == proxy
    assert image.links["usr/sbin/iptables-restore"] == "xtables-nft-multi"
    assert realnode.KUBE_PROXY_CONFIGURATION["conntrack"] == {"maxPerCore": 0, "min": 0}


def test_missing_machine_dependencies_are_named_with_their_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kubecare.sandbox import realnodes

    monkeypatch.setattr(realnodes, "RUNC", str(tmp_path / "no-runc"))
    with pytest.raises(SandboxError) as e:
        realnodes.check_deps()
    msg = str(e.value)
    assert "no-runc" in msg and "make real-node-deps" in msg and "\n" not in msg


def test_cgroup_roots_of_two_sandboxes_never_collide() -> None:
    # "a" + node "b-x" and "a-b" + node "x" were one path when names were joined by dashes
    assert realnode.cgroup_root("a", "b-x") != realnode.cgroup_root("a-b", "x")
    assert realnode.cgroup_root("lab", "real-1") == "/kubecare/lab/real-1"
