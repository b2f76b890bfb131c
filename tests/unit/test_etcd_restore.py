"""Reading etcd's settings from kubeadm's own etcd.yaml (the one kubeadm v1.37.2 writes, in
tests/unit/data) and planning a restore from them: the etcdutl command, the manifest edit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from kubecare.errors import EtcdError, UsageError
from kubecare.etcd.members import Endpoint, Member, parse_member
from kubecare.etcd.membership import (
    Known,
    check_cluster,
    check_distinct,
    check_membership,
    cluster_id,
    member_id,
    parse_initial_cluster,
    union,
)
from kubecare.etcd.restore import RestorePlan, backup_name, plan_restore, pointed_at

DATA = Path(__file__).parent / "data" / "kubeadm-v1.37.2-manifests.txt"
MANIFEST = Path("/etc/kubernetes/manifests/etcd.yaml")


def kubeadm_etcd_yaml() -> str:
    for section in DATA.read_text().split("##### ")[1:]:
        title, _, body = section.partition("\n")
        if title.strip() == "etcd.yaml":
            return body
    raise AssertionError("no etcd.yaml in the kubeadm output")


def test_kubeadms_etcd_manifest_says_where_etcd_is() -> None:
    m = parse_member(MANIFEST, kubeadm_etcd_yaml())
    assert m.name == "node1"
    assert m.endpoint == Endpoint(
        "https://127.0.0.1:2379",  # the loopback listen URL, as etcdctl on the node uses
        Path("/etc/kubernetes/pki/etcd/ca.crt"),
        Path("/etc/kubernetes/pki/etcd/server.crt"),  # no healthcheck-client here to prefer
        Path("/etc/kubernetes/pki/etcd/server.key"),
    )
    assert m.peer_url == "https://10.0.0.1:2380"
    assert m.initial_cluster == "node1=https://10.0.0.1:2380"
    assert (m.data_dir, m.data_flag, m.data_volume) == (
        Path("/var/lib/etcd"),
        "/var/lib/etcd",
        "etcd-data",
    )
    assert m.endpoint.target == "127.0.0.1:2379"


def test_container_paths_map_through_the_host_path_volumes() -> None:
    doc = yaml.safe_load(kubeadm_etcd_yaml())
    for v in doc["spec"]["volumes"]:
        v["hostPath"]["path"] = "/srv/node1" + v["hostPath"]["path"]
    m = parse_member(MANIFEST, yaml.safe_dump(doc))
    assert m.data_dir == Path("/srv/node1/var/lib/etcd")
    assert m.endpoint.cacert == Path("/srv/node1/etc/kubernetes/pki/etcd/ca.crt")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: [", "not valid YAML"),
        ("apiVersion: v1\nkind: Pod\nspec: {}\n", "no container"),
        (
            "spec:\n  containers:\n  - command: [kube-apiserver, --etcd-servers=x]\n",
            "command is not etcd",
        ),
        ("spec:\n  containers:\n  - command: [etcd, --name=a]\n", "no --data-dir"),
    ],
)
def test_a_manifest_that_is_not_kubeadms_etcd_is_named(text: str, message: str) -> None:
    with pytest.raises(EtcdError, match=message):
        parse_member(MANIFEST, text)


def test_the_restore_points_the_data_volume_at_the_new_dir_and_keeps_the_flag() -> None:
    text = kubeadm_etcd_yaml()
    m = parse_member(MANIFEST, text)
    doc = yaml.safe_load(pointed_at(text, m, Path("/var/lib/etcd-restore-1")))
    volumes = {v["name"]: v["hostPath"]["path"] for v in doc["spec"]["volumes"]}
    assert volumes["etcd-data"] == "/var/lib/etcd-restore-1"
    assert "--data-dir=/var/lib/etcd" in doc["spec"]["containers"][0]["command"]
    # nothing else changes
    before = yaml.safe_load(text)
    before["spec"]["volumes"] = doc["spec"]["volumes"]
    assert before == doc


def test_a_data_dir_below_its_volume_changes_the_flag() -> None:
    doc = yaml.safe_load(kubeadm_etcd_yaml())
    for v in doc["spec"]["volumes"]:
        if v["name"] == "etcd-data":
            v["hostPath"]["path"] = "/var/lib"
    for mnt in doc["spec"]["containers"][0]["volumeMounts"]:
        if mnt["name"] == "etcd-data":
            mnt["mountPath"] = "/var/lib"
    text = yaml.safe_dump(doc)
    m = parse_member(MANIFEST, text)
    out = yaml.safe_load(pointed_at(text, m, Path("/var/lib/etcd-restore-1")))
    assert "--data-dir=/var/lib/etcd-restore-1" in out["spec"]["containers"][0]["command"]
    assert {v["hostPath"]["path"] for v in out["spec"]["volumes"]} >= {"/var/lib"}


def test_plan_restores_every_member_from_one_snapshot_with_one_new_token() -> None:
    base = yaml.safe_load(kubeadm_etcd_yaml())
    members = []
    for i in (1, 2, 3):
        doc = yaml.safe_load(yaml.safe_dump(base))
        cmd = doc["spec"]["containers"][0]["command"]
        doc["spec"]["containers"][0]["command"] = [
            c.replace("node1", f"cp{i}").replace("10.0.0.1", f"10.0.0.{i}") for c in cmd
        ]
        members.append(parse_member(Path(f"/n{i}/manifests/etcd.yaml"), yaml.safe_dump(doc)))
    plan = plan_restore(
        Path("/backup/s.db"), 42, members, etcdutl=Path("/usr/bin/etcdutl"), stamp="T1"
    )
    cluster = "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,cp3=https://10.0.0.3:2380"
    assert [m.argv for m in plan.members][1] == (
        "/usr/bin/etcdutl",
        "snapshot",
        "restore",
        "/backup/s.db",
        "--name=cp2",
        f"--initial-cluster={cluster}",
        "--initial-cluster-token=kubecare-restore-T1",
        "--initial-advertise-peer-urls=https://10.0.0.2:2380",
        "--data-dir=/var/lib/etcd-restore-T1",
    )
    assert plan.revision == 42
    steps = plan.steps()
    assert steps.index(
        "stop kube-apiserver on cp1: move /n1/manifests/kube-apiserver.yaml aside"
    ) < next(i for i, s in enumerate(steps) if s.startswith("stop etcd"))
    with pytest.raises(UsageError, match="--data-dir names one dir"):
        plan_restore(Path("s.db"), 1, members, etcdutl=Path("e"), stamp="T", data_dir=Path("/x"))


def test_backups_are_hidden_next_to_the_manifest() -> None:
    # the kubelet ignores dotfiles in its manifests dir: a backup there never runs
    assert backup_name(MANIFEST, "T1") == Path("/etc/kubernetes/manifests/.etcd.yaml.kubecare-T1")


def test_a_restore_that_leaves_members_out_is_refused() -> None:
    m = parse_member(MANIFEST, kubeadm_etcd_yaml())
    check_membership([m], [Known("node1", ("https://10.0.0.1:2380",))])
    with pytest.raises(UsageError, match="does not cover: node2, node3") as e:
        check_membership(
            [m],
            [
                Known("node1", ("https://10.0.0.1:2380",)),
                Known("node2", ("https://10.0.0.2:2380",)),
                Known("node3", ("https://10.0.0.3:2380",)),
            ],
        )
    # the way out: the per-node restore, with the whole cluster spelled out
    assert (
        "--initial-cluster node1=https://10.0.0.1:2380,node2=https://10.0.0.2:2380,"
        "node3=https://10.0.0.3:2380 --initial-cluster-token TOKEN" in str(e.value)
    )
    # an unstarted member has no name yet: its peer URL names it
    with pytest.raises(UsageError, match=r"https://10\.0\.0\.9:2380"):
        check_membership(
            [m], [Known("node1", ("https://10.0.0.1:2380",)), Known("", ("https://10.0.0.9:2380",))]
        )


def _member(name: str, ip: str, data: str = "/var/lib/etcd", url: str | None = None) -> Member:
    doc = yaml.safe_load(kubeadm_etcd_yaml().replace("10.0.0.1", ip).replace("node1", name))
    for v in doc["spec"]["volumes"]:
        if v["name"] == "etcd-data":
            v["hostPath"]["path"] = data
    m = parse_member(Path(f"/{name}/etcd.yaml"), yaml.safe_dump(doc))
    if url:
        from dataclasses import replace

        m = replace(m, endpoint=Endpoint(url))
    return m


def test_kubeadms_first_control_plane_alone_is_not_the_cluster() -> None:
    """kubeadm writes --initial-cluster=<self> on the first control plane and <earlier + self>
    on the joiners: the union of what every source says is the cluster."""
    first = parse_initial_cluster("cp1=https://10.0.0.1:2380")
    second = parse_initial_cluster("cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380")
    recorded = [  # the data dir's members bucket; cp3 added, never started: no name
        Known("cp1", ("https://10.0.0.1:2380",)),
        Known("cp2", ("https://10.0.0.2:2380",)),
        Known("", ("https://10.0.0.3:2380",)),
    ]
    assert union(first, second, recorded) == [
        Known("", ("https://10.0.0.3:2380",)),
        Known("cp1", ("https://10.0.0.1:2380",)),
        Known("cp2", ("https://10.0.0.2:2380",)),
    ]
    # a name seen in one source and its URL in another are one member
    assert union([Known("cp3", ("https://10.0.0.3:2380",))], recorded)[-1] == Known(
        "cp3", ("https://10.0.0.3:2380",)
    )
    assert parse_initial_cluster("a=https://x:1,a=https://y:1") == [
        Known("a", ("https://x:1", "https://y:1"))
    ]
    for bad in ("a", "a=", "=https://x:1", "a=x:1", ""):
        with pytest.raises(UsageError, match="is not NAME=PEER-URL"):
            parse_initial_cluster(bad)


def test_a_per_node_restore_keeps_each_peer_url_and_names_everyone() -> None:
    cp1 = _member("cp1", "10.0.0.1")
    cluster = parse_initial_cluster(
        "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,cp3=https://10.0.0.3:2380"
    )
    known = cluster[:]
    check_cluster([cp1], cluster, known)
    with pytest.raises(UsageError, match="does not name member cp1"):
        check_cluster([cp1], cluster[1:], known[1:])
    with pytest.raises(UsageError, match="must keep its peer URL"):
        check_cluster([cp1], parse_initial_cluster("cp1=https://10.9.9.9:2380"), known[:1])
    with pytest.raises(UsageError, match="leaves out members etcd has: cp3"):
        check_cluster([cp1], cluster[:2], known)
    # another node's URL wrong, or a member etcd does not have: a ghost in the quorum
    wrong = parse_initial_cluster(
        "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.9:2380,cp3=https://10.0.0.3:2380"
    )
    with pytest.raises(UsageError, match=re.escape("but etcd has it at https://10.0.0.2:2380")):
        check_cluster([cp1], wrong, known)
    with pytest.raises(
        UsageError, match=re.escape("names cp4=https://10.0.0.4:2380, which etcd does not")
    ):
        check_cluster([cp1], [*cluster, Known("cp4", ("https://10.0.0.4:2380",))], known)
    with pytest.raises(UsageError, match="cp1 is given twice"):
        parse_initial_cluster("cp1=https://a:1,cp1=https://b:1", single=True)
    plan = plan_restore(
        Path("/s.db"),
        7,
        [cp1],
        etcdutl=Path("etcdutl"),
        stamp="T",
        cluster=[(k.name, k.peer_urls[0]) for k in cluster],
        token="shared",
    )
    argv = plan.members[0].argv
    assert (
        "--initial-cluster=cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,"
        "cp3=https://10.0.0.3:2380" in argv
    )
    token = next(a for a in argv if a.startswith("--initial-cluster-token="))
    assert token.startswith("--initial-cluster-token=shared-") and "--name=cp1" in argv
    pairs = [(k.name, k.peer_urls[0]) for k in cluster]

    def token_for(digest: str, bump: int) -> str:
        p = plan_restore(Path("/s.db"), 7, [cp1], etcdutl=Path("e"), stamp="T", cluster=pairs,
                         token="shared", snapshot_digest=digest, bump=bump)  # fmt: skip
        return p.token

    # the same snapshot and bump on every node: one cluster; another of either: another cluster
    assert token_for("abc", 5) == token_for("abc", 5) != token_for("abd", 5) != token_for("abc", 6)
    assert plan.cluster_id == cluster_id(pairs, plan.token) and plan.shared_token == "shared"
    assert plan.others == ("cp2", "cp3")
    steps = plan.steps()
    assert steps[0].startswith("first: stop kube-apiserver on every control-plane node")
    assert "for cp2, cp3 on their own machines" in steps[0]


def test_member_and_cluster_ids_are_etcds() -> None:
    """etcd's TestMemberTime rows without a time (membership/member_test.go): the IDs etcdutl
    gives a restored member, from its peer URLs and the cluster token."""
    assert member_id(("http://10.0.0.8:2379",), "") == 14544069596553697298
    assert member_id(("http://10.0.0.1:2379", "http://10.0.0.2:2379"), "") == 16552244735972308939
    assert member_id(("http://10.0.0.2:2379", "http://10.0.0.1:2379"), "") == 16552244735972308939
    # the cluster's: over the sorted member IDs, so the order of --initial-cluster does not count
    a = [("a", "https://10.0.0.1:2380"), ("b", "https://10.0.0.2:2380")]
    assert cluster_id(a, "t") == cluster_id(a[::-1], "t") != cluster_id(a, "u")


def test_manifests_from_other_machines_that_resolve_to_one_etcd_are_refused() -> None:
    a, b = _member("cp1", "10.0.0.1"), _member("cp2", "10.0.0.2")
    with pytest.raises(UsageError, match="cp1 and cp2 resolve to the same data dir /var/lib/etcd"):
        check_distinct([a, b], {})
    b = _member("cp2", "10.0.0.2", data="/srv/cp2/var/lib/etcd")
    with pytest.raises(UsageError, match=r"same client endpoint https://127\.0\.0\.1:2379"):
        check_distinct([a, b], {})
    b = _member("cp2", "10.0.0.2", data="/srv/cp2", url="https://127.0.0.1:22379")
    probes = {"cp1": "http://127.0.0.1:2381/readyz", "cp2": "http://127.0.0.1:2381/readyz"}
    with pytest.raises(UsageError, match="same health probe"):
        check_distinct([a, b], probes)
    check_distinct([a, b], {"cp1": probes["cp1"], "cp2": "http://127.0.0.1:22381/readyz"})


def test_the_bump_goes_to_etcdutl_and_into_the_expected_revision() -> None:
    m = parse_member(MANIFEST, kubeadm_etcd_yaml())
    plan = plan_restore(Path("/s.db"), 42, [m], etcdutl=Path("etcdutl"), stamp="T", bump=1000)
    assert plan.members[0].argv[-2:] == ("--bump-revision=1000", "--mark-compacted")
    assert plan.expected_revision == 1042


def test_after_etcd_serves_the_restore_the_advice_is_to_finish_not_undo() -> None:
    from kubecare.etcd.restore import _Manifests

    moves = _Manifests("T")
    moves.etcd.append((Path("/m/.etcd.yaml.kubecare-T"), Path("/m/etcd.yaml")))
    moves.moved.append((Path("/m/.kube-apiserver.yaml.kubecare-T"), Path("/m/kube-apiserver.yaml")))
    assert "mv /m/.etcd.yaml.kubecare-T /m/etcd.yaml" in moves.rollback(())
    moves.restored = True
    advice = moves.rollback(())
    assert "etcd.yaml" not in advice and "mv /m/.kube-apiserver.yaml.kubecare-T" in advice


# -- restore_prepare: what the CLI used to decide itself ----------------------------------------
def _prepare_in(
    tmp_path: Path, *, trailer: bool = True, **request: object
) -> tuple[object, list[str]]:
    import zstandard

    from kubecare.etcd.restore_prepare import RestoreRequest, prepare

    fixtures = Path(__file__).parents[1] / "fixtures" / "etcd"
    data = zstandard.ZstdDecompressor().decompress((fixtures / "registry.db.zst").read_bytes())
    snap = tmp_path / "snap.db"
    snap.write_bytes(data if trailer else data[:-32])
    manifests = tmp_path / "etc" / "kubernetes" / "manifests"
    manifests.mkdir(parents=True)
    (manifests / "etcd.yaml").write_text(kubeadm_etcd_yaml())
    said: list[str] = []
    chosen: list[list[Member]] = []

    def etcdutl(members: list[Member]) -> Path:
        chosen.append(members)
        return Path("/opt/etcd/etcdutl")

    prepared = prepare(
        RestoreRequest(snap, snap, [manifests], etcdutl=etcdutl, stamp="S", **request),  # type: ignore[arg-type]
        said.append,
    )
    assert [m.name for m in chosen[0]] == [m.name for m in prepared.members]
    return prepared, said


def test_prepare_checks_the_snapshot_reads_the_members_and_plans(tmp_path: Path) -> None:
    prepared, said = _prepare_in(tmp_path)
    plan = prepared.plan  # type: ignore[attr-defined]
    assert said == [f"checking {tmp_path / 'snap.db'}"]
    assert [m.member.name for m in plan.members] == ["node1"]  # kubeadm's manifest's name
    assert plan.members[0].argv[0] == "/opt/etcd/etcdutl"  # the etcdutl picked for the members
    assert not prepared.per_node  # type: ignore[attr-defined]


def test_prepare_refuses_before_reading_any_manifest(tmp_path: Path) -> None:
    from kubecare.errors import SnapshotError

    with pytest.raises(SnapshotError, match=r"no SHA-256 trailer.*--skip-hash-check"):
        _prepare_in(tmp_path, trailer=False)
    (tmp_path / "b").mkdir()
    with pytest.raises(UsageError, match="same --initial-cluster-token"):
        _prepare_in(tmp_path / "b", cluster="node1=https://192.0.2.11:2380")


def test_a_per_node_prepare_names_the_whole_cluster(tmp_path: Path) -> None:
    prepared, _ = _prepare_in(
        tmp_path,
        cluster="node1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380",
        token="t",
    )
    assert prepared.per_node  # type: ignore[attr-defined]
    assert prepared.plan.others == ("cp2",)  # type: ignore[attr-defined]


# -- a node whose tree is a directory here (a sandbox node seen from the host) -------------------
def test_a_node_tree_maps_the_nodes_paths_and_back() -> None:
    from kubecare.etcd.members import NodeTree

    tree = NodeTree(root=Path("/s/lab/nodes/cp1"), keep=Path("/s/lab"))
    assert tree.local(Path("/var/lib/etcd")) == Path("/s/lab/nodes/cp1/var/lib/etcd")
    assert tree.local(Path("/var/../etc/x")) == Path("/s/lab/nodes/cp1/etc/x")
    assert tree.local(Path("/s/lab/clients/a")) == Path("/s/lab/clients/a")  # the owner's path
    assert tree.local(Path("rel")) == Path("rel")
    assert tree.node(Path("/s/lab/nodes/cp1/var/lib/etcd-restore-S")) == Path(
        "/var/lib/etcd-restore-S"
    )
    assert tree.node(Path("/s/lab/logs")) == Path("/s/lab/logs")
    with pytest.raises(EtcdError, match="outside the node's tree"):
        tree.node(Path("/srv/etcd-restore"))
    plain = NodeTree()
    assert (
        plain.local(Path("/var/lib/etcd"))
        == Path("/var/lib/etcd")
        == plain.node(Path("/var/lib/etcd"))
    )


def test_kubeadms_manifest_on_a_sandbox_node_restores_inside_its_tree(tmp_path: Path) -> None:
    """After a real kubeadm upgrade the node's etcd.yaml names kubeadm's own paths: the
    restore reads and writes inside the node's tree, and the manifest names the node's path."""
    from kubecare.etcd.members import NodeTree

    root = tmp_path / "lab" / "nodes" / "cp1"
    tree = NodeTree(root=root, keep=tmp_path / "lab")
    m = parse_member(MANIFEST, kubeadm_etcd_yaml(), tree=tree)
    assert m.data_dir == root / "var/lib/etcd"
    assert m.endpoint.cacert == root / "etc/kubernetes/pki/etcd/ca.crt"
    plan = plan_restore(Path("/snap.db"), 7, [m], etcdutl=Path("/bin/etcdutl"), stamp="S")
    new = plan.members[0].new_data_dir
    assert new == root / "var/lib/etcd-restore-S"
    assert f"--data-dir={new}" in plan.members[0].argv  # etcdutl writes it here
    doc = yaml.safe_load(pointed_at(kubeadm_etcd_yaml(), m, new))
    data = next(v for v in doc["spec"]["volumes"] if v["name"] == "etcd-data")
    assert data["hostPath"]["path"] == "/var/lib/etcd-restore-S"  # what the node's kubelet opens
    with pytest.raises(EtcdError, match="outside the node's tree"):
        plan_restore(
            Path("/snap.db"), 7, [m], etcdutl=Path("/bin/etcdutl"), stamp="S",
            data_dir=Path("/srv/elsewhere"),
        )  # fmt: skip


# -- kubeadm-config: the restored dir recorded where kubeadm upgrade reads it -------------------
CLUSTER_CONFIGURATION = """apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: v1.37.2
etcd:
  local:
    dataDir: /var/lib/etcd
    extraArgs:
    - name: listen-metrics-urls
      value: http://127.0.0.1:2381
networking:
  serviceSubnet: 10.96.0.0/12
"""


def test_the_restored_dir_replaces_only_etcd_local_data_dir() -> None:
    from kubecare.etcd.kubeadm_config import with_data_dir

    new = with_data_dir(CLUSTER_CONFIGURATION, "/var/lib/etcd-restore-S")
    assert new is not None
    doc, old = yaml.safe_load(new), yaml.safe_load(CLUSTER_CONFIGURATION)
    assert doc["etcd"]["local"]["dataDir"] == "/var/lib/etcd-restore-S"
    doc["etcd"]["local"]["dataDir"] = "/var/lib/etcd"
    assert doc == old  # nothing else changed
    assert list(yaml.safe_load(new)) == list(old)  # nor the order kubeadm wrote
    assert with_data_dir(new, "/var/lib/etcd-restore-S") is None  # already so
    external = "kind: ClusterConfiguration\netcd:\n  external:\n    endpoints: [https://e:2379]\n"
    assert with_data_dir(external, "/x") is None  # kubeadm writes no etcd.yaml then
    bare = with_data_dir("kind: ClusterConfiguration\n", "/x")  # kubeadm's defaults: local
    assert bare is not None and yaml.safe_load(bare)["etcd"] == {"local": {"dataDir": "/x"}}
    with pytest.raises(EtcdError, match="not a ClusterConfiguration"):
        with_data_dir("kind: InitConfiguration\n", "/x")


def test_members_with_different_dirs_cannot_share_one_cluster_configuration() -> None:
    from kubecare.etcd.kubeadm_config import one_dir

    assert one_dir(["/var/lib/etcd-restore-S"] * 3) == "/var/lib/etcd-restore-S"
    with pytest.raises(EtcdError, match=r"differ \(/a, /b\)"):
        one_dir(["/b", "/a", "/b"])


def test_a_per_node_restore_names_its_dir_after_the_shared_token() -> None:
    m = parse_member(MANIFEST, kubeadm_etcd_yaml())
    cluster = [("node1", "https://10.0.0.1:2380"), ("node2", "https://10.0.0.2:2380")]

    def on_a_node(stamp: str) -> RestorePlan:
        return plan_restore(
            Path("/snap.db"), 7, [m], etcdutl=Path("/bin/etcdutl"), stamp=stamp,
            cluster=cluster, token="march 3/rollback",
        )  # fmt: skip

    a, b = on_a_node("20261207T000000"), on_a_node("20261207T000500")  # two nodes, two clocks
    assert (
        a.members[0].new_data_dir
        == b.members[0].new_data_dir
        == Path("/var/lib/etcd-restore-march-3-rollback")
    )
    again = parse_member(
        MANIFEST,
        kubeadm_etcd_yaml().replace("/var/lib/etcd", "/var/lib/etcd-restore-20261207T000000"),
    )
    plan = plan_restore(
        Path("/snap.db"), 7, [again], etcdutl=Path("/bin/etcdutl"), stamp="20261208T010101"
    )
    assert plan.members[0].new_data_dir == Path("/var/lib/etcd-restore-20261208T010101")


async def test_with_etcd_down_and_no_data_dir_the_manifests_alone_are_not_enough(
    tmp_path: Path,
) -> None:
    """kubeadm's first control plane names itself alone; without etcd and without a data dir
    recording the members, a restore by its manifest could restore one member of three."""
    from kubecare.etcd.membership import known_members

    text = kubeadm_etcd_yaml().replace("https://127.0.0.1:2379", "https://127.0.0.1:9")
    m = parse_member(MANIFEST, text.replace("/var/lib/etcd", str(tmp_path / "gone")))
    said: list[str] = []
    with pytest.raises(UsageError, match=r"no old data dir here records.*--initial-cluster"):
        await known_members([m], said.append)
    # the whole cluster given: the manifests and that list are what there is
    known = await known_members([m], said.append, cluster_given=True)
    assert [k.name for k in known] == ["node1"]


# -- malformed manifests: one clear error, never a traceback (issue 19, item 13) -----------------
@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda c: c.update(command="etcd --name=x"), "command is not a list"),
        (lambda c: c.update(args={"a": 1}), "args is not a list"),
        (lambda c: c.update(volumeMounts=["etcd-data"]), "volumeMounts"),
        (lambda c: c.update(command=[["etcd"]]), "command is not a list of strings"),
        (lambda c: c.update(env="x", volumeMounts={"a": 1}), "volumeMounts"),
    ],
)
def test_a_malformed_etcd_manifest_is_one_error(change: object, why: str) -> None:
    doc = yaml.safe_load(kubeadm_etcd_yaml())
    change(doc["spec"]["containers"][0])  # type: ignore[operator]
    with pytest.raises(EtcdError, match=why):
        parse_member(MANIFEST, yaml.safe_dump(doc))


def test_an_etcd_manifest_that_is_a_directory_is_one_error(tmp_path: Path) -> None:
    from kubecare.etcd.members import read_members

    (tmp_path / "etcd.yaml").mkdir()
    with pytest.raises(EtcdError, match=r"etcd.yaml: cannot read it \(Is a directory\)"):
        read_members([tmp_path])


@pytest.mark.parametrize(
    "text",
    ["spec: a string", "spec: {containers: [{command: [etcd]}], volumes: 3}", "[1, 2]", "- a"],
)
def test_any_shape_but_a_pods_is_one_error(text: str) -> None:
    with pytest.raises(EtcdError, match=r"etcd\.yaml"):
        parse_member(MANIFEST, text)
