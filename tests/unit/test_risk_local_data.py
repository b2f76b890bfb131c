"""Which volumes of a pod are data the node takes with it (kubecare risk's "local data")."""

from __future__ import annotations

from typing import Any

from kubecare.nodes.risk import local_data


def pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "p"},
        "spec": {"volumes": volumes, "containers": [{"name": "c", "volumeMounts": mounts}]},
    }


def test_read_only_mounts_hold_nothing_the_pod_wrote() -> None:
    """kubeadm's kube-apiserver: the host's CA dirs and pki read-only; etcd writes its data."""
    p = pod(
        [
            {"name": "ca-certs", "hostPath": {"path": "/etc/ssl/certs"}},
            {"name": "etcd-data", "hostPath": {"path": "/var/lib/etcd"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "unused", "hostPath": {"path": "/srv/x"}},
            {"name": "both", "hostPath": {"path": "/srv/y"}},
        ],
        [
            {"name": "ca-certs", "mountPath": "/etc/ssl/certs", "readOnly": True},
            {"name": "etcd-data", "mountPath": "/var/lib/etcd"},
            {"name": "scratch", "mountPath": "/tmp", "readOnly": False},
            {"name": "both", "mountPath": "/a", "readOnly": True},
            {"name": "both", "mountPath": "/b"},  # written through one of its mounts
        ],
    )
    assert local_data(p, "n", {}, {}) == [
        "ns/p: hostPath /var/lib/etcd",
        "ns/p: emptyDir scratch",
        "ns/p: hostPath /srv/x",  # mounted by nothing: nothing says it holds no data
        "ns/p: hostPath /srv/y",
    ]


def test_a_local_persistent_volume_counts_however_it_is_mounted() -> None:
    pv = {
        "metadata": {"name": "pv-1"},
        "spec": {
            "local": {"path": "/mnt/disks/1"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n"]}
            ]}]}},
        },
    }  # fmt: skip
    claim = {"metadata": {"namespace": "ns", "name": "data"}, "spec": {"volumeName": "pv-1"}}
    p = pod(
        [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}},
         {"name": "scratch", "emptyDir": {}}],
        [{"name": "d", "mountPath": "/data", "readOnly": True},
         {"name": "scratch", "mountPath": "/s", "readOnly": True}],
    )  # fmt: skip
    assert local_data(p, "n", {"pv-1": pv}, {"ns/data": claim}) == [
        "ns/p: local PersistentVolume pv-1",
        "ns/p: emptyDir scratch",
    ]
