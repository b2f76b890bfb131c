"""Resource backups against the shared sandbox's real apiserver: a realistic mix backed up,
deleted (namespaces and the CRD) and restored equal; a mapped namespace; encrypted Secrets; a
tampered archive; diff; S3 through moto's server; consistency under churn; kill -9 during create
and restore; the scheduled CronJob's RBAC used with a real ServiceAccount token.

Every test works in namespaces (and a CRD group) of its own, so they share the session sandbox.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyrage
import pytest
import yaml

from kubecare.backup.archive import ArchiveReader, ArchiveWriter, TypeFrame
from kubecare.errors import NotFound
from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

from .accounts import kubeconfig_with_user, service_account, token_for
from .conftest import cli_argv, run_cli
from .test_backup_faults import fill
from .workloads import deployment, statefulset, wait_for, widget_crd

pytestmark = pytest.mark.e2e
JSON = dict[str, Any]

#: Fields a restore lets the cluster assign anew (allocated, not configured); and a Job's
#: generated controller-uid labels (which name the new Job's UID).
REASSIGNED = ("spec.clusterIP", "spec.clusterIPs[0]", "spec.ports[0].nodePort")


async def make_mix(kube: Kube, ns: str, group: str) -> None:
    """One of each kind a real namespace holds."""
    post = kube.request_json
    await post(
        "POST", "/api/v1/namespaces", body={"metadata": {"name": ns, "labels": {"team": "a"}}}
    )
    await wait_for(lambda: _exists(kube, f"/api/v1/namespaces/{ns}/serviceaccounts/default"))
    objs: list[tuple[str, JSON]] = [
        ("/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "app"}, "data": {"k": "v"}}),
        ("/api/v1/namespaces/{ns}/secrets", {"metadata": {"name": "db"}, "type": "Opaque",
                                             "stringData": {"password": "hunter2"}}),
        ("/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "runner"}}),
        ("/api/v1/namespaces/{ns}/services", {"metadata": {"name": "web"}, "spec": {
            "selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}),
        ("/api/v1/namespaces/{ns}/services", {"metadata": {"name": "np"}, "spec": {
            "type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}}),
        ("/api/v1/namespaces/{ns}/persistentvolumeclaims", {"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
        ("/apis/apps/v1/namespaces/{ns}/deployments", deployment("web", 2)),
        ("/apis/apps/v1/namespaces/{ns}/statefulsets", statefulset("db", 1, {"containers": [
            {"name": "c", "image": "registry.k8s.io/pause:3.10"}]})),
        ("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses", {"metadata": {"name": "web"},
            "spec": {"rules": [{"host": "web.example", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}}),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", {"metadata": {"name": "read"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        ("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "metadata": {"name": "read"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read"},
            "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": ns}]}),
        ("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets", {"metadata": {"name": "web"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
        ("/apis/autoscaling/v2/namespaces/{ns}/horizontalpodautoscalers", {
            "metadata": {"name": "web"}, "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 3}}),
        ("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies", {"metadata": {"name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        ("/apis/batch/v1/namespaces/{ns}/cronjobs", {"metadata": {"name": "nightly"}, "spec": {
            "schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}}}),
        ("/apis/batch/v1/namespaces/{ns}/jobs", {"metadata": {"name": "once"}, "spec": {
            "suspend": True, "template": {"spec": {"restartPolicy": "Never",
                                  "containers": [{"name": "c", "image": "busybox"}]}}}}),
        (f"/apis/{group}/v1/namespaces/{{ns}}/widgets", {"apiVersion": f"{group}/v1",
            "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}}),
    ]  # fmt: skip
    for path, body in objs:
        for _ in range(100):  # the CRD's API appears shortly after it is established
            try:
                await post("POST", path.format(ns=ns), body=body)
                break
            except NotFound:
                await asyncio.sleep(0.1)


async def _exists(kube: Kube, path: str) -> bool:
    return (await kube.http.get(path)).status_code == 200


async def _gone(kube: Kube, path: str) -> bool:
    return (await kube.http.get(path)).status_code == 404


def age_key(tmp: Path) -> tuple[Path, str]:
    ident = pyrage.x25519.Identity.generate()
    path = tmp / "key.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# created: test\n{ident}\n")
    return path, str(ident.to_public())


def cli(sb: Sandbox, *args: str, env: dict[str, str] | None = None, timeout: float = 120
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    if env is None:
        return run_cli(*args, kubeconfig=sb.kubeconfig, timeout=timeout)
    return subprocess.run(
        cli_argv(*args, kubeconfig=sb.kubeconfig),
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}, check=False,
    )  # fmt: skip


class Mix:
    def __init__(self, tag: str, tmp: Path) -> None:
        self.tag, self.tmp = tag, tmp
        self.group = f"b{tag}.example.com"
        self.ns = [f"bk-{tag}-a", f"bk-{tag}-b"]
        self.store = tmp / "store"
        self.key, self.recipient = age_key(tmp)


@pytest.fixture(scope="module")
async def mix(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mix]:
    m = Mix(uuid.uuid4().hex[:6], tmp_path_factory.mktemp("backup"))
    async with Kube(sandbox.client_options()) as kube:
        await kube.request_json(
            "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            body=widget_crd(m.group),
        )  # fmt: skip
        for ns in m.ns:
            await make_mix(kube, ns, m.group)
        yield m
        for ns in [*m.ns, f"bk-{m.tag}-mapped"]:
            await kube.http.delete(f"/api/v1/namespaces/{ns}")
        await kube.http.delete(
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{m.group}"
        )


def backup(sb: Sandbox, m: Mix, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    res = cli(sb, "backup", "create", name, "--to", str(m.store), "--include-namespaces",
              ",".join(m.ns), "--include-cluster-resources", "--encrypt-to", m.recipient, *extra)  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res


def archived(path: Path, identity: Path | None = None) -> dict[tuple[str, str, str], JSON]:
    """(type, namespace, name) -> object, for every object of the archive."""
    from kubecare.backup.archive import parse_member_path
    from kubecare.backup.secrets import decryptor, identities
    from kubecare.backup.verify import checked_members

    decrypt = decryptor(identities(identity)) if identity else None
    out = {}
    with ArchiveReader.open(path) as r:
        for entry in r.manifest["types"]:
            for mem in checked_members(r, entry):
                group, resource, ns, name, enc = parse_member_path(mem.path)
                data = decrypt(mem.data, mem.path) if enc and decrypt else mem.data
                gr = f"{resource}.{group}" if group else resource
                out[(gr, ns, name)] = json.loads(data) if not enc or decrypt else {}
    return out


async def test_backup_delete_everything_restore_equal(sandbox: Sandbox, mix: Mix) -> None:
    m = mix
    backup(sandbox, m, "full")
    path = m.store / "full.tar.zst"
    assert path.stat().st_mode & 0o777 == 0o600
    objects = archived(path, m.key)
    mine = {k: v for k, v in objects.items() if k[1] in m.ns}
    kinds = {k[0] for k in mine}
    for wanted in ("configmaps", "secrets", "serviceaccounts", "services", "deployments.apps",
                   "statefulsets.apps", "ingresses.networking.k8s.io", "cronjobs.batch",
                   "jobs.batch", "roles.rbac.authorization.k8s.io", "persistentvolumeclaims",
                   "rolebindings.rbac.authorization.k8s.io", "poddisruptionbudgets.policy",
                   "horizontalpodautoscalers.autoscaling", "networkpolicies.networking.k8s.io",
                   f"widgets.{m.group}"):  # fmt: skip
        assert wanted in kinds, (wanted, sorted(kinds))
    assert ("customresourcedefinitions.apiextensions.k8s.io", "", f"widgets.{m.group}") in objects
    # Controller-made objects are not in it: their controllers make them again.
    assert "pods" not in kinds and "replicasets.apps" not in kinds
    assert not any(k[0] == "configmaps" and k[2] == "kube-root-ca.crt" for k in mine)
    for obj in mine.values():
        meta = obj["metadata"]
        assert not {"uid", "resourceVersion", "managedFields", "creationTimestamp"} & set(meta)
        assert "status" not in obj
    # Delete the namespaces and the CRD, and wait until they are gone.
    async with Kube(sandbox.client_options()) as kube:
        crd = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.{m.group}"
        for ns in m.ns:
            await kube.http.delete(f"/api/v1/namespaces/{ns}")
        await kube.http.delete(crd)
        for ns in m.ns:
            await wait_for(lambda ns=ns: _gone(kube, f"/api/v1/namespaces/{ns}"), timeout=90)
        await wait_for(lambda: _gone(kube, crd), timeout=60)
    # The disaster diff exists for: the CRD gone with its objects is a type "only in the
    # backup", not an error.
    res = cli(sandbox, "backup", "diff", "full", "--from", str(m.store), "--identity",
              str(m.key), "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    lost = {(d["type"], d["namespace"], d["name"]): d for d in json.loads(res.stdout)}
    widget = lost[(f"widgets.{m.group}", m.ns[0], "w1")]
    assert widget["change"] == "only-in-archive", widget
    assert (
        widget["reason"] == f"widgets.{m.group} {m.group}/v1 is not served by the cluster any more"
    )
    assert lost[("configmaps", m.ns[0], "app")]["change"] == "only-in-archive"
    table = cli(sandbox, "backup", "diff", "full", "--from", str(m.store), "--identity",
                str(m.key)).stdout  # fmt: skip
    assert f"- widgets.{m.group} {m.ns[0]}/w1  (only in the backup: widgets." in table, table
    res = cli(sandbox, "backup", "restore", "full", "--from", str(m.store), "--identity",
              str(m.key), "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    result = json.loads(res.stdout)
    outcomes = {(o["type"], o["namespace"], o["name"]): o["outcome"] for o in result["objects"]}
    for key in mine:
        # The namespace's default ServiceAccount is made by its controller as the namespace is.
        made = key[0] == "serviceaccounts" and key[2] == "default"
        assert outcomes[key] in (("created", "skipped") if made else ("created",)), key
    # The other cluster-scoped objects existed: skipped, not touched.
    assert all(v in ("created", "skipped") for v in outcomes.values())
    # Every object is back and equal, modulo what the cluster assigns anew.
    res = cli(sandbox, "backup", "diff", "full", "--from", str(m.store), "--identity",
              str(m.key), "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    diffs = [d for d in json.loads(res.stdout) if d["namespace"] in m.ns or not d["namespace"]]
    for d in diffs:
        assert d["change"] == "changed", d
        assert all(f["path"] in REASSIGNED or "controller-uid" in f["path"] for f in d["fields"]), (
            json.dumps(d)
        )
    # The Deployment runs again (its ReplicaSet and pods were made by the controllers).
    async with Kube(sandbox.client_options()) as kube:
        dep = f"/apis/apps/v1/namespaces/{m.ns[0]}/deployments/web"
        await wait_for(lambda: _ready_replicas(kube, dep, 2), timeout=60)


async def _ready_replicas(kube: Kube, path: str, n: int) -> bool:
    d = await kube.get_json(path)
    return (d.get("status") or {}).get("readyReplicas") == n


async def test_restore_into_a_mapped_namespace(sandbox: Sandbox, mix: Mix) -> None:
    m = mix
    backup(sandbox, m, "mapped")
    target = f"bk-{m.tag}-mapped"
    res = cli(sandbox, "backup", "restore", "mapped", "--from", str(m.store), "--identity",
              str(m.key), "--include-namespaces", m.ns[0], "--namespace-map",
              f"{m.ns[0]}={target}", "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    async with Kube(sandbox.client_options()) as kube:
        cm = await kube.get_json(f"/api/v1/namespaces/{target}/configmaps/app")
        assert cm["data"] == {"k": "v"}
        rb = await kube.get_json(
            f"/apis/rbac.authorization.k8s.io/v1/namespaces/{target}/rolebindings/read"
        )
        assert rb["subjects"][0]["namespace"] == target
        w = await kube.get_json(f"/apis/{m.group}/v1/namespaces/{target}/widgets/w1")
        assert w["spec"] == {"size": 3}
        # The original namespace is untouched, the other one was not restored into the target.
        assert await _exists(kube, f"/api/v1/namespaces/{m.ns[0]}/configmaps/app")
        ns = await kube.get_json(f"/api/v1/namespaces/{target}")
        assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == target


async def test_secrets_are_encrypted_and_need_the_key(sandbox: Sandbox, mix: Mix) -> None:
    m = mix
    backup(sandbox, m, "enc")
    path = m.store / "enc.tar.zst"
    import zstandard

    with path.open("rb") as f:  # every frame, the way `zstd -dc` reads it
        raw = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    assert b"hunter2" not in raw and b"aHVudGVyMg" not in raw  # neither plain nor base64
    assert f"resources/core/secrets/{m.ns[0]}/db.json.age".encode() in raw
    # Readable with the key (age's own format: `age -d -i key.txt` would open it too).
    secret = archived(path, m.key)[("secrets", m.ns[0], "db")]
    assert secret["data"]["password"] == "aHVudGVyMg=="
    # Without it: refused before anything is sent.
    res = cli(sandbox, "backup", "restore", "enc", "--from", str(m.store))
    assert res.returncode == 2 and "encrypted; pass --identity" in res.stderr, res.stderr
    (m.tmp / "other").mkdir(exist_ok=True)
    other, _ = age_key(m.tmp / "other")
    res = cli(sandbox, "backup", "restore", "enc", "--from", str(m.store), "--identity",
              str(other), "--include-namespaces", m.ns[0], "--dry-run")  # fmt: skip
    assert res.returncode == 1 and "cannot decrypt" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # Refused in plaintext unless asked for.
    res = cli(sandbox, "backup", "create", "plain", "--to", str(m.store),
              "--include-namespaces", m.ns[0])  # fmt: skip
    assert res.returncode == 2 and "plaintext" in res.stderr
    assert not (m.store / "plain.tar.zst").exists()


async def test_a_tampered_archive_fails_verify_and_restores_nothing(
    sandbox: Sandbox, mix: Mix
) -> None:
    m = mix
    backup(sandbox, m, "tamper")
    good = m.store / "tamper.tar.zst"
    assert cli(sandbox, "backup", "verify", str(good)).returncode == 0
    # 1. A flipped byte inside the objects.
    data = bytearray(good.read_bytes())
    data[len(data) // 3] ^= 0x01
    bad = m.store / "tamper-bad.tar.zst"
    bad.write_bytes(bytes(data))
    # 2. A member changed and its frame re-compressed: only the checksums can tell.
    changed = m.store / "tamper-member.tar.zst"
    _rewrite_member(good, changed, f"resources/core/configmaps/{m.ns[0]}/app.json",
                    lambda b: b.replace(b'"v"', b'"evil"'))  # fmt: skip
    for path in (bad, changed):
        res = cli(sandbox, "backup", "verify", str(path))
        assert res.returncode == 1 and "FAILED" in res.stdout, res.stdout + res.stderr
        async with Kube(sandbox.client_options()) as kube:
            await kube.request_json("DELETE", f"/api/v1/namespaces/{m.ns[1]}/configmaps/app")
            res = cli(sandbox, "backup", "restore", str(path), "--identity", str(m.key))
            assert res.returncode == 1 and "nothing was restored" in res.stderr, res.stderr
            assert await _gone(kube, f"/api/v1/namespaces/{m.ns[1]}/configmaps/app")
            await kube.request_json(
                "POST", f"/api/v1/namespaces/{m.ns[1]}/configmaps",
                body={"metadata": {"name": "app"}, "data": {"k": "v"}},
            )  # fmt: skip


def _rewrite_member(src: Path, dst: Path, member: str, change: Any) -> None:
    """Copy an archive with one member's bytes changed, re-framed so the zstd frame and the
    manifest's frame sha256 are consistent: a careful forgery, caught by the checksums."""
    from kubecare.backup.archive import checksums_path

    with ArchiveReader.open(src) as r:
        manifest = r.manifest
        w = ArchiveWriter(dst)
        for entry in manifest["types"]:
            if not entry.get("frame"):
                continue
            with open(dst.parent / f".spool-{uuid.uuid4().hex}", "w+b") as spool:
                frame = TypeFrame(spool, 0)
                sums = None
                for mem in r.type_members(entry):
                    if mem.path == entry["checksums"]["path"]:
                        sums = mem.data
                        continue
                    frame.add(mem.path, change(mem.data) if mem.path == member else mem.data)
                sha = frame.finish(checksums_path(entry["group"], entry["resource"]), sums=sums)
                offset, length, fsha = w.append(spool)
                entry["frame"] = {"offset": offset, "length": length, "sha256": fsha}
                entry["checksums"]["sha256"] = sha
                os.unlink(spool.name)
        w.commit(manifest, 0)


async def test_diff_shows_exactly_what_changed_since(sandbox: Sandbox, mix: Mix) -> None:
    m = mix
    ns = m.ns[1]
    backup(sandbox, m, "before")
    async with Kube(sandbox.client_options()) as kube:
        await kube.request_json(
            "PATCH", f"/api/v1/namespaces/{ns}/configmaps/app", body={"data": {"k": "changed"}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        await kube.request_json(
            "DELETE", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/deny"
        )
        await kube.request_json(
            "POST", f"/api/v1/namespaces/{ns}/configmaps", body={"metadata": {"name": "new"}}
        )
        await kube.request_json(
            "PATCH", f"/api/v1/namespaces/{ns}/secrets/db",
            body={"stringData": {"password": "hunter3"}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        try:
            res = cli(sandbox, "backup", "diff", "before", "--from", str(m.store),
                      "--include-namespaces", ns, "--identity", str(m.key), "-o", "json")  # fmt: skip
            assert res.returncode == 0, res.stderr
            got = {(d["type"], d["name"], d["change"]): d["fields"] for d in json.loads(res.stdout)}
            assert set(got) == {
                ("configmaps", "app", "changed"),
                ("networkpolicies.networking.k8s.io", "deny", "only-in-archive"),
                ("configmaps", "new", "only-in-cluster"),
                ("secrets", "db", "changed"),
            }, got
            assert got[("configmaps", "app", "changed")] == [
                {"path": "data.k", "archived": "v", "live": "changed"}
            ]
            # Secrets: which key changed, never the values.
            assert got[("secrets", "db", "changed")] == [
                {"path": "data.password", "archived": "(hidden)", "live": "(hidden)"}
            ]
            table = cli(sandbox, "backup", "diff", "before", "--from", str(m.store),
                        "--include-namespaces", ns).stdout  # fmt: skip
            assert "? secrets" in table and "encrypted: pass --identity" in table
            assert "~ configmaps" in table and 'data.k: "v" -> "changed"' in table
        finally:  # put it back for the other tests
            await kube.request_json(
                "PATCH", f"/api/v1/namespaces/{ns}/configmaps/app", body={"data": {"k": "v"}},
                content_type="application/merge-patch+json",
            )  # fmt: skip
            await kube.request_json("DELETE", f"/api/v1/namespaces/{ns}/configmaps/new")


# -- S3 ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    """moto's S3 server on loopback, with a bucket; yields its endpoint."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("moto's S3 server did not start") from None
                time.sleep(0.05)
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/backups", method="PUT"))
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def s3_env(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}  # fmt: skip


async def test_s3_store_round_trip(sandbox: Sandbox, mix: Mix, moto: str) -> None:
    m, env = mix, s3_env(moto)
    store = f"s3://backups/{m.tag}"
    args = ("--include-namespaces", m.ns[0], "--encrypt-to", m.recipient)
    for name in ("one", "two"):
        res = cli(sandbox, "backup", "create", name, "--to", store, *args, env=env)
        assert res.returncode == 0, res.stderr
    res = cli(sandbox, "backup", "create", "two", "--to", store, *args, env=env)
    assert res.returncode == 1 and "already exists" in res.stderr, res.stderr
    res = cli(sandbox, "backup", "list", "--from", store, "-o", "json", env=env)
    assert [b["name"] for b in json.loads(res.stdout)] == ["one", "two"], res.stderr
    res = cli(sandbox, "backup", "describe", "one", "--from", store, "-o", "json", env=env)
    assert json.loads(res.stdout)["filters"]["includeNamespaces"] == [m.ns[0]]
    assert cli(sandbox, "backup", "verify", "one", "--from", store, env=env).returncode == 0
    res = cli(sandbox, "backup", "restore", "one", "--from", store, "--identity", str(m.key),
              "--dry-run", "-o", "json", env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert {o["outcome"] for o in json.loads(res.stdout)["objects"]} == {"skipped"}
    res = cli(sandbox, "backup", "delete", "--from", store, "--keep-last", "1", env=env)
    assert res.returncode == 0 and "deleted one" in res.stderr, res.stderr
    res = cli(sandbox, "backup", "list", "--from", store, "-o", "json", env=env)
    assert [b["name"] for b in json.loads(res.stdout)] == ["two"]
    # An unreachable store: one line, before the cluster is read.
    dead = {**env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}
    res = cli(sandbox, "backup", "create", "x", "--to", store, *args, env=dead)
    assert res.returncode == 1 and "cannot reach s3://backups" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


# -- consistency and crashes -------------------------------------------------------------


async def test_backup_under_churn_is_consistent_per_type(
    sandbox: Sandbox, mix: Mix, namespace: str, kube: Kube
) -> None:
    """ConfigMaps created and deleted while the backup lists them page by page: the archive
    holds exactly what the cluster held at the revision the manifest names."""
    await fill(kube, namespace, 150)
    stop = asyncio.Event()

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            await kube.request_json("POST", f"/api/v1/namespaces/{namespace}/configmaps",
                                    body={"metadata": {"name": f"n{i:04d}"}})  # fmt: skip
            await kube.http.delete(f"/api/v1/namespaces/{namespace}/configmaps/c{i % 150:03d}")
            i += 1

    task = asyncio.create_task(churn())
    try:
        await asyncio.sleep(0.3)
        proc = await asyncio.create_subprocess_exec(
            *cli_argv("backup", "create", "churn", "--to", str(mix.store), "--include-namespaces",
                      namespace, "--include-resources", "configmaps", "--chunk-size", "10",
                      kubeconfig=sandbox.kubeconfig),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    finally:
        stop.set()
        await task
    with ArchiveReader.open(mix.store / "churn.tar.zst") as r:
        (entry,) = [t for t in r.manifest["types"] if t["resource"] == "configmaps"]
    rv = entry["resourceVersion"]
    items, _ = await kube.list_all(
        f"/api/v1/namespaces/{namespace}/configmaps",
        params={"resourceVersion": rv, "resourceVersionMatch": "Exact"},
    )
    at_rv = {i["metadata"]["name"] for i in items} - {"kube-root-ca.crt"}
    got = {k[2] for k in archived(mix.store / "churn.tar.zst") if k[0] == "configmaps"}
    assert got == at_rv and len(got) >= 150


async def test_kill_9_during_create_leaves_no_archive_then_restore_resumes(
    sandbox: Sandbox, mix: Mix, namespace: str, kube: Kube
) -> None:
    await fill(kube, namespace, 300)
    store = mix.store / "kill"
    argv = cli_argv("backup", "create", "killed", "--to", str(store), "--include-namespaces",
                    namespace, "--chunk-size", "1", "--concurrency", "1", "--allow-plaintext-secrets",
                    kubeconfig=sandbox.kubeconfig)  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill it once it has started writing (the temp archive beside the final name exists).
    await wait_for(lambda: _partial(store), timeout=30, interval=0.01)
    await asyncio.sleep(0.2)
    assert proc.poll() is None, "the backup finished before it could be killed"
    workers = _children(proc.pid)
    assert workers, "the CLI runs its page workers as child processes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (store / "killed.tar.zst").exists()
    # Its workers die with it (nothing left running, checked by pid).
    await wait_for(lambda: _all_gone(workers), timeout=10)
    listed = cli(sandbox, "backup", "list", "--from", str(store), "-o", "json")
    assert json.loads(listed.stdout) == []
    # A complete one, then a restore killed half way and run again.
    res = cli(sandbox, "backup", "create", "whole", "--to", str(store), "--include-namespaces",
              namespace, "--allow-plaintext-secrets")  # fmt: skip
    assert res.returncode == 0, res.stderr
    await kube.request_json("DELETE", f"/api/v1/namespaces/{namespace}/configmaps",
                            params={"labelSelector": ""})  # fmt: skip
    await wait_for(lambda: _count(kube, namespace, 1))
    restore = cli_argv("backup", "restore", "whole", "--from", str(store), "--concurrency", "1",
                       kubeconfig=sandbox.kubeconfig)  # fmt: skip
    proc = subprocess.Popen(restore, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    await wait_for(lambda: _count_at_least(kube, namespace, 60), timeout=60, interval=0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len((await kube.list_all(f"/api/v1/namespaces/{namespace}/configmaps"))[0])
    assert 1 < partial < 301, partial
    res = cli(sandbox, "backup", "restore", "whole", "--from", str(store), "-o", "json")
    assert res.returncode == 0, res.stderr
    outcomes = [o for o in json.loads(res.stdout)["objects"] if o["type"] == "configmaps"]
    assert sum(o["outcome"] == "skipped" for o in outcomes) == partial - 1
    assert sum(o["outcome"] == "created" for o in outcomes) == 301 - partial
    items, _ = await kube.list_all(f"/api/v1/namespaces/{namespace}/configmaps")
    assert sorted(i["metadata"]["name"] for i in items) == sorted(
        [f"c{i:03d}" for i in range(300)] + ["kube-root-ca.crt"]
    )


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                status = (d / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                out.append(int(d.name))
    return out


async def _all_gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{p}").exists() for p in pids)


async def _partial(store: Path) -> bool:
    return store.is_dir() and any(p.name.endswith(".partial") for p in store.iterdir())


async def _count(kube: Kube, ns: str, n: int) -> bool:
    return len((await kube.list_all(f"/api/v1/namespaces/{ns}/configmaps"))[0]) == n


async def _count_at_least(kube: Kube, ns: str, n: int) -> bool:
    return len((await kube.list_all(f"/api/v1/namespaces/{ns}/configmaps"))[0]) >= n


# -- in the cluster: the scheduled job's RBAC ----------------------------------------------


async def test_schedule_manifests_and_its_read_only_role(
    sandbox: Sandbox, mix: Mix, kube: Kube, tmp_path: Path
) -> None:
    m = mix
    ns = f"bk-{m.tag}-sched"
    res = cli(sandbox, "backup", "schedule", "--image", "example.com/kubecare:0.1", "--to",
              "s3://backups/cluster", "--s3-secret", "s3", "--encrypt-to", m.recipient,
              "--keep-last", "7", "--schedule-namespace", ns)  # fmt: skip
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    assert [d["kind"] for d in docs] == ["Namespace", "ServiceAccount", "ClusterRole",
                                         "ClusterRoleBinding", "CronJob"]  # fmt: skip
    # Server-side dry run of every manifest (the namespace first, for real: the others need it).
    await kube.request_json("POST", "/api/v1/namespaces", body=docs[0])
    try:
        paths = {
            "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts",
            "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            "CronJob": f"/apis/batch/v1/namespaces/{ns}/cronjobs",
        }
        for doc in docs[1:]:
            await kube.request_json("POST", paths[doc["kind"]], body=doc, params={"dryRun": "All"})
        # Its rules, for real, on a ServiceAccount: a backup with its token is complete...
        rules = docs[2]["rules"]
        async with service_account(kube, ns, rules) as account:
            token = (await token_for(kube, ns, account))["token"]
            config = kubeconfig_with_user(sandbox, {"token": token}, tmp_path / "sa.yaml")
            argv = ("backup", "create", "--include-namespaces", ",".join(m.ns),
                    "--encrypt-to", m.recipient, "--strict", "-o", "json")  # fmt: skip
            as_sa = run_cli(*argv, "sa", "--to", str(tmp_path), kubeconfig=config)
            assert as_sa.returncode == 0, as_sa.stderr
            as_admin = cli(sandbox, *argv, "admin", "--to", str(tmp_path))
            counts = {t["type"]: t["objects"] for t in json.loads(as_sa.stdout)["types"]}
            admin = {t["type"]: t["objects"] for t in json.loads(as_admin.stdout)["types"]}
            assert counts == admin and counts["secrets"] >= 2
            # whose backup: the kube-system namespace's UID (the SA's rules may read it)
            system = await kube.get_json("/api/v1/namespaces/kube-system")
            with ArchiveReader.open(tmp_path / "admin.tar.zst") as r:
                assert r.manifest["cluster"]["uid"] == system["metadata"]["uid"]
            # ... and a write is refused.
            res = run_cli("backup", "restore", "admin", "--from", str(tmp_path), "--identity",
                          str(m.key), "--existing", "update", kubeconfig=config)  # fmt: skip
            assert res.returncode == 1, res.stderr
            assert "forbidden" in res.stdout.lower() or "forbidden" in res.stderr.lower()
            # Without secrets access: a warning naming the type; --strict fails.
            no_secrets = [{"apiGroups": [""], "resources": ["configmaps", "namespaces"],
                           "verbs": ["get", "list"]}]  # fmt: skip
        async with service_account(kube, ns, no_secrets) as account:
            token = (await token_for(kube, ns, account))["token"]
            config = kubeconfig_with_user(sandbox, {"token": token}, tmp_path / "sa2.yaml")
            base = ("backup", "create", "--to", str(tmp_path), "--include-namespaces", m.ns[0],
                    "--include-resources", "configmaps,secrets", "--encrypt-to", m.recipient)  # fmt: skip
            # A partial backup is kept, marked partial, and fails the command (a CronJob that
            # runs it goes red) unless --allow-partial.
            res = run_cli(*base, "partial", kubeconfig=config)
            assert res.returncode == 1, res.stderr
            assert "warning: secrets: forbidden" in res.stderr, res.stderr
            assert "error: backup partial is partial: secrets (forbidden)" in res.stderr
            assert "--allow-partial" in res.stderr and "Traceback" not in res.stderr
            with ArchiveReader.open(tmp_path / "partial.tar.zst") as r:
                assert r.manifest["missing"] == [{"type": "secrets", "reason": "forbidden"}]
                assert r.manifest["cluster"]["uid"] == system["metadata"]["uid"]
            res = run_cli(*base, "accepted", "--allow-partial", "-o", "json", kubeconfig=config)
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["missing"] == {"secrets": "forbidden"}
            res = run_cli(*base, "strict", "--strict", kubeconfig=config)
            assert res.returncode == 1 and "secrets" in res.stderr, res.stderr
            assert not (tmp_path / "strict.tar.zst").exists()
    finally:
        await kube.http.delete(f"/api/v1/namespaces/{ns}")
