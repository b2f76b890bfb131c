"""Reading Kubernetes objects out of a snapshot of the sandbox's real etcd.

The yardstick: every object in the snapshot, decoded offline, equals what the apiserver returns
for it at the snapshot's revision (a LIST with resourceVersionMatch=Exact reads etcd at that
revision), type by type. Then ls, get, recover (--apply) and diff through the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecare.errors import Conflict, NotFound
from kubecare.etcd.bbolt import open_bolt
from kubecare.etcd.k8sproto import Decoder
from kubecare.etcd.mvcc import parse_key_value, revisions
from kubecare.etcd.objects import decode, with_values
from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

from .conftest import run_cli
from .workloads import deployment, statefulset, wait_running, widget_crd

pytestmark = pytest.mark.e2e
#: kube-apiserver's own keys: objects, but no API serves them (IP/port allocators, peer leases)
INTERNAL = {"ranges", "peerserverleases", "masterleases"}

CRD = widget_crd("example.com")


def save(sb: Sandbox, path: Path) -> None:
    res = run_cli("etcd", "snapshot", "save", str(path), "--sandbox", sb.name)
    assert res.returncode == 0, res.stderr


def revision_of(path: Path) -> int:
    with open_bolt(path) as db:
        last = 0
        for rev, _, raw in revisions(db):
            last = rev.main
            parse_key_value(raw)
        return last


async def workload_zoo(kube: Kube, ns: str) -> None:
    """One of most kinds a cluster holds, with the shapes that are easy to get wrong."""
    post = kube.request_json
    await post(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        body={
            "metadata": {"name": "app", "annotations": {"html": "<b>&amp;\u2028é\u0007"}},
            "data": {"k": "v"},
            "binaryData": {"b": "AAEC"},
        },
    )
    await post(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        body={"metadata": {"name": "s"}, "stringData": {"password": "hunter2"}, "type": "Opaque"},
    )
    await post(
        "POST",
        f"/api/v1/namespaces/{ns}/services",
        body={
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )
    await post("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=deployment("web", 2))
    sts_spec = {
        "containers": [
            {
                "name": "c",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
            }
        ]
    }
    sts = statefulset("db", 1, sts_spec)
    sts["spec"]["volumeClaimTemplates"] = [
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }
    ]
    await post("POST", f"/apis/apps/v1/namespaces/{ns}/statefulsets", body=sts)
    await post(
        "POST",
        f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets",
        body={
            "metadata": {"name": "web"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "web"}}},
        },
    )
    await post(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
        body={"metadata": {"name": "empty"}, "rules": []},
    )
    await post(
        "POST",
        f"/apis/batch/v1/namespaces/{ns}/cronjobs",
        body={
            "metadata": {"name": "nightly"},
            "spec": {
                "schedule": "0 3 * * *",
                "jobTemplate": {
                    "spec": {
                        "template": {
                            "spec": {
                                "restartPolicy": "Never",
                                "containers": [{"name": "c", "image": "busybox"}],
                            }
                        }
                    }
                },
            },
        },
    )
    await post(
        "POST",
        f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
        body={
            "metadata": {"name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
    )
    await post("POST", f"/apis/example.com/v1/namespaces/{ns}/widgets", body={
        "apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"},
        "spec": {"size": 3, "ratio": 0.25, "tags": ["a", "<b>"], "nested": {"z": True, "a": None}},
    })  # fmt: skip


@pytest.fixture(scope="module")
async def zoo(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    ns = f"zoo-{uuid.uuid4().hex[:6]}"
    async with Kube(sandbox.client_options()) as kube:
        with contextlib.suppress(Conflict):  # another run created it: fine
            await kube.request_json(
                "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", body=CRD
            )
        await kube.request_json("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
        for _ in range(50):  # the CRD's API appears shortly after it is created
            try:
                await workload_zoo(kube, ns)
                break
            except NotFound:
                await asyncio.sleep(0.2)
        await wait_running(kube, ns, 2, timeout=90)  # the StatefulSet waits for its volume
    path = tmp_path_factory.mktemp("zoo") / "zoo.db"
    save(sandbox, path)
    return ns, path


async def test_every_object_decodes_to_what_the_apiserver_returned_at_that_revision(
    sandbox: Sandbox, zoo: tuple[str, Path]
) -> None:
    _, path = zoo
    revision = revision_of(path)
    decoder = Decoder()
    by_list: dict[tuple[str, str], dict[tuple[str, str], Any]] = defaultdict(dict)
    shown_as_stored = []
    for entry, value in with_values(path, "/registry/"):
        if entry.encoding not in ("protobuf", "json"):
            continue
        try:
            decoded = decode(entry, value, decoder)
        except Exception as e:
            raise AssertionError(f"{entry.key}: {e}") from None
        if not decoded.exact:
            shown_as_stored.append(entry.key)
            continue
        plural = entry.resource.split(".", 1)[0]
        by_list[(decoded.api_version, plural)][(entry.namespace, entry.name)] = decoded
    # CRDs are stored as apiextensions v1beta1, which is no longer served: shown as stored
    assert all("customresourcedefinitions" in k for k in shown_as_stored), shown_as_stored
    compared: dict[str, int] = {}
    not_served: list[str] = []
    different: list[str] = []
    async with Kube(sandbox.client_options()) as kube:
        for (api_version, plural), objects in sorted(by_list.items()):
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            try:
                items, _ = await kube.list_all(
                    f"{base}/{plural}",
                    params={"resourceVersion": str(revision), "resourceVersionMatch": "Exact"},
                )
            except NotFound:  # internal keys (ranges, peer leases), or a version not served
                if plural not in INTERNAL:
                    not_served.append(f"{plural}.{api_version}")
                continue
            live = {(i["metadata"].get("namespace", ""), i["metadata"]["name"]): i for i in items}
            for where, decoded in objects.items():
                got = decoded.object()
                got.pop("kind")
                got.pop("apiVersion")
                want = live.get(where)
                assert want is not None, f"{api_version} {plural} {where} not listed at {revision}"
                want.pop("kind", None)
                want.pop("apiVersion", None)
                # the same keys in the same order with the same values
                if json.dumps(got) != json.dumps(want):
                    different.append(
                        f"{api_version} {plural} {where}: {_first_difference(got, want)}"
                    )
            compared[f"{plural}.{api_version}"] = len(objects)
    for kind in ("configmaps.v1", "secrets.v1", "pods.v1", "deployments.apps/v1", "statefulsets.apps/v1",
                 "replicasets.apps/v1", "services.v1", "widgets.example.com/v1", "nodes.v1",
                 "apiservices.apiregistration.k8s.io/v1", "clusterroles.rbac.authorization.k8s.io/v1",
                 "cronjobs.batch/v1", "poddisruptionbudgets.policy/v1", "leases.coordination.k8s.io/v1"):  # fmt: skip
        assert compared.get(kind), (kind, sorted(compared))
    assert different == []
    assert sum(compared.values()) > 200
    # 1.37 stores ClusterTrustBundles as v1beta1 and serves only v1: nothing to compare with
    assert not_served == ["clustertrustbundles.certificates.k8s.io/v1beta1"] or not_served == []


def test_ls_get_and_recover_through_the_cli(zoo: tuple[str, Path]) -> None:
    ns, path = zoo
    ls = run_cli(
        "etcd", "snapshot", "ls", str(path), "--prefix", f"/registry/configmaps/{ns}/", "-o", "json"
    )
    assert ls.returncode == 0, ls.stderr
    assert [e["name"] for e in json.loads(ls.stdout)] == ["app", "kube-root-ca.crt"]
    get = run_cli("etcd", "snapshot", "get", str(path), "cm/app", "-n", ns)
    assert get.returncode == 0, get.stderr
    obj = yaml.safe_load(get.stdout)
    assert obj["kind"] == "ConfigMap" and obj["data"] == {"k": "v"}
    secret = run_cli("etcd", "snapshot", "get", str(path), "secrets/s", "-n", ns, "-o", "json")
    assert secret.returncode == 0, secret.stderr
    assert json.loads(secret.stdout)["data"] == {"password": "aHVudGVyMg=="}
    rec = run_cli("etcd", "snapshot", "recover", str(path), "deployments/web", "-n", ns)
    assert rec.returncode == 0, rec.stderr
    clean = yaml.safe_load(rec.stdout)
    assert "status" not in clean and "resourceVersion" not in clean["metadata"]
    assert "uid" not in clean["metadata"] and "managedFields" not in clean["metadata"]
    missing = run_cli("etcd", "snapshot", "get", str(path), "configmaps/nope", "-n", ns)
    assert missing.returncode == 1 and "is not in" in missing.stderr


async def test_a_deleted_object_is_recovered_and_nothing_else_changes(
    sandbox: Sandbox, kube: Kube, zoo: tuple[str, Path]
) -> None:
    ns, path = zoo
    await kube.request_json("DELETE", f"/api/v1/namespaces/{ns}/configmaps/app")
    await kube.request_json("DELETE", f"/apis/example.com/v1/namespaces/{ns}/widgets/w1")
    before = await kube.get_json(f"/api/v1/namespaces/{ns}/services/web")
    diff = run_cli(
        "etcd", "snapshot", "diff", str(path), "-o", "json", kubeconfig=sandbox.kubeconfig
    )
    assert diff.returncode == 0, diff.stderr
    changes = {
        (c["change"], c["resource"], c["namespace"], c["name"]) for c in json.loads(diff.stdout)
    }
    assert ("deleted", "configmaps", ns, "app") in changes
    assert ("deleted", "widgets.example.com", ns, "w1") in changes
    assert not any(c[2] == ns and c[1] == "services" for c in changes)  # untouched
    for ref in ("configmaps/app", "widgets.example.com/w1"):
        res = run_cli(
            "etcd",
            "snapshot",
            "recover",
            str(path),
            ref,
            "-n",
            ns,
            "--apply",
            kubeconfig=sandbox.kubeconfig,
        )
        assert res.returncode == 0, res.stderr
        assert "created from the snapshot" in res.stdout
    cm = await kube.get_json(f"/api/v1/namespaces/{ns}/configmaps/app")
    assert cm["data"] == {"k": "v"} and cm["binaryData"] == {"b": "AAEC"}
    assert cm["metadata"]["annotations"]["html"] == "<b>&amp;\u2028é\u0007"
    w = await kube.get_json(f"/apis/example.com/v1/namespaces/{ns}/widgets/w1")
    assert w["spec"]["tags"] == ["a", "<b>"]
    assert (await kube.get_json(f"/api/v1/namespaces/{ns}/services/web"))["metadata"][
        "resourceVersion"
    ] == before["metadata"]["resourceVersion"]
    again = run_cli(
        "etcd",
        "snapshot",
        "recover",
        str(path),
        "configmaps/app",
        "-n",
        ns,
        "--apply",
        kubeconfig=sandbox.kubeconfig,
    )
    assert again.returncode == 2 and "--replace" in again.stderr
    replaced = run_cli(
        "etcd",
        "snapshot",
        "recover",
        str(path),
        "configmaps/app",
        "-n",
        ns,
        "--apply",
        "--replace",
        kubeconfig=sandbox.kubeconfig,
    )
    assert replaced.returncode == 0 and "replaced" in replaced.stdout


def _first_difference(got: Any, want: Any, path: str = "") -> str:
    if isinstance(got, dict) and isinstance(want, dict):
        if list(got) != list(want):
            return f"{path or '.'} keys {list(got)} != {list(want)}"
        for k in got:
            if got[k] != want[k]:
                return _first_difference(got[k], want[k], f"{path}.{k}")
    if isinstance(got, list) and isinstance(want, list) and len(got) == len(want):
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path}: {json.dumps(got)[:120]} != {json.dumps(want)[:120]}"
