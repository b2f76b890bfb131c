"""``--surge`` (issue 19, item 16): which Deployments a rollout can drain without availability
loss. The fencepost arithmetic is the deployment controller's, its table test ported from
k8s.io/kubernetes v1.37.2 pkg/controller/deployment/util/deployment_util_test.go."""

from __future__ import annotations

from typing import Any

import pytest

from kubecare.nodes.surge import FencepostError, judge_deployment, resolve_fenceposts, restart_patch


@pytest.mark.parametrize(
    ("max_surge", "max_unavailable", "desired", "expect"),
    [
        ("0%", "0%", 0, (0, 1)),
        ("39%", "39%", 10, (4, 3)),
        ("oops", "39%", 10, None),
        ("55%", "urg", 10, None),
        (None, "39%", 10, (0, 3)),
        ("39%", None, 10, (4, 0)),
        (None, None, 10, (0, 1)),
    ],
)
def test_resolve_fenceposts(
    max_surge: str | None, max_unavailable: str | None, desired: int, expect: tuple[int, int] | None
) -> None:  # TestResolveFenceposts
    if expect is None:
        with pytest.raises(FencepostError):
            resolve_fenceposts(max_surge, max_unavailable, desired)
    else:
        assert resolve_fenceposts(max_surge, max_unavailable, desired) == expect


def test_fenceposts_take_integers_and_refuse_a_bare_number_string() -> None:
    # ResolveFenceposts' doc comment: 1 desired, max unavailable 25%, surge 1 -> new(+1), old(-1)
    assert resolve_fenceposts(1, "25%", 1) == (1, 0)
    assert resolve_fenceposts("25%", "25%", 1) == (1, 0)  # the API's defaults, one replica
    assert resolve_fenceposts("25%", "25%", 4) == (1, 1)
    with pytest.raises(FencepostError):
        resolve_fenceposts("5", 0, 3)  # intstr: a string must be a percentage


def deployment(replicas: int | None = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"strategy": {"type": "RollingUpdate",
                                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}  # fmt: skip
    if replicas is not None:
        body["replicas"] = replicas
    body.update(spec)
    return {"metadata": {"namespace": "shop", "name": "web"}, "spec": body}


def test_a_one_replica_deployment_with_the_default_strategy_can_be_surged() -> None:
    v = judge_deployment(deployment(1))
    assert v.ok and "brings up 1 new pod(s) before each old one goes" in v.reason
    assert judge_deployment(deployment(None)).ok  # replicas unset: 1


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ({"paused": True}, "is paused"),
        ({"strategy": {"type": "Recreate"}}, "uses the Recreate strategy"),
        ({"replicas": 4}, "lets 1 of 4 pod(s) go down"),
        ({"strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}}, "lets 1 of 1"),
        (
            {"strategy": {"rollingUpdate": {"maxSurge": "x", "maxUnavailable": 0}}},
            "cannot be resolved",
        ),
    ],
)
def test_deployments_whose_rollout_could_lose_a_pod_are_refused(
    spec: dict[str, Any], why: str
) -> None:
    v = judge_deployment(deployment(**spec))
    assert not v.ok and why in v.reason, v.reason


def test_a_zero_unavailable_strategy_surges_any_replica_count() -> None:
    d = deployment(5, strategy={"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    assert judge_deployment(d).ok


def test_the_restart_patch_is_kubectls() -> None:
    patch = restart_patch("2026-12-07T08:00:00Z")
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"kubectl.kubernetes.io/restartedAt": "2026-12-07T08:00:00Z"}


def test_a_deployment_whose_new_pod_cannot_start_elsewhere_is_refused() -> None:
    with_claim = deployment(
        1,
        template={
            "spec": {"volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}
        },
    )
    v = judge_deployment(with_claim, "n1")
    assert not v.ok and "mounts PersistentVolumeClaim data" in v.reason
    pinned = deployment(1, template={"spec": {"nodeSelector": {"kubernetes.io/hostname": "n1"}}})
    assert not judge_deployment(pinned, "n1").ok
    assert judge_deployment(pinned, "n2").ok  # pinned to another node: not this drain's problem
    term = {
        "matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1"]}]
    }
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}
        }
    }
    assert not judge_deployment(deployment(1, template={"spec": {"affinity": affinity}}), "n1").ok
    two = {
        "matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["n1", "n2"]}
        ]
    }
    affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ] = [two]
    assert judge_deployment(deployment(1, template={"spec": {"affinity": affinity}}), "n1").ok


def test_the_restart_patch_can_carry_the_judged_resource_version() -> None:
    assert restart_patch("t", "42")["metadata"] == {"resourceVersion": "42"}
