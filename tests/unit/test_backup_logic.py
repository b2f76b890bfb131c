"""The pure parts of backups: label selectors (k8s.io/apimachinery's own table tests), what is
kept and how it is cleaned, restore order and transforms, the archive format (written and read
back, and every way it can be broken), retention, the schedule's manifests, and diff."""

from __future__ import annotations

import datetime
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from kubecare.backup import labels
from kubecare.backup.archive import (
    ArchiveError,
    ArchiveReader,
    ArchiveWriter,
    TypeFrame,
    check_member_name,
    checksums_path,
    member_path,
    parse_member_path,
)
from kubecare.backup.create import plan_types
from kubecare.backup.diff import FieldChange, field_changes
from kubecare.backup.retention import parse_keep_within, to_delete
from kubecare.backup.rules import (
    Filters,
    clean,
    for_restore,
    restore_order,
    skip_reason,
)
from kubecare.backup.schedule import ScheduleOptions, manifests, read_rules
from kubecare.backup.stores import Info, check_name
from kubecare.backup.verify import verify
from kubecare.errors import UsageError
from kubecare.kube.discovery import ApiResource

# -- label selectors: apimachinery/pkg/labels/selector_test.go (v0.37) ---------------------

GOOD = ["x=a,y=b,z=c", "", "x!=a,y=b", "x=", "x= ", "x=,z= ", "x= ,z= ", "!x", "x>1", "x>1,z<5"]
BAD = ["x=a||y=b", "x==a==b", "!x=a", "x<a"]


@pytest.mark.parametrize("text", GOOD)
def test_selector_parse_good(text: str) -> None:  # TestSelectorParse testGoodStrings
    labels.parse(text)


@pytest.mark.parametrize("text", BAD)
def test_selector_parse_bad(text: str) -> None:  # TestSelectorParse testBadStrings
    with pytest.raises(UsageError):
        labels.parse(text)


MATCH = [  # TestSelectorMatches
    ("", {"x": "y"}, True),
    ("x=y", {"x": "y"}, True),
    ("x=y,z=w", {"x": "y", "z": "w"}, True),
    ("x!=y,z!=w", {"x": "z", "z": "a"}, True),
    ("notin=in", {"notin": "in"}, True),
    ("x", {"x": "z"}, True),
    ("!x", {"y": "z"}, True),
    ("x>1", {"x": "2"}, True),
    ("x<1", {"x": "0"}, True),
    ("x=z", {}, False),
    ("x=y", {"x": "z"}, False),
    ("x=y,z=w", {"x": "w", "z": "w"}, False),
    ("x!=y,z!=w", {"x": "z", "z": "w"}, False),
    ("x", {"y": "z"}, False),
    ("!x", {"x": "z"}, False),
    ("x>1", {"x": "0"}, False),
    ("x<1", {"x": "2"}, False),
    ("foo=bar", {"foo": "bar", "baz": "blah"}, True),
    ("baz=blah", {"foo": "bar", "baz": "blah"}, True),
    ("foo=bar,baz=blah", {"foo": "bar", "baz": "blah"}, True),
    ("foo=blah", {"foo": "bar", "baz": "blah"}, False),
    ("baz=bar", {"foo": "bar", "baz": "blah"}, False),
    ("foo=bar,foobar=bar,baz=blah", {"foo": "bar", "baz": "blah"}, False),
    # set-based requirements (TestRequirementMatches-style)
    ("env in (prod, stage)", {"env": "prod"}, True),
    ("env in (prod,stage)", {"env": "dev"}, False),
    ("env notin (prod)", {}, True),
    ("env notin (prod),tier", {"env": "dev", "tier": "a"}, True),
    ("x==y", {"x": "y"}, True),
]


@pytest.mark.parametrize(("text", "labelset", "want"), MATCH)
def test_selector_matches(text: str, labelset: dict[str, str], want: bool) -> None:
    assert labels.matches(labels.parse(text), labelset) is want


# -- what a backup keeps ---------------------------------------------------------------------


def obj(name: str, ns: str = "", **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, **({"namespace": ns} if ns else {}), **meta}}


def test_skip_rules() -> None:
    owner = [{"kind": "ReplicaSet", "name": "x", "controller": True}]
    assert skip_reason("pods", obj("p", "a", ownerReferences=owner))
    assert skip_reason("replicasets.apps", obj("r", "a", ownerReferences=owner))
    assert skip_reason("pods", obj("p", "a")) is None  # an unmanaged pod is configuration
    # a non-controller owner reference does not make it controller-made
    assert skip_reason("pods", obj("p", "a", ownerReferences=[{"kind": "X", "name": "y"}])) is None
    assert "mirror" in str(
        skip_reason("pods", obj("p", "a", annotations={"kubernetes.io/config.mirror": "h"}))
    )
    assert skip_reason(
        "endpoints",
        obj("s", "a", labels={"endpoints.kubernetes.io/managed-by": "endpoint-controller"}),
    )
    assert skip_reason("endpoints", obj("manual", "a")) is None  # selector-less Service's
    for manager in ("endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io"):
        labelled = obj("s-1", "a", labels={"endpointslice.kubernetes.io/managed-by": manager})
        assert skip_reason("endpointslices.discovery.k8s.io", labelled)
    assert skip_reason("configmaps", obj("kube-root-ca.crt", "a"))
    assert skip_reason("configmaps", obj("app", "a")) is None
    token = {**obj("t", "a"), "type": "kubernetes.io/service-account-token"}
    assert skip_reason("secrets", token)
    assert skip_reason("secrets", {**obj("s", "a"), "type": "Opaque"}) is None
    boot = obj("admin", annotations={"rbac.authorization.kubernetes.io/autoupdate": "true"})
    assert skip_reason("clusterroles.rbac.authorization.k8s.io", boot)
    assert skip_reason("clusterroles.rbac.authorization.k8s.io", obj("mine")) is None
    apf = obj("exempt", annotations={"apf.kubernetes.io/autoupdate-spec": "true"})
    assert skip_reason("flowschemas.flowcontrol.apiserver.k8s.io", apf)
    assert skip_reason("services", obj("kubernetes", "default"))
    assert skip_reason("services", obj("kubernetes", "other")) is None
    assert skip_reason("apiservices.apiregistration.k8s.io", {**obj("v1."), "spec": {}})
    aggregated = {**obj("v1beta1.metrics.k8s.io"), "spec": {"service": {"name": "m"}}}
    assert skip_reason("apiservices.apiregistration.k8s.io", aggregated) is None


def test_clean_removes_server_fields_and_status() -> None:
    o = {
        "metadata": {
            "name": "a",
            "uid": "u",
            "resourceVersion": "1",
            "managedFields": [],
            "creationTimestamp": "t",
            "generation": 3,
            "ownerReferences": [{"uid": "x"}],
            "labels": {"k": "v"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": {"x": 1},
        "status": {"phase": "Bound"},
    }
    assert clean(o) == {
        "metadata": {
            "name": "a",
            "labels": {"k": "v"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        },
        "spec": {"x": 1},
    }


def test_filters() -> None:
    f = Filters(include_namespaces=("a",))
    assert not f.cluster_resources
    assert f.type_ok("configmaps", True)
    assert not f.type_ok("clusterroles.rbac.authorization.k8s.io", False)
    assert f.type_ok("namespaces", False)  # the named namespaces themselves come along
    assert f.object_ok("namespaces", obj("a")) and not f.object_ok("namespaces", obj("b"))
    assert not f.type_ok("events", True)  # skipped by default ...
    assert Filters(include_resources=("events",)).type_ok("events", True)  # ... unless named
    g = Filters(exclude_resources=("cm",))
    assert not g.type_ok("configmaps", True, aliases=("cm", "configmap", "configmaps"))
    assert Filters(include_namespaces=("a",), include_cluster_resources=True).cluster_resources


def res(group: str, resource: str, verbs: tuple[str, ...] = ("list", "get"), ns: bool = True) -> ApiResource:  # fmt: skip
    return ApiResource(group, "v1", resource, resource.title(), ns, verbs)


def test_plan_types_once_each_listable_and_filtered() -> None:
    found = [
        res("", "configmaps"),
        res("", "events"),
        res("events.k8s.io", "events"),
        res("", "bindings", verbs=("create",)),
        res("apps", "deployments"),
        res("apps", "deployments"),  # a second version of the group: the first one wins
        res("example.com", "widgets"),
        res("rbac.authorization.k8s.io", "clusterroles", ns=False),
    ]
    names = [f"{r.resource}.{r.group}".strip(".") for r in plan_types(found, Filters())]
    assert names == ["configmaps", "deployments.apps", "widgets.example.com",
                     "clusterroles.rbac.authorization.k8s.io"]  # fmt: skip
    for alias in ("deploy", "deployments", "deployments.apps", "deployments"):
        only = plan_types(found, Filters(include_resources=(alias,)))
        assert [r.resource for r in only] == ["deployments"], alias


# -- restore ---------------------------------------------------------------------------------


def test_restore_order() -> None:
    types = ["widgets.example.com", "deployments.apps", "namespaces", "services",
             "validatingwebhookconfigurations.admissionregistration.k8s.io",
             "customresourcedefinitions.apiextensions.k8s.io", "poddisruptionbudgets.policy",
             "secrets", "configmaps", "serviceaccounts"]  # fmt: skip
    order = restore_order(types, {"widgets.example.com"})
    assert order == [
        "customresourcedefinitions.apiextensions.k8s.io", "namespaces", "serviceaccounts",
        "secrets", "configmaps", "deployments.apps", "services", "poddisruptionbudgets.policy",
        "widgets.example.com", "validatingwebhookconfigurations.admissionregistration.k8s.io",
    ]  # fmt: skip
    assert restore_order(types, set(), ["services"])[0] == "services"


def test_for_restore_services_keep_only_specified_node_ports() -> None:
    applied = json.dumps({"spec": {"ports": [{"port": 80, "nodePort": 30080}]}})
    svc = {
        "metadata": {"name": "s", "namespace": "a",
                     "annotations": {"kubectl.kubernetes.io/last-applied-configuration": applied}},
        "spec": {"clusterIP": "10.0.0.9", "clusterIPs": ["10.0.0.9"], "type": "NodePort",
                 "ports": [{"port": 80, "nodePort": 30080}, {"port": 81, "nodePort": 31111}]},
    }  # fmt: skip
    out, _ = for_restore("services", svc, {})
    assert "clusterIP" not in out["spec"] and "clusterIPs" not in out["spec"]
    assert out["spec"]["ports"] == [{"port": 80, "nodePort": 30080}, {"port": 81}]
    headless = {"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "clusterIPs": ["None"]}}
    assert for_restore("services", headless, {})[0]["spec"]["clusterIP"] == "None"
    assert svc["spec"]["clusterIP"] == "10.0.0.9"  # the input is not changed


def test_for_restore_job_drops_generated_selector_and_uid_labels() -> None:
    uid = {"controller-uid": "u", "batch.kubernetes.io/controller-uid": "u", "job-name": "j"}
    job = {
        "metadata": {"name": "j", "labels": dict(uid)},
        "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                 "template": {"metadata": {"labels": dict(uid)}, "spec": {}}},
    }  # fmt: skip
    out, _ = for_restore("jobs.batch", job, {})
    assert "selector" not in out["spec"]
    assert out["spec"]["template"]["metadata"]["labels"] == {"job-name": "j"}
    assert "labels" not in out["metadata"]  # defaulted from the template: defaulted again
    manual = {"metadata": {"name": "m"}, "spec": {"manualSelector": True, "selector": {"x": 1}}}
    assert for_restore("jobs.batch", manual, {})[0]["spec"]["selector"] == {"x": 1}


def test_for_restore_pods_pvs_pvcs_and_namespace_map() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "old"},
        "spec": {"nodeName": "n1", "priority": 5, "priorityClassName": "high",
                 "volumes": [{"name": "kube-api-access-abcde"}, {"name": "data"}],
                 "containers": [{"name": "c", "volumeMounts": [
                     {"name": "kube-api-access-abcde"}, {"name": "data"}]}]},
    }  # fmt: skip
    out, notes = for_restore("pods", pod, {"old": "new"})
    assert out["metadata"]["namespace"] == "new" and notes == ["namespace old -> new"]
    assert "nodeName" not in out["spec"] and "priority" not in out["spec"]
    assert out["spec"]["priorityClassName"] == "high"
    assert out["spec"]["volumes"] == [{"name": "data"}]
    assert out["spec"]["containers"][0]["volumeMounts"] == [{"name": "data"}]
    pv = {"metadata": {"name": "pv"}, "spec": {"claimRef": {
        "namespace": "old", "name": "c", "uid": "u", "resourceVersion": "9"}}}  # fmt: skip
    assert for_restore("persistentvolumes", pv, {"old": "new"})[0]["spec"]["claimRef"] == {
        "namespace": "new",
        "name": "c",
    }
    pvc = {"metadata": {"name": "c", "namespace": "old", "annotations": {
        "pv.kubernetes.io/bind-completed": "yes", "volume.kubernetes.io/selected-node": "n",
        "mine": "x"}}}  # fmt: skip
    assert for_restore("persistentvolumeclaims", pvc, {})[0]["metadata"]["annotations"] == {
        "mine": "x"
    }
    rb = {"metadata": {"name": "r", "namespace": "old"},
          "subjects": [{"kind": "ServiceAccount", "name": "s", "namespace": "old"}]}  # fmt: skip
    assert (
        for_restore("rolebindings.rbac.authorization.k8s.io", rb, {"old": "new"})[0]["subjects"][0][
            "namespace"
        ]
        == "new"
    )
    ns = {"metadata": {"name": "old", "labels": {"kubernetes.io/metadata.name": "old"}}}
    mapped = for_restore("namespaces", ns, {"old": "new"})[0]["metadata"]
    assert mapped == {"name": "new", "labels": {"kubernetes.io/metadata.name": "new"}}


# -- archive ---------------------------------------------------------------------------------


def test_member_paths_round_trip_and_refuse_escapes() -> None:
    p = member_path("apps", "deployments", "a", "web", encrypted=False)
    assert p == "resources/apps/deployments/a/web.json"
    assert parse_member_path(p) == ("apps", "deployments", "a", "web", False)
    q = member_path("", "secrets", "a", "db", encrypted=True)
    assert parse_member_path(q) == ("", "secrets", "a", "db", True)
    c = member_path("rbac.authorization.k8s.io", "clusterroles", "", "system:x", encrypted=False)
    assert parse_member_path(c)[2:4] == ("", "system:x")
    for bad in ("/etc/passwd", "resources/../../x.json", "resources/core/a/./x.json", "a//b",
                "resources\\..\\x", "resources/core/c/n/\x00.json", ""):  # fmt: skip
        with pytest.raises(ArchiveError, match="escape"):
            check_member_name(bad)


def write_archive(path: Path, members: dict[str, list[tuple[str, bytes]]], **manifest: Any) -> None:  # fmt: skip
    """A small archive: {resource: [(member path, data)]}, core group."""
    w = ArchiveWriter(path)
    types = []
    for resource, items in members.items():
        with open(path.parent / f".{resource}.spool", "w+b") as spool:
            frame = TypeFrame(spool, 0)
            for member, data in items:
                frame.add(member, data)
            sha = frame.finish(checksums_path("", resource))
            offset, length, fsha = w.append(spool)
        os.unlink(path.parent / f".{resource}.spool")
        types.append({
            "group": "", "version": "v1", "resource": resource, "kind": resource.title(),
            "namespaced": True, "count": len(items), "bytes": sum(len(d) for _, d in items),
            "frame": {"offset": offset, "length": length, "sha256": fsha},
            "checksums": {"path": checksums_path("", resource), "sha256": sha},
        })  # fmt: skip
    doc = {"format": "kubecare-backup", "formatVersion": 1, "name": path.name, "types": types}
    doc.update(manifest)
    w.commit(doc, 0)


def cm(name: str, value: str = "v") -> tuple[str, bytes]:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "a"},
            "data": {"k": value}}  # fmt: skip
    return member_path("", "configmaps", "a", name, encrypted=False), json.dumps(body).encode()


def test_archive_round_trip_verify_and_standard_tools(tmp_path: Path) -> None:
    import subprocess

    path = tmp_path / "b.tar.zst"
    write_archive(path, {"configmaps": [cm("x"), cm("y")], "secrets": []})
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["b.tar.zst"]  # no temp file left
    with ArchiveReader.open(path) as r:
        assert r.manifest["types"][0]["count"] == 2
        report = verify(r)
        assert report.ok and report.objects == 2, report.problems
        names = [m.path for m in r.type_members(r.manifest["types"][0])]
        assert names[-1] == "checksums/core/configmaps.sha256"
    out = tmp_path / "x"
    out.mkdir()
    import zstandard

    with path.open("rb") as f:  # what `tar --zstd` does (zstd may not be installed here)
        plain = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    subprocess.run(["tar", "-xf", "-", "-C", str(out)], input=plain, check=True)
    listed = subprocess.run(["sha256sum", "-c", "checksums/core/configmaps.sha256"], cwd=out,
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert listed.stdout.count(": OK") == 2
    assert json.loads((out / "manifest.json").read_text())["formatVersion"] == 1
    # Never over an existing backup.
    with pytest.raises(ArchiveError, match="already exists"):
        write_archive(path, {"configmaps": [cm("z")]})


def test_archive_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.zst"
    write_archive(good, {"configmaps": [cm("x")]})
    data = good.read_bytes()
    cases = {
        "short": (b"hello", "not a kubecare backup"),
        "noise": (os.urandom(4096), "not a kubecare backup"),
        "truncated": (data[:-7], "not a kubecare backup, or it is truncated"),
    }
    for name, (content, message) in cases.items():
        p = tmp_path / f"{name}.tar.zst"
        p.write_bytes(content)
        with pytest.raises(ArchiveError, match=message):
            ArchiveReader.open(p)
    newer = tmp_path / "newer.tar.zst"
    write_archive(newer, {"configmaps": [cm("x")]}, formatVersion=2, kubecareVersion="9.0")
    with pytest.raises(ArchiveError, match=r"format version 2 .*upgrade kubecare"):
        ArchiveReader.open(newer)
    with pytest.raises(ArchiveError, match="does not exist"):
        ArchiveReader.open(tmp_path / "missing.tar.zst")


def test_verify_finds_changed_missing_and_escaping_members(tmp_path: Path) -> None:
    # A member whose bytes differ from its checksum line (a forged frame).
    forged = tmp_path / "forged.tar.zst"
    w = ArchiveWriter(forged)
    with open(tmp_path / ".s", "w+b") as spool:
        frame = TypeFrame(spool, 0)
        path, data = cm("x")
        frame.add(path, data)
        sha = frame.finish(checksums_path("", "configmaps"), sums=f"{'0' * 64}  {path}\n".encode())
        offset, length, fsha = w.append(spool)
    w.commit({"format": "kubecare-backup", "formatVersion": 1, "types": [{
        "group": "", "version": "v1", "resource": "configmaps", "count": 1,
        "frame": {"offset": offset, "length": length, "sha256": fsha},
        "checksums": {"path": checksums_path("", "configmaps"), "sha256": sha}}]}, 0)  # fmt: skip
    with ArchiveReader.open(forged) as r:
        assert "does not match its sha256" in verify(r).problems[0]
    # A member named to escape.
    evil = tmp_path / "evil.tar.zst"
    write_archive(
        evil, {"configmaps": [("resources/core/configmaps/../../../../tmp/x.json", b"{}")]}
    )
    with ArchiveReader.open(evil) as r:
        assert "could escape" in verify(r).problems[0]
    # Bytes appended between the frames and the manifest would be extracted by tar: refused.
    good = tmp_path / "g.tar.zst"
    write_archive(good, {"configmaps": [cm("x")]})
    with ArchiveReader.open(good) as r:
        at = r.manifest_offset
    blob = good.read_bytes()
    import zstandard

    extra = zstandard.ZstdCompressor().compress(b"\0" * 512)
    spliced = tmp_path / "spliced.tar.zst"
    tail = blob[at:]
    import struct

    magic, size, tag, off, length = struct.unpack("<II8sQQ", tail[-32:])
    tail = tail[:-32] + struct.pack("<II8sQQ", magic, size, tag, off + len(extra), length)
    spliced.write_bytes(blob[:at] + extra + tail)
    with ArchiveReader.open(spliced) as r:
        assert any("unlisted data" in p for p in verify(r).problems)


# -- retention, names, schedule, diff ----------------------------------------------------


def test_retention_keeps_what_either_rule_keeps() -> None:
    now = datetime.datetime(2026, 11, 27, tzinfo=datetime.UTC)
    infos = [Info(f"b{i}", 1, now - datetime.timedelta(days=i)) for i in range(10)]
    assert to_delete(infos, keep_last=None, keep_within=None, now=now) == []
    gone = to_delete(infos, keep_last=3, keep_within=None, now=now)
    assert [i.name for i in gone] == ["b9", "b8", "b7", "b6", "b5", "b4", "b3"]
    gone = to_delete(infos, keep_last=2, keep_within=parse_keep_within("4d12h"), now=now)
    assert [i.name for i in gone] == ["b9", "b8", "b7", "b6", "b5"]
    assert parse_keep_within("2w") == 14 * 86400 and parse_keep_within("12h") == 43200
    for bad in ("soon", "0d", "-1d", "3x"):
        with pytest.raises(UsageError):
            parse_keep_within(bad)


def test_backup_names() -> None:
    assert check_name("nightly-2026.11.27") == "nightly-2026.11.27"
    for bad in ("../x", "a/b", "-x", "X", ".hidden", ""):
        with pytest.raises(UsageError):
            check_name(bad)


def test_schedule_manifests_are_read_only_and_validated() -> None:
    rules = read_rules([("", "pods", ("get", "list")), ("", "pods/exec", ("get", "create")),
                        ("", "nodes/proxy", ("get",)), ("apps", "deployments", ("list",)),
                        ("", "bindings", ("create",))])  # fmt: skip
    assert rules == (("", ("pods",)), ("apps", ("deployments",)))  # never a subresource
    docs = manifests(ScheduleOptions(image="img", store="s3://b/p", s3_secret="s3",
                                     recipients=("age1x",), keep_last=7, resources=rules))  # fmt: skip
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    verbs = {v for rule in role["rules"] for v in rule["verbs"]}  # type: ignore[attr-defined]
    assert verbs == {"get", "list"}
    assert all("*" not in r.get("resources", []) for r in role["rules"])  # type: ignore[attr-defined]
    cron = docs[-1]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["args"] == ["backup", "create", "--to", "s3://b/p", "--encrypt-to", "age1x",
                                 "--keep-last", "7"]  # fmt: skip
    assert container["envFrom"] == [{"secretRef": {"name": "s3"}}]
    r = rules
    for bad, message in (
        (ScheduleOptions(image="", resources=r), "--image"),
        (ScheduleOptions(image="i", schedule="often", store="s3://b", resources=r), "cron"),
        (ScheduleOptions(image="i", store="/backups", resources=r), "--claim"),
        (ScheduleOptions(image="i", store="rel", claim="c", resources=r), "absolute"),
        (ScheduleOptions(image="i", store="s3://b", resources=r), "--encrypt-to"),
    ):
        with pytest.raises(UsageError, match=message):
            manifests(bad)


def test_field_changes() -> None:
    a = {"spec": {"replicas": 2, "ports": [{"port": 80}], "gone": 1}, "data": {"k": "v"}}
    b = {"spec": {"replicas": 3, "ports": [{"port": 81}]}, "data": {"k": "v", "new": "x"}}
    assert list(field_changes(a, b)) == [
        FieldChange("spec.replicas", 2, 3),
        FieldChange("spec.ports[0].port", 80, 81),
        FieldChange("spec.gone", 1, None),
        FieldChange("data.new", None, "x"),
    ]
    assert list(field_changes({"l": [1]}, {"l": [1, 2]})) == [FieldChange("l", [1], [1, 2])]
    assert list(field_changes(a, a)) == []


def test_window_reads_only_its_frame() -> None:
    from kubecare.backup.archive import _Window

    f = io.BytesIO(b"0123456789")
    w = io.BufferedReader(_Window(f, 3, 4))
    assert w.read() == b"3456"


def test_a_malformed_manifest_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    for i, manifest in enumerate(
        [
            {"types": "x"},
            {"types": [1]},
            {"types": [{"group": "", "version": "v1", "resource": "../x", "count": 0}]},
            {"types": [{"group": "", "version": "v1 HTTP", "resource": "x", "count": 0}]},
            {"types": [{"group": "", "version": "v1", "resource": "x", "count": "many"}]},
            {
                "types": [
                    {
                        "group": "",
                        "version": "v1",
                        "resource": "x",
                        "count": 1,
                        "frame": {"offset": "abc", "length": 1, "sha256": "0" * 64},
                    }
                ]
            },
            {"types": [], "encryption": "age"},
        ]
    ):
        path = tmp_path / f"m{i}.tar.zst"
        write_archive(path, {})
        with ArchiveReader.open(path) as r:
            doc = {**r.manifest, **manifest}
        bad = tmp_path / f"bad{i}.tar.zst"
        w = ArchiveWriter(bad)
        w.commit(doc, 0)
        with pytest.raises(ArchiveError, match="manifest is malformed"):
            ArchiveReader.open(bad)


def test_an_object_must_be_the_one_its_member_names() -> None:
    from kubecare.backup.archive import ArchiveError as AE
    from kubecare.backup.restore import check_identity, load_object

    obj = load_object(b'{"metadata": {"name": "app", "namespace": "a"}}', "x", "p")
    check_identity(obj, "a", "app", True, "p")
    with pytest.raises(AE, match="altered"):
        check_identity(obj, "b", "app", True, "p")
    with pytest.raises(AE, match="altered"):
        check_identity(obj, "a", "other", True, "p")
    evil = load_object(
        json.dumps({"metadata": {"name": "x HTTP/1.1\r\nDELETE /"}}).encode(), "x", "p"
    )
    with pytest.raises(AE, match="not a valid object name"):
        check_identity(evil, "", "x HTTP/1.1\r\nDELETE /", False, "p")
    for not_object in (b"[]", b"{}", b"nope"):
        with pytest.raises(AE):
            load_object(not_object, "x", "p")


def test_finished_pods_and_jobs_are_left_out() -> None:
    assert skip_reason("pods", {**obj("p", "a"), "status": {"phase": "Succeeded"}})
    assert skip_reason("pods", {**obj("p", "a"), "status": {"phase": "Running"}}) is None
    done = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert skip_reason("jobs.batch", {**obj("j", "a"), "status": done})
    assert skip_reason("jobs.batch", {**obj("j", "a"), "status": {}}) is None


def test_ssh_keys_encrypt_and_decrypt_secrets(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from kubecare.backup.secrets import decryptor, encryptor, identities, recipients

    key = ed25519.Ed25519PrivateKey.generate()  # what ssh-keygen -t ed25519 -N "" writes
    (tmp_path / "k").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "k").chmod(0o600)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    sealed = encryptor(recipients([public]))(b"secret")
    assert decryptor(identities(tmp_path / "k"))(sealed, "m") == b"secret"
    (tmp_path / "k").chmod(0o644)
    with pytest.raises(UsageError, match="chmod 600"):
        identities(tmp_path / "k")


def test_retention_never_touches_what_is_not_a_backup(tmp_path: Path) -> None:
    from kubecare.backup.stores import LocalStore, is_backup

    write_archive(tmp_path / "nightly.tar.zst", {"configmaps": [cm("x")]})
    (tmp_path / "linux-6.9.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(100))
    (tmp_path / "Upper.tar.zst").write_bytes(b"")
    store = LocalStore(tmp_path)
    assert [i.name for i in store.infos() if is_backup(store, i.name)] == ["nightly"]


def test_types_without_skip_rules_are_known() -> None:
    from kubecare.backup.rules import has_skip_rules

    assert not has_skip_rules("widgets.example.com") and not has_skip_rules("deployments.apps")
    for gr in ("pods", "jobs.batch", "replicasets.apps", "endpoints", "configmaps", "secrets",
               "endpointslices.discovery.k8s.io", "apiservices.apiregistration.k8s.io",
               "services", "servicecidrs.networking.k8s.io",
               "clusterroles.rbac.authorization.k8s.io",
               "flowschemas.flowcontrol.apiserver.k8s.io"):  # fmt: skip
        assert has_skip_rules(gr), gr


def test_default_excludes_can_be_turned_off() -> None:
    from kubecare.backup.pages import PageSpec, process_page

    owned = {**obj("p", "a", ownerReferences=[{"kind": "ReplicaSet", "controller": True}])}
    page = json.dumps({"metadata": {"resourceVersion": "7"}, "items": [owned]}).encode()

    def spec(f: Filters) -> PageSpec:
        return PageSpec("pods", "", "pods", "v1", "Pod", True, f, (), 0)

    kept = process_page(spec(Filters()), page)
    assert kept.count == 0 and kept.skipped and kept.resource_version == "7"
    everything = process_page(spec(Filters(default_excludes=False)), page)
    assert everything.count == 1 and not everything.skipped


def test_list_metadata_is_read_from_either_end_without_the_items() -> None:
    from kubecare.backup.pages import list_meta

    builtin = b'{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"9","continue":"abc"},"items":[{"metadata":{"name":"x"},"data":{"continue":"no"}}]}'
    custom = b'{"apiVersion":"e.com/v1","items":[{"kind":"W","metadata":{"continue":"no"}}],"kind":"WList","metadata":{"continue":"tok","resourceVersion":"5"}}\n'
    assert list_meta(builtin) == ("9", "abc")
    assert list_meta(custom) == ("5", "tok")
    odd = b'{"items":[],"metadata":{"resourceVersion":"3"}}'  # another layout: parsed in full
    assert list_meta(odd) == ("3", "")


@pytest.mark.parametrize("length", [1, 60, 99, 100, 101, 120, 155, 156, 200, 254, 255, 256, 300])
@pytest.mark.parametrize("segment", ["n", "é", "a" * 30])
def test_tar_header_is_tarfiles_ustar_header(length: int, segment: str) -> None:
    """Byte for byte what tarfile writes, at and around ustar's 100/155-byte limits, with
    multi-byte UTF-8; PAX where ustar cannot hold the name (as tarfile's PAX format does)."""
    import tarfile

    from kubecare.backup.archive import _tar_header

    parts, total = ["resources"], len("resources")
    while total < length:
        parts.append(segment)
        total += 1 + len(segment.encode())
    path = "/".join(parts)[: max(length, 1)].rstrip("/") or "x"
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = 1234, 0o600, 1700000000
    info.uname = info.gname = "kubecare"
    try:
        want = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    except (ValueError, UnicodeError):
        want = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert _tar_header(path, 1234, 1700000000) == want


def test_api_errors_survive_a_worker_process() -> None:
    import pickle

    from kubecare.errors import ApiError, Forbidden, TooManyRequests

    for e in (ApiError("x", status=500), Forbidden("no", status=403, reason="Forbidden"),
              TooManyRequests("slow", status=429, retry_after=2.0)):  # fmt: skip
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and back.message == e.message and str(back) == str(e)
        assert back.__dict__ == e.__dict__


def test_odd_but_valid_names_round_trip_and_impossible_ones_are_skipped(tmp_path: Path) -> None:
    from kubecare.backup.pages import PageSpec, process_page
    from kubecare.backup.restore import api_path

    names = ["with space", "line\u2028sep", "q?x", "system:node:a"]
    items = [obj(n, "a") for n in [*names, "ctl\x07char"]]
    page = json.dumps({"metadata": {}, "items": items}).encode()
    spec = PageSpec("roles.rbac.authorization.k8s.io", "rbac.authorization.k8s.io", "roles",
                    "rbac.authorization.k8s.io/v1", "Role", True, Filters(), (), 0)  # fmt: skip
    done = process_page(spec, page)
    assert done.count == 4 and sum(done.skipped.values()) == 1
    path = tmp_path / "odd.tar.zst"
    w = ArchiveWriter(path)
    with open(tmp_path / ".s", "w+b") as spool:
        frame = TypeFrame(spool, 0)
        frame.add_frame(done.frame, done.sums, done.count, done.size)
        sha = frame.finish(checksums_path("rbac.authorization.k8s.io", "roles"))
        off, length, fsha = w.append(spool)
    w.commit({"format": "kubecare-backup", "formatVersion": 1, "types": [{
        "group": "rbac.authorization.k8s.io", "version": "v1", "resource": "roles", "count": 4,
        "namespaced": True, "frame": {"offset": off, "length": length, "sha256": fsha},
        "checksums": {"path": checksums_path("rbac.authorization.k8s.io", "roles"),
                      "sha256": sha}}]}, 0)  # fmt: skip
    with ArchiveReader.open(path) as r:
        assert verify(r).ok, verify(r).problems
    entry = {"group": "", "version": "v1", "resource": "roles", "namespaced": True}
    assert api_path(entry, "a", "q?x").endswith("/namespaces/a/roles/q%3Fx")
    assert api_path(entry, "a", "with space").endswith("/roles/with%20space")
