"""Volume backups' pure parts: which claims are copied and how, the helper pod, the hooks'
annotations, the volume member in a real archive (plain and age-encrypted, checked and
tamper-detected), and the exec stream's framing."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
import zstandard

from kubecare.backup import volumes as vol
from kubecare.backup.archive import (
    FORMAT,
    FORMAT_VERSION,
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
)
from kubecare.backup.verify import verify
from kubecare.errors import UsageError
from kubecare.kube import websocket as ws
from kubecare.kube.podexec import exit_status


def pvc(
    name: str, ns: str = "app", phase: str = "Bound", volume: str = "pv-1", **spec: object
) -> dict:
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {"volumeName": volume, "storageClassName": "kubecare-local",
                 "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 **spec},
        "status": {"phase": phase, "capacity": {"storage": "1Gi"}},
    }  # fmt: skip


def pv(name: str, node: str | None = "real-1") -> dict:
    spec: dict = {}
    if node:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}  # fmt: skip
    return {"metadata": {"name": name}, "spec": spec}


def pod(name: str, claim: str, node: str = "real-2", ns: str = "app", phase: str = "Running",
        annotations: dict[str, str] | None = None) -> dict:  # fmt: skip
    return {
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": {"nodeName": node, "containers": [{"name": "db"}, {"name": "side"}],
                 "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": claim}}]},
        "status": {"phase": phase},
    }  # fmt: skip


def test_the_node_is_the_volumes_own_else_the_pod_that_mounts_it() -> None:
    plans = vol.plan_volumes(
        [pvc("local"), pvc("net", volume="pv-2")],
        [pv("pv-1", "real-1"), pv("pv-2", None)],
        [pod("p1", "local", node="real-9"), pod("p2", "net", node="real-2")],
    )
    by = {p.claim: p for p in plans}
    assert by["local"].node == "real-1"  # the volume's affinity wins over where a pod runs
    assert by["net"].node == "real-2" and by["net"].pods == ("p2",)
    assert not by["local"].skip and by["local"].capacity == "1Gi"


def test_claims_that_hold_nothing_or_cannot_be_copied_are_skipped_with_the_reason() -> None:
    plans = vol.plan_volumes(
        [pvc("pending", phase="Pending", volume=""), pvc("block", volumeMode="Block"),
         pvc("once", accessModes=["ReadWriteOncePod"]), pvc("left"), pvc("idle", volume="pv-9")],
        [pv("pv-1"), pv("pv-9", None)],
        [pod("p", "once"), pod("gone", "idle", phase="Succeeded")],
        {"app/left"},
    )  # fmt: skip
    why = {p.claim: p.skip for p in plans}
    assert why["pending"].startswith("not bound")
    assert why["block"].startswith("a block volume")
    assert why["once"].startswith("ReadWriteOncePod")
    assert why["left"].startswith("excluded")
    # no running pod and no node affinity: the scheduler places the helper
    assert why["idle"] == "" and next(p for p in plans if p.claim == "idle").node is None


def test_hooks_come_from_the_pods_annotations_like_veleros() -> None:
    pre = vol.HOOK_PREFIX["pre"]
    post = vol.HOOK_PREFIX["post"]
    p = pod("db-0", "data", annotations={
        pre + "command": '["sh", "-c", "sync; touch /data/frozen"]', pre + "container": "side",
        pre + "timeout": "2m", post + "command": "unfreeze", post + "on-error": "Continue"})  # fmt: skip
    [plan] = vol.plan_volumes([pvc("data")], [pv("pv-1")], [p])
    assert plan.pre == (vol.Hook("db-0", "side", ("sh", "-c", "sync; touch /data/frozen"),
                                 "Fail", 120.0),)  # fmt: skip
    # one string is one argument; the container defaults to the pod's first
    assert plan.post == (vol.Hook("db-0", "db", ("unfreeze",), "Continue", 30.0),)


@pytest.mark.parametrize(
    "annotations",
    [{"command": "[not json"}, {"command": "[]"}, {"command": "[1, 2]"},
     {"command": "x", "on-error": "Ignore"}, {"command": "x", "timeout": "soon"}],
)  # fmt: skip
def test_a_malformed_hook_is_a_usage_error_naming_the_pod(annotations: dict[str, str]) -> None:
    p = pod("db-0", "data", annotations={vol.HOOK_PREFIX["pre"] + k: v
                                         for k, v in annotations.items()})  # fmt: skip
    with pytest.raises(UsageError, match="db-0"):
        vol.plan_volumes([pvc("data")], [pv("pv-1")], [p])


def test_the_helper_pod_mounts_the_claim_read_only_and_cannot_outlive_its_deadline() -> None:
    p = vol.helper_pod("app", "Data_Claim.x", "img:1", node="real-1", read_only=True,
                       purpose="backup")  # fmt: skip
    spec = p["spec"]
    assert p["metadata"]["name"].startswith("kubecare-backup-data-claim-x-")
    assert spec["nodeName"] == "real-1" and spec["tolerations"] == [{"operator": "Exists"}]
    assert spec["automountServiceAccountToken"] is False
    assert spec["activeDeadlineSeconds"] == vol.HELPER_DEADLINE
    assert spec["volumes"][0]["persistentVolumeClaim"] == {"claimName": "Data_Claim.x",
                                                           "readOnly": True}  # fmt: skip
    assert spec["containers"][0]["volumeMounts"][0]["readOnly"] is True
    r = vol.helper_pod("app", "c", "img:1", node=None, read_only=False, purpose="restore",
                       on_node="real-2")  # fmt: skip
    # a restore's claim is provisioned for the pod the scheduler places: affinity, not nodeName
    assert "nodeName" not in r["spec"]
    terms = r["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["real-2"]


def small_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in (("./hello", b"hello\n"), ("./sub/blob", os.urandom(300_000))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_archive(path: Path, data: bytes, recipients: list | None = None,
                  claim: str = "data") -> dict:  # fmt: skip
    writer = ArchiveWriter(path)
    member = vol.MemberWriter(writer, path.parent, recipients)
    for i in range(0, len(data), 7000):  # as the exec stream hands it over
        member.write(data[i : i + 7000])
    assert member.complete
    name = vol.member_path("app", claim, encrypted=bool(recipients))
    spans = member.finish(name, 1_700_000_000)
    member.close()
    entry = {"namespace": "app", "claim": claim, "method": "fs", "node": "real-1",
             "path": name, "encrypted": bool(recipients), "bytes": len(data),
             "size": member.size, **spans}  # fmt: skip
    writer.commit({"format": FORMAT, "formatVersion": FORMAT_VERSION, "types": [],
                   "volumes": [entry]}, 1_700_000_000)  # fmt: skip
    return entry


@pytest.mark.parametrize("claim", ["data", "a-claim-name-long-enough-for-a-pax-header-" * 4])
def test_a_volume_is_one_member_that_tar_extracts_and_verify_checks(
    tmp_path: Path, claim: str
) -> None:
    data = small_tar()
    path = tmp_path / "b.tar.zst"
    claim = claim.rstrip("-")
    write_archive(path, data, claim=claim)
    assert path.stat().st_mode & 0o777 == 0o600
    with ArchiveReader.open(path) as r:
        assert verify(r).ok
        [entry] = r.manifest["volumes"]
        assert b"".join(vol.volume_chunks(r, entry, chunk=1000)) == data
    # standard tools: the archive is one zstd stream of one tar, the volume a file in it
    with path.open("rb") as f:
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        inner = t.extractfile(f"volumes/app/{claim}.tar")
        assert inner is not None and inner.read() == data


def test_a_changed_byte_in_a_volume_fails_verification(tmp_path: Path) -> None:
    path = tmp_path / "b.tar.zst"
    entry = write_archive(path, small_tar())
    blob = bytearray(path.read_bytes())
    blob[entry["frame"]["offset"] + entry["frame"]["length"] // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with ArchiveReader.open(path) as r:
        report = verify(r)
        assert not report.ok and "volume app/data" in report.problems[0]
        with pytest.raises(ArchiveError):
            b"".join(vol.volume_chunks(r, r.manifest["volumes"][0]))


def test_an_encrypted_volume_round_trips_through_one_age_stream(tmp_path: Path) -> None:
    from kubecare.backup.secrets import identities, new_identity, recipients

    text, recipient = new_identity("now")
    key = tmp_path / "key"
    key.write_text(text)
    key.chmod(0o600)
    data = small_tar()
    path = tmp_path / "b.tar.zst"
    entry = write_archive(path, data, recipients([recipient]))
    assert entry["path"].endswith(".tar.age") and entry["size"] > len(data)

    async def read_back(ids: list | None) -> bytes:
        with ArchiveReader.open(path) as r:
            assert verify(r).ok
            entry = r.manifest["volumes"][0]
            plain = await asyncio.to_thread(vol.decrypted, r, entry, ids, tmp_path)
            try:
                return b"".join([c async for c in vol._stdin_from(r, entry, plain)])
            finally:
                plain.close()

    assert asyncio.run(read_back(identities(key))) == data
    with pytest.raises(UsageError, match="--identity"):
        asyncio.run(read_back(None))
    other, _ = new_identity("now")
    wrong = tmp_path / "wrong"
    wrong.write_text(other)
    wrong.chmod(0o600)
    with pytest.raises(ArchiveError, match="cannot be decrypted"):
        asyncio.run(read_back(identities(wrong)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar.zst", "key", "wrong"]


@pytest.mark.parametrize(
    "change",
    [{"namespace": "../x"}, {"claim": "a/b"}, {"path": "resources/x"}, {"size": -1},
     {"sha256": "nope"}, {"frame": {"offset": "0", "length": 1, "sha256": "x"}}],
)  # fmt: skip
def test_a_malformed_volume_record_is_refused(tmp_path: Path, change: dict) -> None:
    good = {"namespace": "app", "claim": "data", "path": "volumes/app/data.tar", "size": 1,
            "sha256": "0" * 64, "header": {"offset": 0, "length": 4096, "sha256": "0" * 64},
            "frame": {"offset": 4096, "length": 1, "sha256": "0" * 64}}  # fmt: skip
    vol.check_volume_entries({"volumes": [good]}, "b")
    with pytest.raises(ArchiveError, match="malformed"):
        vol.check_volume_entries({"volumes": [{**good, **change}]}, "b")
    apart = {**good, "frame": {"offset": 4097, "length": 1, "sha256": "0" * 64}}
    with pytest.raises(ArchiveError, match="malformed"):  # the header not right before the data
        vol.check_volume_entries({"volumes": [apart]}, "b")


# -- the exec stream --------------------------------------------------------------------------


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

        class T:
            def abort(self) -> None:
                pass

        self.transport = T()

    def write(self, b: bytes) -> None:
        self.data += b

    async def drain(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def unframe(raw: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(raw):
        op, n = raw[i] & 0x0F, raw[i + 1] & 0x7F
        assert raw[i + 1] & 0x80  # every client frame is masked (RFC 6455 5.3)
        i += 2
        if n == 126:
            (n,) = struct.unpack("!H", raw[i : i + 2])
            i += 2
        elif n == 127:
            (n,) = struct.unpack("!Q", raw[i : i + 8])
            i += 8
        key = raw[i : i + 4]
        i += 4
        out.append((op, ws.mask(raw[i : i + n], key)))
        i += n
    return out


def test_client_frames_are_masked_and_a_large_message_is_split() -> None:
    async def go() -> list[tuple[int, bytes]]:
        sink = Sink()
        sock = ws.WebSocket(asyncio.StreamReader(), sink)  # type: ignore[arg-type]
        await sock.send(b"\x00" + b"x" * 200)
        await sock.send(b"y" * (ws.MAX_FRAME + 10))
        return unframe(bytes(sink.data))

    frames = asyncio.run(go())
    assert frames[0] == (ws.OP_BINARY, b"\x00" + b"x" * 200)
    assert [op for op, _ in frames[1:]] == [ws.OP_BINARY, ws.OP_CONT]
    assert b"".join(p for _, p in frames[1:]) == b"y" * (ws.MAX_FRAME + 10)


def test_fragments_are_joined_pings_answered_and_a_close_ends_the_stream() -> None:
    async def go() -> tuple[list[bytes | None], list[tuple[int, bytes]], int | None]:
        reader, sink = asyncio.StreamReader(), Sink()
        reader.feed_data(server_frame(ws.OP_BINARY, b"\x01ab", fin=False)
                         + server_frame(ws.OP_PING, b"hi")
                         + server_frame(ws.OP_CONT, b"cd")
                         + server_frame(ws.OP_BINARY, b"\x02" + b"z" * 70000)
                         + server_frame(ws.OP_CLOSE, struct.pack("!H", 1000)))  # fmt: skip
        sock = ws.WebSocket(reader, sink)  # type: ignore[arg-type]
        got = [await sock.recv() for _ in range(3)]
        return got, unframe(bytes(sink.data)), sock.close_code

    got, sent, code = asyncio.run(go())
    assert got == [b"\x01abcd", b"\x02" + b"z" * 70000, None] and code == 1000
    assert sent == [(ws.OP_PONG, b"hi"), (ws.OP_CLOSE, struct.pack("!H", 1000))]


def test_a_stream_cut_mid_frame_is_a_protocol_error() -> None:
    from kubecare.kube.http import ProtocolError

    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(server_frame(ws.OP_BINARY, b"\x01" + b"a" * 100)[:50])
        reader.feed_eof()
        await ws.WebSocket(reader, Sink()).recv()  # type: ignore[arg-type]

    with pytest.raises(ProtocolError):
        asyncio.run(go())


def test_the_accept_key_is_the_rfcs_example() -> None:
    assert (
        ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    )  # RFC 6455 1.3


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"status": "Success"}, (0, "")),
        ({"status": "Failure", "reason": "NonZeroExitCode", "message": "exit 2",
          "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}}, (2, "exit 2")),
        ({"status": "Failure", "message": "container not found"}, (-1, "container not found")),
        ({"status": "Failure", "reason": "NonZeroExitCode",
          "details": {"causes": [{"reason": "ExitCode", "message": "x"}]}},
         (-1, "the command failed")),
    ],
)  # fmt: skip
def test_the_error_channel_decodes_as_client_gos_v4_decoder(status: dict, expected: tuple) -> None:
    assert exit_status(orjson.dumps(status)) == expected


def test_a_tar_stream_that_stopped_early_is_not_complete(tmp_path: Path) -> None:
    data = small_tar()
    results = []
    for part in (data, data[: len(data) // 2 // 512 * 512]):  # whole blocks, no end of archive
        writer = ArchiveWriter(tmp_path / "x.tar.zst")
        member = vol.MemberWriter(writer, tmp_path, None)
        member.write(part)
        results.append(member.complete)
        writer.abort()
    assert results == [True, False]
    assert list(tmp_path.iterdir()) == []


def run_stream(frames: bytes, stdin: list[bytes] | None = None) -> object:
    """kubecare.kube.podexec._run over a canned server stream."""
    from kubecare.kube.podexec import _run

    async def go() -> object:
        reader, sink = asyncio.StreamReader(), Sink()
        reader.feed_data(frames)
        reader.feed_eof()

        async def source() -> AsyncIterator[bytes]:
            for chunk in stdin or []:
                yield chunk

        out = bytearray()
        result = await _run(ws.WebSocket(reader, sink), "exec in pod x",  # type: ignore[arg-type]
                            source() if stdin is not None else None, out.extend, 5)  # fmt: skip
        return result, bytes(out)

    return asyncio.run(go())


SUCCESS = server_frame(ws.OP_BINARY, b"\x03" + orjson.dumps({"status": "Success"}))
CLOSE = server_frame(ws.OP_CLOSE, struct.pack("!H", 1000))


def test_an_exec_stream_ends_with_its_status() -> None:
    result, out = run_stream(server_frame(ws.OP_BINARY, b"\x01data") + SUCCESS + CLOSE)  # type: ignore[misc]
    assert out == b"data" and result.exit_code == 0


def test_a_stream_closed_cleanly_without_a_status_was_cut() -> None:
    """A cut at a message boundary, closed with 1000: without the status, not an end."""
    from kubecare.errors import Unreachable

    with pytest.raises(Unreachable, match="before the command's exit status"):
        run_stream(server_frame(ws.OP_BINARY, b"\x01part of it") + CLOSE)
    with pytest.raises(Unreachable, match="stream was cut"):  # no close at all
        run_stream(server_frame(ws.OP_BINARY, b"\x01part of it"))


def test_a_failing_stdin_source_fails_the_exec_with_its_own_error() -> None:
    from kubecare.errors import KubecareError
    from kubecare.kube.podexec import _run

    async def go() -> None:
        reader = asyncio.StreamReader()  # the server says nothing: the source's error must win

        async def source() -> AsyncIterator[bytes]:
            yield b"x"
            raise ArchiveError("b.tar.zst (volume app/data) does not match its sha256")

        await _run(ws.WebSocket(reader, Sink()), "exec", source(), None, 30)  # type: ignore[arg-type]

    with pytest.raises(KubecareError, match="does not match its sha256"):
        asyncio.run(asyncio.wait_for(go(), 10))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (bytes([0x82, 0x80 | 3]) + b"\0\0\0\0" + b"abc", "masked"),  # a masked server frame
        (bytes([0xC2, 3]) + b"abc", "reserved bits"),  # RSV1 without an extension
        (bytes([0x83, 3]) + b"abc", "unknown opcode"),
        (server_frame(ws.OP_CONT, b"abc"), "out of order"),  # a continuation of nothing
        (server_frame(ws.OP_BINARY, b"a", fin=False) + server_frame(ws.OP_BINARY, b"b"),
         "out of order"),  # a new message inside a fragmented one
        (server_frame(ws.OP_PING, b"x", fin=False), "control frame"),
    ],
)  # fmt: skip
def test_a_frame_the_rfc_forbids_is_a_protocol_error(raw: bytes, why: str) -> None:
    from kubecare.kube.http import ProtocolError

    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        await ws.WebSocket(reader, Sink()).recv()  # type: ignore[arg-type]

    with pytest.raises(ProtocolError, match=why):
        asyncio.run(go())


def test_a_connection_reset_while_sending_is_a_cut_stream_not_a_crash() -> None:
    """drain() raising a bare ConnectionResetError (the peer reset it) ends as Unreachable:
    never a traceback, never an exit 0 from a broken pipe."""
    from kubecare.errors import Unreachable
    from kubecare.kube.podexec import _run

    class Reset(Sink):
        async def drain(self) -> None:
            raise ConnectionResetError(104, "Connection reset by peer")

    async def go() -> None:
        async def source() -> AsyncIterator[bytes]:
            yield b"x" * 100

        await _run(ws.WebSocket(asyncio.StreamReader(), Reset()), "exec", source(), None, 30)  # type: ignore[arg-type]

    with pytest.raises(Unreachable, match="stream was cut"):
        asyncio.run(asyncio.wait_for(go(), 10))
