"""The sandbox's network plan, the host's way to a node's addresses, and the nodes' CRI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kubecare.errors import SandboxError
from kubecare.sandbox import cri, network
from kubecare.sandbox.executor import cgroup_v1, check_kubeadm, failure, kubeadm_line
from kubecare.sandbox.target import host_address
from kubecare.upgrade.plan import CONTROL_PLANE, FIRST_CONTROL_PLANE, WORKER, NodeStep


def test_every_node_gets_its_own_address_on_the_switch() -> None:
    assert [network.node_ip(i) for i in range(3)] == ["192.0.2.11", "192.0.2.12", "192.0.2.13"]
    with pytest.raises(SandboxError):
        network.node_ip(network.MAX_CONTROL_PLANES)
    switch = network.switch_script([(0, 101), (1, 102)]).splitlines()
    assert switch[:4] == [
        "link set lo up",
        "link add br0 type bridge",
        "addr add 192.0.2.10/24 dev br0",
        "link set br0 up",
    ]
    # each veth's far end moves into its node's namespace (by the holder's pid) as eth0
    assert "link add veth1 type veth peer name eth0 netns 102" in switch
    assert "link set veth1 master br0" in switch
    node = network.node_script("192.0.2.12").splitlines()
    assert node == [
        "link set lo up",
        "addr add 192.0.2.12/24 dev eth0",
        "link set eth0 up",
        "route add default via 192.0.2.10",  # kubeadm picks the default route's interface
    ]
    # no address outside TEST-NET-1 (and the scripts run only inside the new namespaces)
    assert all("192." not in ln or "192.0.2." in ln for ln in switch + node)


@pytest.mark.parametrize(
    ("url", "want"),
    [
        ("https://127.0.0.1:2379", "https://127.0.0.1:30001"),
        ("https://192.0.2.11:2379", "https://127.0.0.1:30001"),  # the node's own address
        ("http://127.0.0.1:2381/readyz", "http://127.0.0.1:30002/readyz"),
        ("https://localhost:10257/healthz", "https://127.0.0.1:30003/healthz"),
        ("127.0.0.1:2379", "127.0.0.1:30001"),  # host:port, as etcdctl takes it
        ("https://192.0.2.12:2379", "https://192.0.2.12:2379"),  # another node: not ours
        ("https://[::1]:2379", "https://127.0.0.1:30001"),
        ("https://10.0.0.5:2379", "https://10.0.0.5:2379"),  # not a sandbox address
        ("https://127.0.0.1:bad", "https://127.0.0.1:bad"),
    ],
)
def test_the_host_reaches_a_nodes_ports_through_their_forwards(url: str, want: str) -> None:
    forwards = {2379: 30001, 2381: 30002, 10257: 30003}
    assert host_address(url, ["192.0.2.11"], forwards) == want


@pytest.mark.parametrize("url", ["https://127.0.0.1:9999", "https://192.0.2.11:2380"])
def test_a_node_port_nothing_forwards_is_refused_not_dialled(url: str) -> None:
    from kubecare.errors import EtcdError

    with pytest.raises(EtcdError, match="is not forwarded to the host"):
        host_address(url, ["192.0.2.11"], {2379: 30001})


def test_protobuf_fields_round_trip() -> None:
    spec = cri.field(1, "registry.k8s.io/kube-apiserver:v1.37.2")
    request = cri.field(1, spec)  # ImageStatusRequest{image: ImageSpec{image: ...}}
    assert cri.image_of(request) == "registry.k8s.io/kube-apiserver:v1.37.2"
    big = cri.varint_field(4, 300_000_000)
    assert cri.fields(big) == {4: [300_000_000]}
    with pytest.raises(ValueError, match="truncated"):
        cri.fields(b"\x0a\x05ab")  # a length past the end
    assert cri.image_of(b"") == ""


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("registry.k8s.io/kube-apiserver:v1.37.2", ("kube-apiserver", "v1.37.2")),
        ("registry.k8s.io/etcd:3.7.0-0", ("etcd", "3.7.0-0")),
        ("localhost:5000/kube-scheduler", ("kube-scheduler", "latest")),
        ("registry.k8s.io/coredns/coredns:v1.14.2", ("coredns", "v1.14.2")),
    ],
)
def test_image_references_name_the_component_and_tag(ref: str, want: tuple[str, str]) -> None:
    assert cri.split_image(ref) == want


def test_a_control_plane_image_exists_when_its_binary_is_built(tmp_path: Path) -> None:
    binary = tmp_path / "kube-apiserver"
    binary.write_bytes(b"x" * 123)

    def resolve(component: str, tag: str) -> str:
        if tag != "v1.37.2":
            raise RuntimeError(f"{component}:{tag} is not built; run: kubecare sandbox build")
        return str(binary)

    assert cri.lookup("registry.k8s.io/kube-apiserver:v1.37.2", resolve) == (123, "")
    size, why = cri.lookup("registry.k8s.io/kube-apiserver:v1.38.0", resolve)
    assert size == 0 and "kubecare sandbox build" in why
    # kwok runs these pods: nothing to build, always there
    assert cri.lookup("registry.k8s.io/kube-proxy:v1.99.0", resolve) == (1, "")
    assert cri.lookup("registry.k8s.io/pause:3.10.1", resolve) == (1, "")


def test_the_runtime_answers_over_grpc_as_the_cri_client_asks(tmp_path: Path) -> None:
    """Version (the client's check), ImageFsInfo (the image API's), ImageStatus, PullImage."""
    import grpc

    def resolve(component: str, tag: str) -> str:
        if tag != "v1.37.2":
            raise RuntimeError(f"image {component}:{tag} is not built")
        return __file__

    async def main() -> None:
        sock = tmp_path / "cri.sock"
        server = await cri.serve(str(sock), cri.Runtime(resolve))
        try:
            async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:

                def call(method: str) -> grpc.aio.UnaryUnaryMultiCallable:
                    return ch.unary_unary(method)

                version = cri.fields(await call("/runtime.v1.RuntimeService/Version")(b""))
                assert version[2] == [b"kubecare-sandbox"] and version[4] == [b"v1"]
                assert await call("/runtime.v1.ImageService/ImageFsInfo")(b"") == b""
                good = cri.field(1, cri.field(1, "registry.k8s.io/kube-apiserver:v1.37.2"))
                image = cri.fields(await call("/runtime.v1.ImageService/ImageStatus")(good))[1][0]
                assert isinstance(image, bytes)
                assert cri.fields(image)[4][0] == Path(__file__).stat().st_size
                bad = cri.field(1, cri.field(1, "registry.k8s.io/kube-apiserver:v1.38.0"))
                assert await call("/runtime.v1.ImageService/ImageStatus")(bad) == b""
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call("/runtime.v1.ImageService/PullImage")(bad)
                assert info.value.code() == grpc.StatusCode.NOT_FOUND
                assert "not built" in (info.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call("/runtime.v1.RuntimeService/RunPodSandbox")(b"")
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(0)

    asyncio.run(main())


def step(node: str, role: str) -> NodeStep:
    return NodeStep(node=node, role=role, batch=1, changes=())


def test_the_kubeadm_line_of_each_role() -> None:
    first = kubeadm_line(step("cp1", FIRST_CONTROL_PLANE), "1.37.2", v1=False)
    assert first == ["kubeadm", "upgrade", "apply", "v1.37.2", "--yes"]
    assert kubeadm_line(step("cp2", CONTROL_PLANE), "1.37.2", v1=False) == [
        "kubeadm", "upgrade", "node",
    ]  # fmt: skip
    # on cgroup v1, kubeadm's own message: "You must also explicitly skip this validation"
    worker = kubeadm_line(step("w1", WORKER), "1.37.2", v1=True)
    assert worker[-1] == "--ignore-preflight-errors=SystemVerification"


def test_cgroup_v1_is_a_root_without_the_unified_hierarchy(tmp_path: Path) -> None:
    assert cgroup_v1(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert not cgroup_v1(tmp_path)


@pytest.mark.parametrize(
    ("output", "first", "also"),
    [
        # a rolled-back control plane: kubeadm's FATAL line and its error line
        (
            [
                "[upgrade/staticpods] Moving new manifest to ...",
                "[upgrade/apply] FATAL: couldn't upgrade control plane. kubeadm has tried to "
                "recover everything into the earlier state. Errors faced: timed out waiting for "
                "the condition",
                "error: error execution phase control-plane: couldn't complete the static pod "
                "upgrade",
            ],
            "[upgrade/apply] FATAL",
            "error execution phase",
        ),
        # a preflight failure: the reason is on kubeadm's [ERROR ...] lines, not its last one
        (
            [
                "[preflight] Some fatal errors occurred:",
                "\t[ERROR ImagePull]: failed to pull image registry.k8s.io/kube-apiserver:v1.38.0: "
                "image is not built; run: kubecare sandbox build --version 1.38.0",
                "error: error execution phase preflight: preflight checks failed",
            ],
            "[ERROR ImagePull]",
            "kubecare sandbox build",
        ),
    ],
)
def test_a_kubeadm_failure_is_told_in_kubeadms_own_words(
    output: list[str], first: str, also: str
) -> None:
    text = failure(output, 1)
    assert text.startswith(first) and also in text


def test_a_failure_without_kubeadms_words_is_its_last_line_or_exit_code() -> None:
    assert failure(["just this"], 2) == "just this" and failure([], 3) == "exit code 3"


def test_a_sandbox_nodes_manifests_dir_is_reached_through_its_forwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from kubecare.sandbox.target import api_addresses, etcd_target, owner, reach_for

    monkeypatch.setenv("KUBECARE_STATE_DIR", str(tmp_path))
    manifests = tmp_path / "lab" / "nodes" / "cp1" / "etc" / "kubernetes" / "manifests"
    manifests.mkdir(parents=True)
    cp = {"node": "cp1", "ip": "192.0.2.11", "manifests": str(manifests),
          "forward": {"2379": 31001, "6443": 31002}}  # fmt: skip
    (tmp_path / "lab" / "state.json").write_text(json.dumps({"control_planes": [cp]}))
    assert owner(manifests) == "lab" and owner(tmp_path / "elsewhere") is None
    dirs, reach, trees = etcd_target("lab")
    assert dirs == [manifests]
    # kubeadm's paths inside the node's tree; the sandbox's own (state dir) paths as they are
    root = manifests.parents[2]
    assert trees(manifests).local(Path("/etc/kubernetes/pki/etcd/ca.crt")) == (
        root / "etc/kubernetes/pki/etcd/ca.crt"
    )
    assert trees(manifests).local(root / "var/lib/etcd") == root / "var/lib/etcd"
    assert trees(tmp_path / "real").root is None  # not a sandbox node: paths as written
    # the same dir however it is spelled (a relative path, a link)
    link = tmp_path / "link"
    link.symlink_to(manifests)
    assert reach(link, "https://127.0.0.1:2379") == "https://127.0.0.1:31001"
    assert reach(tmp_path / "other", "https://127.0.0.1:2379") == "https://127.0.0.1:2379"
    # mixed dirs: each one its own way
    mixed = reach_for([manifests, tmp_path / "real"])
    assert mixed(manifests, "https://127.0.0.1:2379") == "https://127.0.0.1:31001"
    assert mixed(tmp_path / "real", "https://127.0.0.1:2379") == "https://127.0.0.1:2379"
    assert api_addresses("lab") == (("192.0.2.11:6443", "127.0.0.1:31002"),)
    assert api_addresses("nosuch") == ()


def test_a_kubeadm_of_another_version_stops_the_node_before_kubeadm_runs() -> None:
    from kubecare.errors import OperationFailed

    check_kubeadm(["v1.37.2"], "1.37.2", "cp1", "lab")
    for said in (["v1.36.3"], [], ["v1.37.2", "extra"]):
        with pytest.raises(OperationFailed, match=r"not v1\.37\.2; nothing was changed") as info:
            check_kubeadm(said, "1.37.2", "cp1", "lab")
        assert "kubecare sandbox install --name lab cp1 kubeadm 1.37.2" in info.value.message


def test_a_dir_in_a_sandbox_but_in_no_node_tree_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its manifests name kubeadm's paths (/etc/kubernetes/pki, /var/lib/etcd): read as the
    machine's own they would lead a restore to the machine's /var/lib."""
    import json

    from kubecare.errors import EtcdError
    from kubecare.sandbox.target import trees_for

    monkeypatch.setenv("KUBECARE_STATE_DIR", str(tmp_path))
    node = tmp_path / "lab" / "nodes" / "cp1"
    (node / "etc" / "kubernetes" / "copy").mkdir(parents=True)
    (tmp_path / "lab" / "copies").mkdir()
    (tmp_path / "lab" / "state.json").write_text(json.dumps({"control_planes": []}))
    tree = trees_for([node / "etc" / "kubernetes" / "copy"])(node / "etc" / "kubernetes" / "copy")
    assert tree.root == node.resolve()  # any dir inside a node's tree is that node's
    with pytest.raises(EtcdError, match=r"in no node's tree.*nodes/<node>/"):
        trees_for([tmp_path / "lab" / "copies"])


def test_the_sandboxs_etcdutl_is_the_oldest_minor_its_members_run() -> None:
    from kubecare.sandbox.binaries import binary_path
    from kubecare.sandbox.target import etcdutl_for

    old, new = "registry.k8s.io/etcd:3.6.8-0", "registry.k8s.io/etcd:3.7.0-0"
    assert etcdutl_for([new, old, new]) == binary_path("etcdutl", "3.6.16")  # mid-upgrade
    assert etcdutl_for([new]) == binary_path("etcdutl", "3.7.4")
    assert etcdutl_for(["registry.k8s.io/etcd:3.5.0-0", "x"]) is None
