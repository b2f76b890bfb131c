"""The snapshot reader against etcdutl: fixtures are real etcd snapshots with etcdutl's own
answers recorded beside them (tests/fixtures/etcd/make.py; the scenarios are etcdutl's
TestSnapshotStatusTotalKey cases and Kubernetes-shaped data with branch and overflow pages).
Corruptions mirror bbolt's tx_check tests; the fuzz test feeds mutated and truncated real
snapshots and accepts a clean SnapshotError or an answer, nothing else."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubecare.errors import SnapshotError
from kubecare.etcd.bbolt import BRANCH, LEAF, open_bolt
from kubecare.etcd.mvcc import Revision, parse_key_value, parse_revision
from kubecare.etcd.snapshot import humanize_bytes, object_key, status

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "etcd"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


def fixture(name: str) -> bytes:
    return zstandard.ZstdDecompressor().decompress((FIXTURES / f"{name}.db.zst").read_bytes())


def write(tmp_path: Path, data: bytes, name: str = "snap.db") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_status_is_etcdutls_to_the_number(tmp_path: Path, name: str) -> None:
    got = status(write(tmp_path, fixture(name)))
    assert got.etcdutl() == EXPECTED[name]
    # snapshots saved by etcdctl carry the SHA-256; a data dir's db (restored) does not
    assert got.sha256 == ("absent" if name == "bumped" else "ok")


def test_total_keys_follow_etcdutls_table() -> None:
    # etcdutl/snapshot/v3_snapshot_test.go TestSnapshotStatusTotalKey: the expected counts
    assert {
        n: EXPECTED[n]["totalKey"]
        for n in (
            "duplicate-keys",
            "mixed-revisions",
            "ignored-tombstones",
            "restored-keys",
            "mixed-deletions",
        )
    } == {
        "duplicate-keys": 2,
        "mixed-revisions": 0,
        "ignored-tombstones": 0,
        "restored-keys": 1,
        "mixed-deletions": 1,
    }


def test_what_kubernetes_keeps_is_counted_per_type_and_namespace(tmp_path: Path) -> None:
    got = status(write(tmp_path, fixture("registry")))
    counts = {r.resource: r.count for r in got.resources}
    # 159 config maps, every 7th deleted (23); one custom resource, one node, one secret
    assert counts == {
        "configmaps": 159 - 23,
        "widgets.example.com": 1,
        "nodes": 1,
        "secrets": 1,
    }
    assert got.encrypted == 1
    assert got.largest[0] == ("/registry/configmaps/ns3/cm159", 40 * 159)
    assert dict(got.namespaces)["default"] == 2


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"0", "invalid revision length: 1"),  # TestSnapshotStatusCorruptRevision
        (struct.pack(">qcq", -1, b"_", 0), "negative revision: main=-1 sub=0"),
        (struct.pack(">qcq", 1, b"_", -1), "negative revision: main=1 sub=-1"),
        (struct.pack(">QcQ", 1, b"x", 0), "invalid separator"),
    ],
)
def test_bad_revision_keys_are_etcdutls_errors(raw: bytes, message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        parse_revision(raw)


def test_revision_keys_and_tombstones() -> None:
    assert parse_revision(struct.pack(">QcQ", 7, b"_", 2)) == Revision(7, 2, False)
    assert parse_revision(struct.pack(">QcQ", 7, b"_", 0) + b"t").tombstone


def test_an_empty_value_is_a_key_value_with_the_empty_key() -> None:
    # what restore --bump-revision writes; etcdutl counts it as the key ""
    assert parse_key_value(b"").key == b""
    kv = parse_key_value(b"\x0a\x03abc\x10\x05\x18\x06\x20\x01\x2a\x02hi\x30\x09")
    assert (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease) == (
        b"abc",
        5,
        6,
        1,
        b"hi",
        9,
    )


@pytest.mark.parametrize(
    ("n", "text"),
    [  # go-humanize bytes_test.go TestBytes (SI)
        (0, "0 B"),
        (1, "1 B"),
        (803, "803 B"),
        (999, "999 B"),
        (1024, "1.0 kB"),
        (9999, "10 kB"),
        (1000**2 - 1, "1000 kB"),
        (1024 * 1024, "1.0 MB"),
        (1000**3 - 1000, "1000 MB"),
        (1000**3, "1.0 GB"),
        (1000**4 - 1000**2, "1000 GB"),
        (9999 * 1000, "10 MB"),
        (1000**4, "1.0 TB"),
        (1000**5 - 1000**4, "999 TB"),
        (1000**5, "1.0 PB"),
        (1000**6 - 1000**5, "999 PB"),
        (1000**6, "1.0 EB"),
        (int(5.5 * 1000**3), "5.5 GB"),
        (20480, "20 kB"),  # etcdutl's output for a fresh snapshot
    ],
)
def test_sizes_print_as_etcdutl_prints_them(n: int, text: str) -> None:
    assert humanize_bytes(n) == text


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (b"/registry/deployments/default/web", ("deployments", "default", "web")),
        (b"/registry/namespaces/default", ("namespaces", "", "default")),
        (b"/registry/minions/node-1", ("nodes", "", "node-1")),
        (b"/registry/services/specs/default/kubernetes", ("services", "default", "kubernetes")),
        (
            b"/registry/services/endpoints/default/kubernetes",
            ("endpoints", "default", "kubernetes"),
        ),
        (b"/registry/controllers/ns/rc", ("replicationcontrollers", "ns", "rc")),
        (b"/registry/ingress/ns/i", ("ingresses", "ns", "i")),
        (
            b"/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
            ("customresourcedefinitions.apiextensions.k8s.io", "", "widgets.example.com"),
        ),
        (b"/registry/example.com/widgets/ns/w", ("widgets.example.com", "ns", "w")),
        (b"compact_rev_key", ("", "", "compact_rev_key")),
    ],
)
def test_etcd_keys_name_kubernetes_objects(key: bytes, expected: tuple[str, str, str]) -> None:
    ok = object_key(key)
    assert (ok.resource, ok.namespace, ok.name) == expected


# -- corruption: what bbolt's Check and Open catch, as clean errors -----------------------------


def without_trailer(data: bytes) -> bytes:
    return data[:-32]


def pages(data: bytes, page_size: int = 4096) -> dict[int, tuple[int, int]]:
    """page id -> (flags, count) of every page header that is where it claims to be."""
    out = {}
    for pid in range(len(data) // page_size):
        i, flags, count, _ = struct.unpack_from("<QHHI", data, pid * page_size)
        if i == pid:
            out[pid] = (flags, count)
    return out


def live_branch(tmp_path: Path, data: bytes) -> int:
    """The root page of bucket ``key`` in the registry fixture: a branch page in use."""
    with open_bolt(write(tmp_path, data, "probe.db")) as db:
        bucket = db.bucket(b"key")
        assert bucket is not None and db.page(bucket.root)[1] == BRANCH
        return bucket.root


def test_a_flipped_data_byte_fails_the_sha256(tmp_path: Path) -> None:
    data = bytearray(fixture("registry"))
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(SnapshotError, match="SHA-256 trailer does not match"):
        status(write(tmp_path, bytes(data)))


def test_a_branch_pointing_twice_at_one_child_is_found(tmp_path: Path) -> None:
    data = bytearray(without_trailer(fixture("registry")))
    off = live_branch(tmp_path, bytes(data)) * 4096 + 16
    child0 = data[off + 8 : off + 16]
    data[off + 16 + 8 : off + 32] = child0  # element 1 -> element 0's child
    path = write(tmp_path, bytes(data))
    with open_bolt(path) as db:
        errors = db.check()
    assert any("multiple references" in e for e in errors)
    with pytest.raises(SnapshotError, match="integrity check failed"):
        status(path)


def test_swapped_children_break_the_key_order(tmp_path: Path) -> None:
    data = bytearray(without_trailer(fixture("registry")))
    off = live_branch(tmp_path, bytes(data)) * 4096 + 16
    a, b = bytes(data[off + 8 : off + 16]), bytes(data[off + 24 : off + 32])
    data[off + 8 : off + 16], data[off + 24 : off + 32] = b, a
    with open_bolt(write(tmp_path, bytes(data))) as db:
        errors = db.check()
    assert any("needs to be" in e for e in errors), errors


def test_a_page_that_is_not_where_it_says_is_an_error(tmp_path: Path) -> None:
    data = bytearray(without_trailer(fixture("registry")))
    branch = live_branch(tmp_path, bytes(data))
    (leaf,) = struct.unpack_from("<Q", data, branch * 4096 + 16 + 8)  # element 0's child
    assert pages(bytes(data))[leaf][0] == LEAF
    struct.pack_into("<Q", data, leaf * 4096, leaf + 1000)
    with pytest.raises(SnapshotError, match=f"page {leaf}"):
        status(write(tmp_path, bytes(data)))


def test_one_bad_meta_page_falls_back_to_the_other(tmp_path: Path) -> None:
    data = bytearray(fixture("duplicate-keys"))
    data[16 + 20] ^= 0xFF  # meta 0's page size: its checksum fails; meta 1 (txid - 1) is used
    assert (
        status(write(tmp_path, without_trailer(bytes(data)))).etcdutl()
        == EXPECTED["duplicate-keys"]
    )


def test_both_bad_meta_pages_are_not_a_database(tmp_path: Path) -> None:
    data = bytearray(without_trailer(fixture("duplicate-keys")))
    data[16 + 60] ^= 0xFF
    data[4096 + 16 + 60] ^= 0xFF
    with pytest.raises(SnapshotError, match=r"no valid meta page|both meta pages"):
        status(write(tmp_path, bytes(data)))


@pytest.mark.parametrize("keep", [0, 100, 4096, 8192, 20000, 300000])
def test_a_truncated_snapshot_is_an_error(tmp_path: Path, keep: int) -> None:
    with pytest.raises(SnapshotError):
        status(write(tmp_path, fixture("registry")[:keep]))


def test_a_file_that_is_not_bbolt_is_named(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="not a bbolt database"):
        status(write(tmp_path, b"hello " * 1000))
    with pytest.raises(SnapshotError, match="no such file"):
        status(tmp_path / "missing.db")


REGISTRY = without_trailer(fixture("registry"))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(REGISTRY) - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.integers(0, len(REGISTRY))),
)
def test_fuzzed_snapshots_give_an_answer_or_a_clean_error(
    tmp_path: Path, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(REGISTRY)
    # aim half of the edits at page headers and element arrays, where the structure lives
    for pos, value in edits:
        if pos % 2:
            pos = (pos // 4096) * 4096 + pos % 64
        data[pos] = value
    if cut is not None:
        del data[cut:]
    message = ""
    try:
        status(write(tmp_path, bytes(data), "fuzz.db"))
    except SnapshotError as e:
        message = str(e) or "(empty message)"
    assert "\n" not in message and message != "(empty message)"
