"""Mirror pods as the kubelet makes them for static pods (pkg/kubelet/pod/mirror_client.go,
pkg/kubelet/types/pod_update.go): name, annotations, owner, tolerations, and a status that
follows the process."""

from __future__ import annotations

from kubecare.sandbox.mirror import HASH, MIRROR, SOURCE, PodView, mirror_pod, mirror_status

MANIFEST = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "kube-apiserver",
        "namespace": "kube-system",
        "labels": {"component": "kube-apiserver", "tier": "control-plane"},
    },
    "spec": {
        "containers": [
            {"name": "kube-apiserver", "image": "registry.k8s.io/kube-apiserver:v1.37.2"}
        ],
        "hostNetwork": True,
    },
    "status": {},
}


def view(**changes: object) -> PodView:
    base: dict[str, object] = dict(
        name="kube-apiserver",
        namespace="kube-system",
        node="control-plane",
        digest="d1",
        manifest=MANIFEST,
        image="registry.k8s.io/kube-apiserver:v1.37.2",
        running=True,
        ready=True,
        started_at=1_800_000_000.0,
        restarts=0,
    )
    base.update(changes)
    return PodView(**base)  # type: ignore[arg-type]


def test_the_mirror_is_named_annotated_and_owned_like_the_kubelets() -> None:
    pod = mirror_pod(view(), "node-uid", 1_800_000_000.0)
    meta = pod["metadata"]
    assert meta["name"] == "kube-apiserver-control-plane" and meta["namespace"] == "kube-system"
    assert meta["annotations"][MIRROR] == meta["annotations"][HASH] == "d1"
    assert meta["annotations"][SOURCE] == "file"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "v1",
            "kind": "Node",
            "name": "control-plane",
            "uid": "node-uid",
            "controller": True,
        }
    ]
    assert pod["spec"]["nodeName"] == "control-plane"
    assert {"operator": "Exists", "effect": "NoExecute"} in pod["spec"]["tolerations"]
    assert "status" not in pod
    assert MANIFEST["metadata"]["name"] == "kube-apiserver"  # the manifest itself is untouched


def test_status_follows_the_process() -> None:
    running = mirror_status(view(), 1_800_000_100.0)
    assert running["phase"] == "Running" and running["containerStatuses"][0]["ready"] is True
    assert "running" in running["containerStatuses"][0]["state"]
    crashing = mirror_status(
        view(running=False, ready=False, restarts=3, waiting_reason="CrashLoopBackOff"),
        1_800_000_100.0,
    )
    c = crashing["containerStatuses"][0]
    assert c["state"]["waiting"]["reason"] == "CrashLoopBackOff" and c["restartCount"] == 3
    assert {x["type"]: x["status"] for x in crashing["conditions"]}["Ready"] == "False"
    unbuilt = mirror_status(
        view(
            running=False,
            ready=False,
            waiting_reason="ErrImagePull",
            waiting_message="run: kubecare sandbox build --version 1.35",
        ),
        1_800_000_100.0,
    )
    assert unbuilt["containerStatuses"][0]["state"]["waiting"]["message"].endswith("--version 1.35")
