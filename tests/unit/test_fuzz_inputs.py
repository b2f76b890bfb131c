"""Property-based tests for what kubecare reads from outside: static pod manifests, kubeconfigs,
upgrade journals, kubeadm's ClusterConfiguration, backup manifests and archives (snapshot files:
tests/unit/test_etcd_snapshot.py). Whatever the input, the answer is a value or kubecare's own
error with a one-line message — never another exception, which the CLI would show as a crash.

Inputs are made three ways: any YAML/JSON value; a real document (kubeadm v1.37.2's manifests,
a real journal, a real archive) with one part replaced by any value; and the real text or bytes
cut short or with bytes changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubecare.errors import KubecareError

from .test_backup_logic import cm, write_archive
from .test_etcd_restore import DATA, MANIFEST, kubeadm_etcd_yaml

FUZZ = settings(
    max_examples=int(os.environ.get("KUBECARE_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: any value YAML or JSON can hold
values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=16,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document, the document itself included."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths(v, (*prefix, i))
    return out


def replaced(doc: Any, where: tuple[Any, ...], value: Any) -> Any:
    if not where:
        return value
    head, rest = where[0], where[1:]
    if isinstance(doc, dict):
        return {**doc, head: replaced(doc[head], rest, value)}
    copy = list(doc)
    copy[head] = replaced(doc[head], rest, value)
    return copy


def mutations(doc: Any) -> st.SearchStrategy[Any]:
    """``doc`` with one of its parts (anywhere, the whole included) replaced by any value."""
    places = paths(doc)
    return st.tuples(st.sampled_from(places), values).map(lambda pv: replaced(doc, *pv))


def damaged(text: str) -> st.SearchStrategy[str]:
    """``text`` cut short, or with a few characters changed."""
    cut = st.integers(0, len(text)).map(lambda n: text[:n])
    edits = st.lists(
        st.tuples(
            st.integers(0, max(0, len(text) - 1)), st.sampled_from(list(":-[]{}'\"\n\t #&*!|>%@`"))
        ),
        min_size=1,
        max_size=6,
    )

    def edit(changes: list[tuple[int, str]]) -> str:
        chars = list(text)
        for pos, ch in changes:
            chars[pos] = ch
        return "".join(chars)

    return cut | edits.map(edit)


def one_line(e: BaseException) -> None:
    message = str(e)
    assert message and "\n" not in message.strip(), repr(message)


def answers_or_own_error(call: Callable[[], Any], *own: type[BaseException]) -> None:
    try:
        call()
    except (KubecareError, *own) as e:
        one_line(e)


def sections() -> dict[str, str]:
    out = {}
    for section in DATA.read_text().split("##### ")[1:]:
        title, _, body = section.partition("\n")
        out[title.strip()] = body
    return out


MANIFESTS = sections()
ETCD_DOC = yaml.safe_load(kubeadm_etcd_yaml())


# -- static pod manifests -------------------------------------------------------------------


def _as_text(doc: Any) -> str:
    return yaml.safe_dump(doc) if not isinstance(doc, str) else doc


@FUZZ
@given(doc=values | mutations(ETCD_DOC) | damaged(kubeadm_etcd_yaml()))
def test_an_etcd_manifest_is_read_or_refused(doc: Any) -> None:
    from kubecare.etcd.members import parse_member

    answers_or_own_error(lambda: parse_member(MANIFEST, _as_text(doc)))


@FUZZ
@given(doc=mutations(ETCD_DOC) | damaged(kubeadm_etcd_yaml()))
def test_an_etcd_manifest_is_repointed_or_refused(doc: Any, tmp_path: Path) -> None:
    """The restore's edit of etcd.yaml (the data dir's hostPath) on a manifest that parsed."""
    from kubecare.errors import EtcdError
    from kubecare.etcd.members import parse_member
    from kubecare.etcd.restore import pointed_at

    text = _as_text(doc)
    try:
        member = parse_member(MANIFEST, text)
    except EtcdError:
        return
    answers_or_own_error(lambda: pointed_at(text, member, tmp_path / "new"))


@FUZZ
@given(
    name=st.sampled_from(sorted(MANIFESTS)),
    data=st.data(),
)
def test_the_sandbox_runner_plans_a_static_pod_or_refuses_it(
    name: str, data: st.DataObject, tmp_path: Path
) -> None:
    from kubecare.sandbox.staticpods import ImageNotBuilt, ManifestError, parse_manifest

    text = MANIFESTS[name]
    doc = data.draw(values | mutations(yaml.safe_load(text)) | damaged(text))
    raw = _as_text(doc).encode()
    answers_or_own_error(
        lambda: parse_manifest(
            tmp_path / name, raw, root=tmp_path, resolve=lambda c, t: f"/cache/{c}-{t}"
        ),
        ManifestError,
        ImageNotBuilt,
    )


# -- kubeadm's ClusterConfiguration ---------------------------------------------------------

CLUSTER_CONFIGURATION = {
    "apiVersion": "kubeadm.k8s.io/v1beta4",
    "kind": "ClusterConfiguration",
    "kubernetesVersion": "v1.37.2",
    "etcd": {"local": {"dataDir": "/var/lib/etcd"}},
    "apiServer": {"extraArgs": [{"name": "audit-log-path", "value": "/var/log/a.log"}]},
    "controllerManager": {"extraArgs": [{"name": "node-monitor-grace-period", "value": "50s"}]},
}


@FUZZ
@given(
    doc=values | mutations(CLUSTER_CONFIGURATION) | damaged(yaml.safe_dump(CLUSTER_CONFIGURATION))
)
def test_a_cluster_configuration_is_read_or_refused(doc: Any) -> None:
    from kubecare.etcd.kubeadm_config import with_data_dir
    from kubecare.nodes.settings import kubeadm_extra_args

    text = _as_text(doc)
    answers_or_own_error(lambda: with_data_dir(text, "/var/lib/etcd-new"))
    extra = kubeadm_extra_args(text)  # best effort by design: anything odd reads as no flags
    assert all(isinstance(v, dict) for v in extra.values())


# -- kubeconfigs ----------------------------------------------------------------------------

KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "a",
    "clusters": [
        {
            "name": "c",
            "cluster": {"server": "https://127.0.0.1:6443", "insecure-skip-tls-verify": True},
        }
    ],
    "users": [
        {"name": "u", "user": {"token": "t"}},
        {"name": "i", "user": {"token": "t", "as": "bob", "as-groups": ["ops"]}},
        {
            "name": "x",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "true",
                    "args": ["a"],
                    "env": [{"name": "A", "value": "b"}],
                }
            },
        },
    ],
    "contexts": [
        {"name": "a", "context": {"cluster": "c", "user": "u", "namespace": "n"}},
        {"name": "b", "context": {"cluster": "c", "user": "x"}},
        {"name": "i", "context": {"cluster": "c", "user": "i"}},
    ],
}


@FUZZ
@given(
    doc=values | mutations(KUBECONFIG) | damaged(yaml.safe_dump(KUBECONFIG)),
    context=st.sampled_from([None, "a", "b", "i", "zz"]),
)
def test_a_kubeconfig_gives_a_connection_or_a_config_error(
    doc: Any, context: str | None, tmp_path: Path
) -> None:
    from kubecare.kube.client import ClientOptions
    from kubecare.kube.config import load_connection

    path = tmp_path / "config"
    path.write_text(_as_text(doc))
    answers_or_own_error(
        lambda: load_connection(ClientOptions(kubeconfig=str(path), context=context))
    )


# -- upgrade journals -----------------------------------------------------------------------

JOURNAL = {
    "target": "v1.37.2",
    "started": "2026-12-07T07:00:00Z",
    "executor": "sandbox",
    "strategy": "rolling",
    "max_unavailable": 1,
    "nodes": [
        {"name": "cp", "role": "control-plane", "batch": 0, "state": "done"},
        {"name": "w1", "role": "worker", "batch": 1, "state": "pending"},
    ],
    "state": "running",
    "format": 1,
}


def test_the_journal_template_is_a_real_journal() -> None:
    from kubecare.upgrade.journal import Journal

    j = Journal.from_json(json.dumps(JOURNAL), "test")
    assert [n.name for n in j.nodes] == ["cp", "w1"]
    assert Journal.from_json(j.to_json(), "again") == j


@FUZZ
@given(doc=values | mutations(JOURNAL) | damaged(json.dumps(JOURNAL)))
def test_a_journal_is_read_or_refused(doc: Any) -> None:
    from kubecare.upgrade.journal import Journal

    raw = doc if isinstance(doc, str) else json.dumps(doc)
    try:
        j = Journal.from_json(raw, "the-journal")
    except KubecareError as e:
        one_line(e)
        return
    # What was read is usable by what reads it next: the status table, the resume.
    from kubecare.cli.upgrade import status_text
    from kubecare.upgrade import journal as jr

    assert all(isinstance(n, jr.NodeRecord) for n in j.nodes)
    status_text(j)
    assert Journal.from_json(j.to_json(), "again") == j


# -- backup manifests and archives ----------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz") / "b.tar.zst"
    write_archive(path, {"configmaps": [cm("x"), cm("y")], "secrets": []})
    return path.read_bytes()


def _manifest_of(archive: bytes, tmp: Path) -> dict[str, Any]:
    from kubecare.backup.archive import ArchiveReader

    path = tmp / "m.tar.zst"
    path.write_bytes(archive)
    with ArchiveReader.open(path) as r:
        return dict(r.manifest)


def _read_everything(path: Path) -> None:
    """What describe, verify and restore do with an archive before touching a cluster."""
    from kubecare.backup.archive import ArchiveReader
    from kubecare.backup.verify import checked_members, verify

    with ArchiveReader.open(path) as r:
        report = verify(r)
        for problem in report.problems:
            assert "\n" not in problem
        for entry in r.manifest["types"]:
            for _ in checked_members(r, entry):
                pass


@FUZZ
@given(data=st.data())
def test_a_backup_manifest_is_checked_before_use(
    data: st.DataObject, archive: bytes, tmp_path: Path
) -> None:
    from kubecare.backup.archive import check_manifest

    manifest = _manifest_of(archive, tmp_path)
    doc = data.draw(values | mutations(manifest))
    if isinstance(doc, dict):
        answers_or_own_error(lambda: check_manifest(doc, "b.tar.zst"))


@FUZZ
@given(data=st.data())
def test_an_archive_with_a_rewritten_manifest_is_read_or_refused(
    data: st.DataObject, archive: bytes, tmp_path: Path
) -> None:
    """The manifest is what points into the archive (offsets, lengths, paths): any value there,
    in a well-formed archive, reads or is refused, and never reads outside the archive."""
    manifest = _manifest_of(archive, tmp_path)
    doc = data.draw(mutations(manifest))
    path = tmp_path / "rewritten.tar.zst"
    rewrite_manifest(archive, doc, path)
    answers_or_own_error(lambda: _read_everything(path))


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_a_damaged_archive_is_read_or_refused(
    edits: list[tuple[int, int]], cut: int | None, archive: bytes, tmp_path: Path
) -> None:
    data = bytearray(archive)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    path = tmp_path / "damaged.tar.zst"
    path.write_bytes(bytes(data))
    answers_or_own_error(lambda: _read_everything(path))


def rewrite_manifest(archive: bytes, manifest: Any, path: Path) -> None:
    """The archive with its manifest frame and footer replaced (the type frames kept)."""
    from kubecare.backup import archive as ar

    end = len(archive) - ar._FOOTER.size
    _, _, _, offset, _ = ar._FOOTER.unpack(archive[end:])
    body = json.dumps(manifest).encode()
    import zstandard

    header = ar._tar_header(ar.MANIFEST, len(body), 0)
    frame = zstandard.ZstdCompressor().compress(
        header + body + ar._padding(len(body)) + b"\0" * 1024
    )
    footer = ar._FOOTER.pack(
        ar._SKIPPABLE_MAGIC, ar._FOOTER.size - 8, ar._FOOTER_TAG, offset, len(frame)
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, archive[:offset] + frame + footer)
    finally:
        os.close(fd)


def test_rewriting_the_manifest_keeps_a_good_archive_good(archive: bytes, tmp_path: Path) -> None:
    """The fuzzer's rewrite is faithful: the unchanged manifest, rewritten, still verifies."""
    path = tmp_path / "same.tar.zst"
    rewrite_manifest(archive, _manifest_of(archive, tmp_path), path)
    _read_everything(path)


def test_a_tar_header_claiming_gigabytes_is_truncated_not_a_memory_error() -> None:
    """What the fuzz test found once: a damaged size field (octal 77777777777, 8 GiB) in a
    short stream; reading it whole at once raised MemoryError."""
    import io

    from kubecare.backup.archive import iter_tar
    from kubecare.errors import KubecareError

    head = bytearray(512)
    head[0:4] = b"file"
    head[124:136] = b"77777777777\0"
    head[156:157] = b"0"

    class Zstdlike(io.BytesIO):
        """zstd's stream reader allocates what it is asked for; this one records the ask."""

        asked = 0

        def read(self, n: int | None = -1) -> bytes:
            self.asked = max(self.asked, n or 0)
            return super().read(n)

    stream = Zstdlike(bytes(head) + b"x" * 4096)
    with pytest.raises(KubecareError, match="is truncated"):
        list(iter_tar(stream, "archive b.tar.zst"))
    assert stream.asked <= 1 << 20
