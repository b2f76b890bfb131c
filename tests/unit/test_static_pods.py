"""Static pod manifests as the sandbox runner reads them: validation, binaries by image, and the
container-path to hostPath translation that makes a kubeadm-style etcd restore work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubecare.sandbox.staticpods import (
    ImageNotBuilt,
    ManifestError,
    host_path,
    parse_manifest,
    translate,
)


def resolve(component: str, tag: str) -> str:
    if tag == "v9.9.9":
        raise ImageNotBuilt(f"image registry.k8s.io/{component}:{tag} is not built")
    return f"/cache/{component}-{tag}"


def etcd_pod(root: Path, data_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "etcd", "namespace": "kube-system"},
        "spec": {
            "containers": [
                {
                    "name": "etcd",
                    "image": "registry.k8s.io/etcd:3.6.8-0",
                    "command": [
                        "etcd",
                        "--data-dir=/var/lib/etcd",
                        "--cert-file=/etc/kubernetes/pki/etcd/server.crt",
                        "--listen-client-urls=https://127.0.0.1:2379",
                        "--name",
                        "cp",
                    ],
                    "volumeMounts": [
                        {"name": "etcd-data", "mountPath": "/var/lib/etcd"},
                        {"name": "etcd-certs", "mountPath": "/etc/kubernetes/pki/etcd"},
                    ],
                    "livenessProbe": {
                        "httpGet": {
                            "host": "127.0.0.1",
                            "path": "/livez",
                            "port": 2381,
                            "scheme": "HTTP",
                        },
                        "failureThreshold": 8,
                        "periodSeconds": 10,
                    },
                }
            ],
            "volumes": [
                {
                    "name": "etcd-data",
                    "hostPath": {"path": str(data_dir), "type": "DirectoryOrCreate"},
                },
                {"name": "etcd-certs", "hostPath": {"path": str(root / "pki/etcd")}},
            ],
        },
    }


def parse(root: Path, doc: Any, name: str = "etcd.yaml") -> Any:
    data = yaml.safe_dump(doc).encode() if not isinstance(doc, bytes) else doc
    return parse_manifest(root / name, data, root=root, resolve=resolve)


def test_container_paths_become_host_paths_and_a_new_hostpath_moves_etcd(tmp_path: Path) -> None:
    spec = parse(tmp_path, etcd_pod(tmp_path, tmp_path / "var/lib/etcd"))
    assert spec.argv[0] == "/cache/etcd-3.6.8-0"
    assert f"--data-dir={tmp_path}/var/lib/etcd" in spec.argv
    assert f"--cert-file={tmp_path}/pki/etcd/server.crt" in spec.argv
    assert "--listen-client-urls=https://127.0.0.1:2379" in spec.argv
    assert spec.liveness is not None and spec.liveness.url == "http://127.0.0.1:2381/livez"
    # The kubeadm restore procedure: only the hostPath changes; --data-dir stays /var/lib/etcd.
    restored = parse(tmp_path, etcd_pod(tmp_path, tmp_path / "var/lib/etcd-restored"))
    assert f"--data-dir={tmp_path}/var/lib/etcd-restored" in restored.argv
    assert restored.digest != spec.digest


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("--data-dir=/var/lib/etcd", "--data-dir=/h/data"),
        ("--data-dir=/var/lib/etcd/member", "--data-dir=/h/data/member"),
        ("--data-dir=/var/lib/etcdx", "--data-dir=/var/lib/etcdx"),  # a prefix, not a parent
        ("/var/lib/etcd", "/h/data"),
        ("--client-cert-auth", "--client-cert-auth"),
        ("--files=/etc/k/a.crt,/etc/k/b.crt", "--files=/h/k/a.crt,/h/k/b.crt"),
    ],
)
def test_translate(arg: str, expected: str) -> None:
    assert translate(arg, [("/var/lib/etcd", "/h/data"), ("/etc/k", "/h/k")]) == expected


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(kind="Deployment"), "is not a v1 Pod"),
        (lambda d: d["spec"]["containers"][0].pop("command"), "has no command"),
        (
            lambda d: d["spec"]["containers"][0].update(image="nginx:1.27"),
            "not one the sandbox can run",
        ),
        (lambda d: d["spec"]["containers"][0].update(image="registry.k8s.io/etcd"), "has no tag"),
        (
            lambda d: d["spec"]["containers"][0]["command"].__setitem__(0, "kube-apiserver"),
            "does not match image",
        ),
        (
            lambda d: d["spec"]["volumes"][0]["hostPath"].update(path="/var/lib/etcd"),
            "outside the sandbox",
        ),
        (
            lambda d: d["spec"]["volumes"][0]["hostPath"].update(path="/tmp/../etc"),
            "outside the sandbox",
        ),
        (lambda d: d["metadata"].pop("name"), "no metadata.name"),
        (
            lambda d: d["spec"]["containers"][0]["command"].append("--name=a\0b"),
            "NUL byte",  # exec would raise ValueError and take the runner down
        ),
    ],
)
def test_bad_manifests_are_refused_with_the_file_named(
    tmp_path: Path, mutate: Any, message: str
) -> None:
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    mutate(doc)
    with pytest.raises(ManifestError, match=message) as info:
        parse(tmp_path, doc)
    assert "etcd.yaml" in str(info.value)


def test_not_yaml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not valid YAML"):
        parse(tmp_path, b"kind: Pod\n  bad: [", "broken.yaml")


def test_an_image_never_built_keeps_the_manifest_for_the_mirror_pod(tmp_path: Path) -> None:
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    doc["spec"]["containers"][0]["image"] = "registry.k8s.io/etcd:v9.9.9"
    with pytest.raises(ImageNotBuilt) as info:
        parse(tmp_path, doc)
    assert info.value.pod is not None and info.value.pod["metadata"]["name"] == "etcd"


@pytest.mark.parametrize(
    ("arg", "outside"),
    [
        ("--audit-log-path=/var/log/kubernetes/audit.log", "/var/log/kubernetes/audit.log"),
        ("--data-dir=/var/lib/etcd/../../../../etc", None),  # resolved below: climbs out
        ("--cert-dir=../../../tmp/x", None),  # relative: the runner works in the state dir
        ("--feature-files=a=/etc/shadow,b=x", None),  # name=/path list items are paths too
    ],
)
def test_command_paths_must_stay_inside_the_sandbox(
    tmp_path: Path, arg: str, outside: str | None
) -> None:
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    doc["spec"]["containers"][0]["command"].append(arg)
    with pytest.raises(ManifestError, match="is not under any volumeMount inside the sandbox"):
        parse(tmp_path, doc)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"]["containers"][0].update(volumeMounts=["foo"]),
        lambda d: d["spec"]["volumes"][0].update(hostPath="a string"),
        lambda d: d["spec"]["volumes"][0]["hostPath"].update(path=1),
        lambda d: d["spec"]["containers"][0].update(
            ports=[{"name": "probe-port", "containerPort": "abc"}]
        ),
        lambda d: d["spec"]["containers"][0]["livenessProbe"].update(periodSeconds="x"),
        lambda d: d.update(metadata="x"),
    ],
)
def test_odd_shapes_are_manifest_errors_not_crashes(tmp_path: Path, mutate: Any) -> None:
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    mutate(doc)
    with pytest.raises(ManifestError):
        parse(tmp_path, doc)


def test_a_trailing_slash_on_a_mount_path_is_still_a_directory() -> None:
    assert translate("--a=/etc/k/pki/ca.crt", [("/etc/k/", "/h/k")]) == "--a=/h/k/pki/ca.crt"
    assert translate("--a=/x/y", [("/", "/h")]) == "--a=/h/x/y"


def test_urls_and_plain_values_are_not_paths(tmp_path: Path) -> None:
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    doc["spec"]["containers"][0]["command"] += [
        "--service-cluster-ip-range=10.96.0.0/12",
        "--initial-cluster=a=https://127.0.0.1:2380",
        "--feature-gates=InitialCorruptCheck=true",
    ]
    assert parse(tmp_path, doc).argv[-1] == "--feature-gates=InitialCorruptCheck=true"


def test_absolute_host_paths_are_the_nodes_own(tmp_path: Path) -> None:
    """kubeadm's own manifests (hostPath /var/lib/etcd, /etc/kubernetes/pki) run: the kubelet on
    that node sees its own /var and /etc, which for a sandbox node is its root."""
    node_root = tmp_path / "nodes" / "cp"
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    doc["spec"]["volumes"][0]["hostPath"]["path"] = "/var/lib/etcd"
    data = yaml.safe_dump(doc).encode()
    spec = parse_manifest(
        tmp_path / "etcd.yaml", data, root=tmp_path, resolve=lambda c, t: f"/bin/{c}",
        node_root=node_root,
    )  # fmt: skip
    assert f"--data-dir={node_root}/var/lib/etcd" in spec.argv
    assert host_path("/tmp/../etc", tmp_path, node_root) == node_root / "etc"
    assert host_path(str(tmp_path / "x"), tmp_path, node_root) == tmp_path / "x"  # as it is
    for escape in ("/../../etc", "../../../../../etc"):
        assert host_path(escape, tmp_path, node_root) is None
    (node_root / "etc").mkdir(parents=True)
    (node_root / "etc" / "escape").symlink_to("/etc")  # a link out of the node's tree
    assert host_path("/etc/escape/kubernetes", tmp_path, node_root) is None
    (node_root / "etc" / "pki").symlink_to(node_root / "var")  # one that stays inside
    assert host_path("/etc/pki", tmp_path, node_root) == node_root / "var"
    assert host_path("/var/lib/etcd", tmp_path, None) is None  # no node: refused as before


def test_a_valid_pod_that_cannot_run_still_carries_its_manifest(tmp_path: Path) -> None:
    """The runner keeps a mirror pod for it (new hash, the error as its waiting state)."""
    doc = etcd_pod(tmp_path, tmp_path / "var/lib/etcd")
    doc["spec"]["volumes"][0]["hostPath"]["path"] = "/etc"
    with pytest.raises(ManifestError, match="outside the sandbox") as info:
        parse(tmp_path, doc)
    assert info.value.pod is not None and info.value.pod["metadata"]["name"] == "etcd"
    with pytest.raises(ManifestError) as bad_yaml:
        parse(tmp_path, b"kind: Pod\n  bad: [", "broken.yaml")
    assert bad_yaml.value.pod is None  # not a Pod: no mirror, as the kubelet


def test_a_node_root_is_only_ever_inside_the_state_dir(tmp_path: Path) -> None:
    from kubecare.sandbox.runner import NodeDirs

    inside = NodeDirs("cp", tmp_path / "nodes" / "cp" / "etc" / "kubernetes" / "manifests")
    assert inside.root(tmp_path) == (tmp_path / "nodes" / "cp").resolve()
    # the machine's own kubeadm dir would make "/" the node's root: refused
    assert NodeDirs("cp", Path("/etc/kubernetes/manifests")).root(tmp_path) is None
    assert NodeDirs("cp", tmp_path / "manifests").root(tmp_path) is None
