"""Reading etcd's settings from kubeadm's own etcd.yaml (the one kubeadm v1.37.2 writes, in
tests/unit/data) and planning a restore from them: the etcdutl command, the manifest edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubecare.errors import EtcdError, UsageError
from kubecare.etcd.members import Endpoint, parse_member
from kubecare.etcd.restore import backup_name, check_membership, plan_restore, pointed_at

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
    check_membership([m], [("node1", ("https://10.0.0.1:2380",))])
    with pytest.raises(UsageError, match="does not cover: node2, node3"):
        check_membership(
            [m],
            [
                ("node1", ("https://10.0.0.1:2380",)),
                ("node2", ("https://10.0.0.2:2380",)),
                ("node3", ("https://10.0.0.3:2380",)),
            ],
        )
    # an unstarted member has no name yet: its peer URL names it
    with pytest.raises(UsageError, match=r"https://10\.0\.0\.9:2380"):
        check_membership(
            [m], [("node1", ("https://10.0.0.1:2380",)), ("", ("https://10.0.0.9:2380",))]
        )


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
