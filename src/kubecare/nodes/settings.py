"""The cluster's node-outage settings, read from what is visible, or assumed (and said so).

Sources, best first: the flags of kube-controller-manager / kube-apiserver static (mirror) pods in
kube-system; kubeadm's ``kube-system/kubeadm-config`` ClusterConfiguration extraArgs; for the
toleration, the tolerations DefaultTolerationSeconds injected into running pods. Anything not
found is "assumed default", naming the default — and when a source could not be read (RBAC
forbids it), the settings carry a warning that says so; an unreachable apiserver is an error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import yaml

from kubecare.durations import go_duration_seconds
from kubecare.errors import Forbidden, NotFound
from kubecare.kube import JSON, Kube

NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
DEFAULT_TOLERATION_SECONDS = 300  # DefaultTolerationSeconds; what --pod-eviction-timeout=5m was
DEFAULT_GRACE_SECONDS = 50  # --node-monitor-grace-period since Kubernetes 1.32 (40 s before)
DEFAULT_UNHEALTHY_ZONE_THRESHOLD = 0.55  # kube-controller-manager --unhealthy-zone-threshold
DEFAULT_LARGE_CLUSTER_SIZE = 50  # kube-controller-manager --large-cluster-size-threshold


@dataclass(frozen=True)
class Setting:
    """One value and where it came from ("kube-controller-manager flag", "assumed default", ...)."""

    name: str
    seconds: int
    source: str

    @property
    def assumed(self) -> bool:
        return self.source.startswith("assumed")


@dataclass(frozen=True)
class Threshold:
    """A non-duration setting (a ratio, a node count) and where it came from."""

    name: str
    value: float
    source: str


@dataclass(frozen=True)
class OutageSettings:
    node_monitor_grace_period: Setting
    not_ready_toleration: Setting
    unreachable_toleration: Setting
    unhealthy_zone_threshold: Threshold = Threshold(
        "unhealthy-zone-threshold", DEFAULT_UNHEALTHY_ZONE_THRESHOLD, "assumed default"
    )
    large_cluster_size_threshold: Threshold = Threshold(
        "large-cluster-size-threshold", DEFAULT_LARGE_CLUSTER_SIZE, "assumed default"
    )
    warnings: tuple[str, ...] = ()


def flags_from_command(command: Sequence[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` flags of a component's command line."""
    out: dict[str, str] = {}
    items = list(command)
    for i, arg in enumerate(items):
        if not arg.startswith("--"):
            continue
        name, eq, value = arg[2:].partition("=")
        if not eq and i + 1 < len(items) and not items[i + 1].startswith("--"):
            value = items[i + 1]
        out[name] = value
    return out


def kubeadm_extra_args(cluster_configuration: str) -> dict[str, dict[str, str]]:
    """extraArgs per component from a kubeadm ClusterConfiguration (v1beta3 map or v1beta4 list)."""
    try:
        doc = yaml.safe_load(cluster_configuration) or {}
    except yaml.YAMLError:
        return {}
    out: dict[str, dict[str, str]] = {}
    for component in ("apiServer", "controllerManager"):
        if not isinstance(doc, dict) or component not in doc:
            continue
        section = doc.get(component)
        raw = (section.get("extraArgs") or {}) if isinstance(section, dict) else {}
        if isinstance(raw, list):
            out[component] = {
                str(a.get("name")): str(a.get("value")) for a in raw if isinstance(a, dict)
            }
        elif isinstance(raw, dict):
            out[component] = {str(k): str(v) for k, v in raw.items()}
    return out


def injected_toleration_seconds(pods: Iterable[JSON], key: str) -> tuple[int, int] | None:
    """The most common tolerationSeconds for ``key`` among pods (value, how many pods), if any."""
    seen: Counter[int] = Counter()
    for pod in pods:
        for t in (pod.get("spec") or {}).get("tolerations") or []:
            if (
                t.get("key") == key
                and t.get("effect") == "NoExecute"
                and t.get("tolerationSeconds") is not None
            ):
                seen[int(t["tolerationSeconds"])] += 1
    if not seen:
        return None
    return seen.most_common(1)[0]


def resolve_settings(
    *,
    controller_manager_flags: Mapping[str, str] | None,
    apiserver_flags: Mapping[str, str] | None,
    pods: Sequence[JSON],
    controller_manager_source: str = "static pod",
    apiserver_source: str = "static pod",
    warnings: Sequence[str] = (),
) -> OutageSettings:
    """Pure: combine what was found into settings, saying where each came from."""
    cm = controller_manager_flags or {}
    api = apiserver_flags or {}
    raw_grace = cm.get("node-monitor-grace-period")
    parsed = (
        go_duration_seconds(raw_grace) if raw_grace else None
    )  # a malformed value counts as unset
    grace = int(parsed) if parsed is not None else None
    grace_setting = (
        Setting(
            "node-monitor-grace-period",
            grace,
            f"kube-controller-manager flag ({controller_manager_source})",
        )
        if grace is not None
        else Setting(
            "node-monitor-grace-period",
            DEFAULT_GRACE_SECONDS,
            f"assumed default ({DEFAULT_GRACE_SECONDS}s since 1.32)",
        )
    )

    def toleration(flag: str, key: str) -> Setting:
        if flag in api and str(api[flag]).isdigit():
            return Setting(flag, int(api[flag]), f"kube-apiserver flag ({apiserver_source})")
        observed = injected_toleration_seconds(pods, key)
        if observed:
            return Setting(
                flag,
                observed[0],
                f"injected into {observed[1]} running pod(s) by DefaultTolerationSeconds",
            )
        return Setting(
            flag, DEFAULT_TOLERATION_SECONDS, f"assumed default ({DEFAULT_TOLERATION_SECONDS}s)"
        )

    def threshold(flag: str, default: float) -> Threshold:
        try:
            if flag in cm:
                return Threshold(
                    flag,
                    float(cm[flag]),
                    f"kube-controller-manager flag ({controller_manager_source})",
                )
        except ValueError:
            pass  # malformed: treated as unset, like the durations
        return Threshold(flag, default, f"assumed default ({default:g})")

    return OutageSettings(
        grace_setting,
        toleration("default-not-ready-toleration-seconds", NOT_READY_TAINT),
        toleration("default-unreachable-toleration-seconds", UNREACHABLE_TAINT),
        threshold("unhealthy-zone-threshold", DEFAULT_UNHEALTHY_ZONE_THRESHOLD),
        threshold("large-cluster-size-threshold", DEFAULT_LARGE_CLUSTER_SIZE),
        tuple(warnings),
    )


async def read_settings(kube: Kube, pods: Sequence[JSON]) -> OutageSettings:
    """Read the settings from static pods or kubeadm-config where readable.

    A source RBAC forbids becomes a warning (the value then comes from the next source, or is
    assumed and says so); any other failure (unreachable apiserver, 5xx) is raised.
    """
    found: dict[str, tuple[dict[str, str], str]] = {}
    warnings: list[str] = []
    try:
        system = [
            p
            async for p in kube.list_items(
                "/api/v1/namespaces/kube-system/pods",
                params={"labelSelector": "tier=control-plane"},
                what="control-plane pods in kube-system",
            )
        ]
    except Forbidden as e:
        system = []
        warnings.append(
            f"cannot read the control-plane pods in kube-system ({e.message}); "
            "settings come from kubeadm-config or are assumed"
        )
    for p in system:
        component = ((p.get("metadata") or {}).get("labels") or {}).get("component", "")
        containers = (p.get("spec") or {}).get("containers") or [{}]
        command = list(containers[0].get("command") or []) + list(containers[0].get("args") or [])
        if component in ("kube-controller-manager", "kube-apiserver") and component not in found:
            found[component] = (flags_from_command(command), "static pod")
    if len(found) < 2:
        try:
            cfg = await kube.get_json(
                "/api/v1/namespaces/kube-system/configmaps/kubeadm-config", what="kubeadm-config"
            )
            extra = kubeadm_extra_args(str((cfg.get("data") or {}).get("ClusterConfiguration", "")))
            for component, key in (
                ("kube-controller-manager", "controllerManager"),
                ("kube-apiserver", "apiServer"),
            ):
                if component not in found and key in extra:
                    found[component] = (extra[key], "kubeadm-config")
        except NotFound:
            pass  # not a kubeadm cluster
        except Forbidden as e:
            warnings.append(
                f"cannot read kube-system/kubeadm-config ({e.message}); settings not found elsewhere are assumed"
            )
    cm = found.get("kube-controller-manager")
    api = found.get("kube-apiserver")
    return resolve_settings(
        controller_manager_flags=cm[0] if cm else None,
        apiserver_flags=api[0] if api else None,
        pods=pods,
        controller_manager_source=cm[1] if cm else "",
        apiserver_source=api[1] if api else "",
        warnings=warnings,
    )
