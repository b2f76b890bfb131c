"""The kubelet config the runner reads at a node's kubelet start, as the kubelet's own loader
(pkg/kubelet/kubeletconfig/configfiles: read, decode, resolve relative paths against the
file's dir; kubelet.go: an empty staticPodPath means no static pods)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubecare.sandbox.kubelet_config import read

HEAD = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"


@pytest.mark.parametrize(
    ("static", "where"),
    [
        ("/etc/kubernetes/manifests", "etc/kubernetes/manifests"),  # kubeadm's
        ("/srv/pods/", "srv/pods"),
        # relative: against the config file's dir, /var/lib/kubelet (resolveRelativePaths)
        ("manifests", "var/lib/kubelet/manifests"),
        ("../pods", "var/lib/pods"),
        # the node's "/.." is its "/": never above the node's tree
        ("/../../../etc/kubernetes/manifests", "etc/kubernetes/manifests"),
        ("../../../../../../x", "x"),
    ],
)
def test_static_pod_path_is_the_nodes_path_inside_its_tree(
    tmp_path: Path, static: str, where: str
) -> None:
    start = read(tmp_path, HEAD + f"staticPodPath: {static}\n")
    assert start.error is None and start.manifests == tmp_path / where


@pytest.mark.parametrize("text", [HEAD, HEAD + 'staticPodPath: ""\n'])
def test_no_static_pod_path_means_no_static_pods(tmp_path: Path, text: str) -> None:
    assert read(tmp_path, text).manifests is None and read(tmp_path, text).error is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (None, "failed to read kubelet config file /var/lib/kubelet/config.yaml"),
        ("", "is empty"),
        ("a: [", "is not YAML"),
        ("apiVersion: v1\nkind: ConfigMap\n", "not a KubeletConfiguration"),
        (
            "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v9\n",
            "unknown apiVersion",
        ),
        (HEAD + "staticPodPath: [a]\n", "staticPodPath is not a string"),
    ],
)
def test_a_config_the_kubelet_cannot_start_with_is_an_error(
    tmp_path: Path, text: str | None, why: str
) -> None:
    start = read(tmp_path, text)
    assert start.manifests is None and start.error is not None and why in start.error


def test_a_symlink_out_of_the_tree_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "node", tmp_path / "elsewhere"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (root / "etc" / "pods").symlink_to(outside)
    start = read(root, HEAD + "staticPodPath: /etc/pods\n")
    assert start.manifests is None and "leaves the node's tree" in str(start.error)
