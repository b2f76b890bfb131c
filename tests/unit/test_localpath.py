"""The sandbox provisioner's decisions, with the table tests of
sig-storage-lib-external-provisioner's controller_test.go ported (TestShouldProvision,
TestShouldDelete, TestIsProvisionerForVolume); cases about features this provisioner does not
have (a Qualifier, additional provisioner names, the PV finalizer, CSI sources) are left out."""

from __future__ import annotations

from typing import Any

import pytest

from kubecare.sandbox import localpath as lp

OTHER = "abc.def/ghi"
BETA = lp.ANN_PROVISIONER_BETA
GA = lp.ANN_PROVISIONER
WAIT = "WaitForFirstConsumer"


def klass(name: str, provisioner: str, mode: str = WAIT, policy: str = "Delete") -> dict:
    return {"metadata": {"name": name}, "provisioner": provisioner,
            "volumeBindingMode": mode, "reclaimPolicy": policy}  # fmt: skip


def claim(
    cls: str = "class-1",
    provisioner: str | None = lp.PROVISIONER,
    volume_name: str = "",
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict:
    """newClaim: a non-empty provisioner goes into the beta annotation, then ``annotations``."""
    ann = {BETA: provisioner} if provisioner else {}
    ann.update(annotations or {})
    return {
        "metadata": {"name": "claim-1", "namespace": "default", "uid": "1-1",
                     "resourceVersion": "0", "annotations": ann},
        "spec": {"storageClassName": cls, "volumeName": volume_name,
                 "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}, **spec},
        "status": {"phase": "Pending"},
    }  # fmt: skip


NODE = {lp.ANN_SELECTED_NODE: "node1"}


@pytest.mark.parametrize(
    ("name", "classes", "c", "expected"),
    [
        ("should provision based on provisionerName",
         [klass("class-1", lp.PROVISIONER)], claim(annotations=NODE), True),
        ("claim already bound",
         [klass("class-1", lp.PROVISIONER)], claim(volume_name="foo", annotations=NODE), False),
        ("no such class", [klass("class-1", lp.PROVISIONER)],
         claim("class-2", provisioner=None), False),
        ("not this provisioner's job", [klass("class-1", OTHER)],
         claim(provisioner=OTHER, annotations=NODE), False),
        ("unknown provisioner annotation 1.5", [klass("class-1", lp.PROVISIONER)],
         claim(provisioner=None, annotations={BETA: OTHER, **NODE}), False),
        ("no provisioner annotation 1.5", [klass("class-1", lp.PROVISIONER)],
         claim(provisioner=None, annotations=NODE), False),
        ("unknown provisioner annotation 1.23", [klass("class-1", lp.PROVISIONER)],
         claim(provisioner=None, annotations={GA: OTHER, **NODE}), False),
        ("if PVC is in delay binding mode, should not provision if annSelectedNode is not set",
         [klass("class-1", lp.PROVISIONER, WAIT)], claim(), False),
        ("if PVC is in delay binding mode, should provision if annSelectedNode is set",
         [klass("class-1", lp.PROVISIONER, WAIT)], claim(annotations=NODE), True),
        ("if PVC is in delay binding mode, should provision if annSelectedNode is set with "
         "annStorageProvisioner", [klass("class-1", lp.PROVISIONER, WAIT)],
         claim(provisioner=None, annotations={GA: lp.PROVISIONER, **NODE}), True),
        # the library's own rule for the GA key: present, it wins over the beta one
        ("a GA annotation naming another provisioner is not overridden by the beta one",
         [klass("class-1", lp.PROVISIONER)],
         claim(annotations={GA: OTHER, **NODE}), False),
        # a local volume needs a node: an Immediate class's claim without one is not provisioned
        ("immediate binding without a selected node",
         [klass("class-1", lp.PROVISIONER, "Immediate")], claim(), False),
    ],
)  # fmt: skip
def test_should_provision(name: str, classes: list[dict], c: dict, expected: bool) -> None:
    by_name = {k["metadata"]["name"]: k for k in classes}
    assert lp.should_provision(c, by_name) is expected, name


def volume(phase: str, policy: str, annotations: dict[str, str] | None = None,
           deleting: bool = False) -> dict:  # fmt: skip
    meta: dict = {"name": "volume-1", "uid": "u1", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {
            "persistentVolumeReclaimPolicy": policy,
            "hostPath": {"path": f"{lp.VOLUMES}/volume-1"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": lp.HOSTNAME, "operator": "In", "values": ["real-1"]}]}]}},
        },
        "status": {"phase": phase},
    }  # fmt: skip


OURS = {lp.ANN_PROVISIONED_BY: lp.PROVISIONER}


@pytest.mark.parametrize(
    ("name", "v", "expected"),
    [
        ("should delete", volume("Released", "Delete", OURS), True),
        ("failed: shouldn't delete", volume("Failed", "Delete", OURS), False),
        ("volume still bound", volume("Bound", "Delete", OURS), False),
        ("non-delete reclaim policy", volume("Released", "Retain", OURS), False),
        ("non-nil deletion timestamp", volume("Released", "Delete", OURS, deleting=True), False),
        ("nil deletion timestamp", volume("Released", "Delete", OURS), True),
    ],
)
def test_should_delete(name: str, v: dict, expected: bool) -> None:
    assert lp.should_delete(v) is expected, name


@pytest.mark.parametrize(
    ("name", "annotations", "expected"),
    [
        ("known dynamically provisioned in-tree volume", OURS, True),
        ("known dynamically provisioned in-tree migrated volume",
         {**OURS, lp.ANN_MIGRATED_TO: lp.PROVISIONER}, True),
        ("unknown dynamically provisioned in-tree volume", {lp.ANN_PROVISIONED_BY: OTHER}, False),
        ("unknown dynamically provisioned in-tree migrated volume",
         {lp.ANN_PROVISIONED_BY: OTHER, lp.ANN_MIGRATED_TO: OTHER}, False),
        ("statically provisioned in-tree volume always return false", {}, False),
        ("known statically provisioned in-tree migrate volume",
         {lp.ANN_MIGRATED_TO: lp.PROVISIONER}, True),
        ("unknown statically provisioned in-tree migrate volume",
         {lp.ANN_MIGRATED_TO: OTHER}, False),
    ],
)  # fmt: skip
def test_is_provisioner_for_volume(name: str, annotations: dict, expected: bool) -> None:
    assert lp.is_provisioner_for_volume(volume("Available", "Delete", annotations)) is expected


def test_the_provisioned_volume_is_the_librarys_shape_on_the_selected_node() -> None:
    classes = {"fast": klass("fast", lp.PROVISIONER, policy="Retain")}
    provision, reclaim = lp.plan([claim("fast", annotations=NODE)], [], classes)
    assert reclaim == [] and len(provision) == 1
    pv = provision[0].volume
    assert pv["metadata"]["name"] == "pvc-1-1"  # the default volumeNameHook
    assert pv["metadata"]["annotations"] == {lp.ANN_PROVISIONED_BY: lp.PROVISIONER}
    spec = pv["spec"]
    assert spec["storageClassName"] == "fast"
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"  # from the class
    assert spec["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                "namespace": "default", "name": "claim-1", "uid": "1-1",
                                "resourceVersion": "0"}  # fmt: skip
    assert spec["hostPath"] == {"path": f"{lp.VOLUMES}/pvc-1-1", "type": "DirectoryOrCreate"}
    assert lp.volume_node(pv) == "node1"
    assert spec["capacity"] == {"storage": "1Gi"}


def test_nothing_is_made_twice_nor_for_block_volumes_or_other_classes() -> None:
    classes = {"class-1": klass("class-1", lp.PROVISIONER), "x": klass("x", OTHER)}
    made = lp.volume_for(claim(annotations=NODE), "node1")
    assert lp.plan([claim(annotations=NODE)], [made], classes) == ([], [])
    block = claim(annotations=NODE, volumeMode="Block")
    assert lp.plan([block], [], classes) == ([], [])
    # the claim says it is ours, its class says it is not: provisionClaimOperation stops
    assert lp.plan([claim("x", annotations=NODE)], [], classes) == ([], [])


def test_a_released_volume_is_reclaimed_from_its_node() -> None:
    v = volume("Released", "Delete", OURS)
    name = "pvc-11111111-2222-3333-4444-555555555555"
    v["metadata"]["name"], v["spec"]["hostPath"]["path"] = name, f"{lp.VOLUMES}/{name}"
    _, reclaim = lp.plan([], [v], {})
    assert reclaim == [lp.Reclaim(name, "real-1", f"{lp.VOLUMES}/{name}", "u1")]
    # a path outside the provisioner's directory is never removed
    odd = volume("Released", "Delete", OURS)
    odd["spec"]["hostPath"]["path"] = "/etc"
    assert lp.plan([], [odd], {}) == ([], [])


@pytest.mark.parametrize(
    ("name", "path", "node"),
    [
        ("pvc-11111111-2222-3333-4444-555555555555", f"{lp.VOLUMES}/../../../../home", "real-1"),
        ("pvc-11111111-2222-3333-4444-555555555555", f"{lp.VOLUMES}/", "real-1"),
        ("pvc-11111111-2222-3333-4444-555555555555", f"{lp.VOLUMES}/other", "real-1"),
        ("my-volume", f"{lp.VOLUMES}/my-volume", "real-1"),
        ("pvc-11111111-2222-3333-4444-555555555555",
         f"{lp.VOLUMES}/pvc-11111111-2222-3333-4444-555555555555", "../../etc"),
    ],
)  # fmt: skip
def test_a_volume_this_provisioner_did_not_make_is_never_removed(
    name: str, path: str, node: str
) -> None:
    """A PV anyone could create, claiming to be ours: its path or node must not steer the
    removal (the reclaim removes a directory of the node's tree)."""
    v = volume("Released", "Delete", OURS)
    v["metadata"]["name"] = name
    v["spec"]["hostPath"]["path"] = path
    v["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0][
        "values"
    ] = [node]
    assert lp.plan([], [v], {}) == ([], [])
