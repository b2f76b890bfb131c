"""Pure parts of etcd care: the health verdicts, etcd's hash comparison, the defrag order and its
quorum guard, compaction revisions, the recovery plan, sizes and the quota bounds."""

from __future__ import annotations

import pytest

from kubecare.errors import EtcdError, UsageError
from kubecare.etcd.cluster import ClusterView, MemberView
from kubecare.etcd.defrag import plan_compact, plan_defrag
from kubecare.etcd.grpc import MemberStatus
from kubecare.etcd.health import assess, compare_hashes, go, hashes
from kubecare.etcd.maintenance import Alarm, KVHash, check_quota
from kubecare.etcd.members import Endpoint
from kubecare.etcd.space import plan_recover
from kubecare.sizes import parse_size

MiB = 1 << 20


def member(
    i: int,
    *,
    leader: int = 1,
    up: bool = True,
    learner: bool = False,
    size: int = 10 * MiB,
    in_use: int = 8 * MiB,
    quota: int = 100 * MiB,
    rev: int = 100,
    index: int = 500,
    applied: int = 500,
    term: int = 2,
    errors: list[str] | None = None,
) -> MemberView:
    ep = Endpoint(f"https://10.0.0.{i}:2379")
    st = (
        MemberStatus(
            ep.url,
            i,
            leader,
            "3.6.16",
            "3.6.0",
            size,
            in_use,
            rev,
            index,
            learner,
            errors or [],
            7,
            term,
            applied,
            quota,
        )
        if up
        else None
    )
    return MemberView(
        i,
        f"m{i}",
        (f"https://10.0.0.{i}:2380",),
        (ep.url,),
        learner,
        ep,
        st,
        None if up else "etcd at ... is unreachable",
    )


def cluster(*members: MemberView, alarms: tuple[Alarm, ...] = ()) -> ClusterView:
    return ClusterView(7, members, alarms)


def check(view: ClusterView, name: str, **kw: object) -> tuple[str, str]:
    c = next(c for c in assess(view, **kw) if c.name == name)  # type: ignore[arg-type]
    return c.level, c.detail


# --- etcd's checkPeerHashes, its TestCompactHashCheck cases (server/etcdserver/corrupt_test.go):
# the local member is the reference (ID 1 there), peers in the table's order, None for a peer
# whose HashKV failed.


def h(member_id: int, hash_: int, compact: int = 1) -> KVHash:
    return KVHash(member_id, hash_, compact, 2)


@pytest.mark.parametrize(
    ("name", "ref", "peers", "consistent", "corrupt"),
    [
        (
            "peer returned different compaction revision is skipped",
            h(1, 0, 2),
            [(42, h(42, 0, 3))],
            True,
            [],
        ),
        (
            "etcd can identify two corrupted members in 5 member cluster",
            h(1, 2),
            [(42, h(42, 2)), (43, h(43, 2)), (44, h(44, 7)), (45, h(45, 7))],
            False,
            [44, 45],
        ),
        (
            "one member is unresponsive in 3 member cluster: no mismatch",
            h(1, 2),
            [(41, None), (43, h(43, 2))],
            True,
            [],
        ),
        (
            "etcd can identify single corrupted member in 3 member cluster",
            h(1, 2),
            [(42, h(42, 2)), (43, h(43, 3))],
            False,
            [43],
        ),
        (
            "etcd can identify single corrupted member in 5 member cluster",
            h(1, 2),
            [(42, h(42, 2)), (43, h(43, 2)), (44, h(44, 3)), (45, h(45, 2))],
            False,
            [44],
        ),
        (
            "3 member cluster, one member down and one corrupted: the whole cluster",
            h(1, 2),
            [(41, None), (43, h(43, 3))],
            False,
            [0],
        ),
        (
            "no quorum in 5 member cluster (7 members): the whole cluster",
            h(1, 2),
            [
                (42, h(42, 2)),
                (43, h(43, 3)),
                (44, h(44, 3)),
                (45, h(45, 3)),
                (46, h(46, 4)),
                (47, h(47, 2)),
            ],
            False,
            [0],
        ),
        (
            "corrupted member in 5 member cluster even if one member is down",
            h(1, 2),
            [(42, h(42, 2)), (41, None), (44, h(44, 3)), (45, h(45, 2))],
            False,
            [44],
        ),
        (
            "etcd can identify that leader is corrupted",
            h(1, 2),
            [(42, h(42, 3)), (43, h(43, 3))],
            False,
            [1],
        ),
    ],
)
def test_compare_hashes_as_etcds_corruption_check(
    name: str, ref: KVHash, peers: list, consistent: bool, corrupt: list[int]
) -> None:
    ids = [i for i, _ in peers]
    verdict = compare_hashes(ref, [p for _, p in peers], ids)
    assert (verdict.consistent, verdict.corrupt) == (consistent, corrupt), name


def test_hash_check_names_the_odd_member_and_skips_other_compactions() -> None:
    view = cluster(member(1), member(2), member(3))
    bad = hashes(view, h(1, 5), {2: h(2, 5), 3: h(3, 9)})
    assert bad.level == "fail" and "m3 disagree" in bad.detail
    skipped = hashes(view, h(1, 5), {2: h(2, 5), 3: h(3, 9, compact=4)})
    assert skipped.level == "warn" and "m3: the peer's CompactRevision 4" in skipped.detail
    assert hashes(view, h(1, 5), {2: h(2, 5), 3: h(3, 5)}).level == "ok"
    assert hashes(view, None, {}).level == "warn"


def test_quorum_counts_voting_members_that_serve() -> None:
    assert check(cluster(member(1), member(2), member(3)), "quorum")[0] == "ok"
    level, detail = check(cluster(member(1), member(2), member(3, up=False)), "quorum")
    assert level == "warn" and "2 of 3" in detail and "m3" in detail
    level, detail = check(cluster(member(1), member(2, up=False), member(3, up=False)), "quorum")
    assert level == "fail" and "quorum is 2" in detail
    # a learner neither counts nor is counted
    assert check(cluster(member(1), member(4, learner=True, up=False)), "quorum")[0] == "ok"


def test_leader_agreement_and_stability() -> None:
    one = cluster(member(1), member(2), member(3))
    assert check(one, "leader")[0] == "ok"
    split = cluster(member(1), member(2, leader=2), member(3))
    assert check(split, "leader")[0] == "fail"
    none = cluster(member(1, leader=0), member(2, leader=0))
    assert check(none, "leader") == ("fail", "no member has a leader")
    moved = cluster(member(1, leader=2, term=3), member(2, leader=2, term=3))
    level, detail = check(moved, "leader", before=one)
    assert level == "warn" and "m1 -> m2" in detail


def test_alarms_space_and_fragmentation() -> None:
    full = cluster(member(1, size=100 * MiB), alarms=(Alarm(1, "NOSPACE"),))
    assert check(full, "alarms")[0] == "fail" and "alarm recover" in check(full, "alarms")[1]
    assert check(full, "space")[0] == "fail"
    assert check(cluster(member(1, size=85 * MiB)), "space")[0] == "warn"
    assert check(cluster(member(1, quota=0)), "space")[0] == "warn"  # etcd < 3.6
    holes = cluster(member(1, size=80 * MiB, in_use=20 * MiB))
    level, detail = check(holes, "fragmentation")
    assert level == "warn" and "60.0 MiB of 80.0 MiB free" in detail
    # a small database with a large share free is not worth a defragmentation
    assert check(cluster(member(1, size=4 * MiB, in_use=1 * MiB)), "fragmentation")[0] == "ok"
    assert not go(assess(full)) and go(assess(cluster(member(1))))


def test_apply_lag_past_etcds_limit_is_a_no_go() -> None:
    view = cluster(member(1, index=9000, applied=9000), member(2, index=9000, applied=3000))
    level, detail = check(view, "lag")
    assert level == "fail" and "applied lag 6000 entries (m2)" in detail
    assert check(cluster(member(1), member(2, rev=1500)), "lag")[0] == "warn"
    # behind in replication is not etcd's limit: that is a member's own committed - applied
    behind = cluster(member(1, index=9000, applied=9000), member(2, index=3000, applied=3000))
    assert check(behind, "lag")[0] == "ok"


def test_the_recovery_is_for_nospace_only() -> None:
    corrupt = cluster(member(1), member(2), member(3), alarms=(Alarm(3, "CORRUPT"),))
    with pytest.raises(EtcdError, match=r"a CORRUPT alarm is raised .* for NOSPACE only"):
        plan_recover(corrupt)
    unknown = ClusterView(7, (member(1),), (), "etcd at ... did not answer in time")
    with pytest.raises(EtcdError, match="the alarms cannot be read"):
        plan_recover(unknown)
    assert check(unknown, "alarms")[0] == "fail"


def test_defrag_order_is_followers_then_the_leader_and_no_learner() -> None:
    view = cluster(member(3), member(1), member(2), member(4, learner=True))
    steps = plan_defrag(view)
    # etcd answers only Status to a learner (v3rpc isRPCSupportedForLearner): left out
    assert [(s.name, s.role) for s in steps] == [
        ("m2", "follower"),
        ("m3", "follower"),
        ("m1", "leader"),
    ]
    assert steps[0].expected_free == 2 * MiB
    moved = plan_defrag(view, move_leader=True)
    assert moved[-1].move_leader_to == 2  # the first follower done
    assert [s.name for s in plan_defrag(view, ["m1", "3"])] == ["m3", "m1"]
    with pytest.raises(EtcdError, match="m4 is a learner: etcd defragments no learner"):
        plan_defrag(view, ["m4"])


def test_defrag_refuses_a_step_below_quorum_an_unknown_or_silent_member() -> None:
    view = cluster(member(1), member(2), member(3, up=False))
    with pytest.raises(EtcdError, match="defragmenting m1 would leave 1 of 3 voting members"):
        plan_defrag(view, ["m1"])
    with pytest.raises(EtcdError, match="etcd member m3 does not answer"):
        plan_defrag(view)
    with pytest.raises(EtcdError, match="no etcd member 'm9'; members: m1, m2, m3"):
        plan_defrag(view, ["m9"])


def test_compaction_revision() -> None:
    view = cluster(member(1, rev=120), member(2, rev=118))
    assert plan_compact(view).revision == 120
    assert plan_compact(view, keep=20).revision == 100
    with pytest.raises(EtcdError, match="keeps every revision"):
        plan_compact(view, keep=120)
    with pytest.raises(UsageError, match="0 or more"):
        plan_compact(view, keep=-1)
    with pytest.raises(EtcdError, match="no etcd member is serving"):
        plan_compact(cluster(member(1, up=False)))


def test_recovery_plan_says_every_step_first() -> None:
    view = cluster(member(1), member(2), member(3), alarms=(Alarm(2, "NOSPACE"),))
    lines = plan_recover(view).lines({1: "m1", 2: "m2", 3: "m3"})
    assert lines[0] == "alarms raised: NOSPACE on m2"
    assert lines[1].startswith("1. compact the key space to revision 100")
    assert [ln.split(" ")[2] for ln in lines[2:5]] == ["m2", "m3", "m1"]
    assert lines[-2:] == [
        "5. disarm each alarm",
        "6. write and delete one key outside /registry to prove writes work",
    ]


def test_a_lone_member_is_defragmented_but_two_members_never_below_quorum() -> None:
    assert [s.role for s in plan_defrag(cluster(member(1)))] == ["leader"]
    with pytest.raises(EtcdError, match="would leave 1 of 2 voting members serving"):
        plan_defrag(cluster(member(1), member(2)))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1048576", 1 << 20),
        ("64Mi", 64 << 20),
        ("2Gi", 2 << 30),
        ("500M", 500_000_000),
        ("16MiB", 16 << 20),
        ("8gi", 8 << 30),
    ],
)
def test_sizes(text: str, value: int) -> None:
    assert parse_size(text, "--x") == value


def test_quota_bounds_are_etcds() -> None:
    with pytest.raises(UsageError, match="is not a size"):
        parse_size("lots", "--etcd-quota")
    with pytest.raises(UsageError, match="more than etcd supports"):
        check_quota((8 << 30) + 1)
    with pytest.raises(UsageError, match="at least 16Mi"):
        check_quota(1 << 20)
    assert check_quota(8 << 30) == 8 << 30


# --- membership changes


def test_removal_keeps_a_quorum_of_the_smaller_cluster() -> None:
    from kubecare.etcd.replace import check_remove

    view = cluster(member(1), member(2), member(3, up=False))
    check_remove(view, view.members[2])  # the dead one: 2 of 2 serve
    with pytest.raises(EtcdError, match="removing m2 would leave 1 serving of 2 voting members"):
        check_remove(view, view.members[1])
    with pytest.raises(EtcdError, match="only voting member"):
        check_remove(cluster(member(1)), member(1))
    # a removal is committed by the current configuration's quorum: 1 of 2 is not one
    pair = cluster(member(1), member(2, up=False))
    with pytest.raises(EtcdError, match="no membership change can be committed"):
        check_remove(pair, pair.members[1])


def test_a_voting_add_needs_a_quorum_of_the_bigger_cluster_a_learner_does_not() -> None:
    from kubecare.etcd.replace import check_add

    check_add(cluster(member(1), member(2), member(3)), learner=False)  # 3 of 4, quorum 3
    degraded = cluster(member(1), member(2), member(3, up=False))
    with pytest.raises(EtcdError, match="4 voting members with 2 serving, below the quorum of 3"):
        check_add(degraded, learner=False)
    check_add(degraded, learner=True)


def test_replace_plans_and_resumes() -> None:
    from kubecare.etcd.replace import plan_replace

    view = cluster(member(1), member(2), member(3, up=False))
    plan = plan_replace(view, "m3", "https://10.0.0.3:2380")
    assert (plan.remove, plan.add, plan.learner_id) == (3, True, 0)
    assert plan.steps[1] == "remove member 3 (m3) from the cluster"
    with pytest.raises(EtcdError, match="etcd member m2 is healthy"):
        plan_replace(view, "m2", "https://10.0.0.2:2380")
    # interrupted after the removal: added back
    gone = cluster(member(1), member(2))
    assert (plan_replace(gone, "m3", "https://10.0.0.3:2380").remove, True) == (0, True)
    # interrupted after the add: the learner of its peer URL is promoted
    learner = MemberView(9, "", ("https://10.0.0.3:2380",), (), True)
    resumed = plan_replace(cluster(member(1), member(2), learner), "m3", "https://10.0.0.3:2380")
    assert (resumed.remove, resumed.add, resumed.learner_id) == (0, False, 9)
    # someone else's URL
    with pytest.raises(EtcdError, match="belongs to member m2"):
        plan_replace(gone, "m3", "https://10.0.0.2:2380")
    # losing quorum by the removal
    two_down = cluster(member(1), member(2, up=False), member(3, up=False))
    with pytest.raises(EtcdError, match="below the quorum of 2"):
        plan_replace(two_down, "m3", "https://10.0.0.3:2380")


def test_the_join_manifest_is_kubeadms() -> None:
    import yaml

    from kubecare.etcd.replace import initial_cluster, join_manifest

    text = yaml.safe_dump(
        {
            "spec": {
                "containers": [
                    {
                        "command": [
                            "etcd",
                            "--name=m3",
                            "--initial-cluster=m3=https://10.0.0.3:2380",
                            "--data-dir=/var/lib/etcd",
                        ]
                    }
                ]
            }
        }
    )
    cluster_flag = initial_cluster(
        [
            ("m1", ("https://10.0.0.1:2380",)),
            ("", ("https://10.0.0.9:2380",)),
            ("m3", ("https://10.0.0.3:2380",)),
        ]
    )
    assert cluster_flag == "m1=https://10.0.0.1:2380,m3=https://10.0.0.3:2380"
    command = yaml.safe_load(join_manifest(text, cluster_flag))["spec"]["containers"][0]["command"]
    assert command == [
        "etcd",
        "--name=m3",
        "--data-dir=/var/lib/etcd",
        f"--initial-cluster={cluster_flag}",
        "--initial-cluster-state=existing",
    ]
