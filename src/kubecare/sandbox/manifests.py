"""Static pod manifests as kubeadm writes them (util/staticpod/utils.go ComponentPod), from the
one description in :mod:`kubecare.sandbox.components` (pure)."""

from __future__ import annotations

from typing import Any

import yaml

from kubecare.sandbox.components import Component, HttpProbe


def _probe(probe: HttpProbe) -> dict[str, Any]:
    out: dict[str, Any] = {
        "failureThreshold": probe.failure_threshold,
        "httpGet": {
            "host": probe.host,
            "path": probe.path,
            "port": "probe-port",
            "scheme": probe.scheme,
        },
    }
    if probe.initial_delay:  # omitempty, as the Go encoder writes it
        out["initialDelaySeconds"] = probe.initial_delay
    out["periodSeconds"] = probe.period
    out["timeoutSeconds"] = probe.timeout
    return out


def pod(component: Component) -> dict[str, Any]:
    """The v1 Pod object of one component."""
    container: dict[str, Any] = {
        "command": component.command,
        "image": component.image,
        "imagePullPolicy": "IfNotPresent",
        "livenessProbe": _probe(component.liveness),
        "name": component.name,
        "ports": [{"containerPort": component.probe_port, "name": "probe-port", "protocol": "TCP"}],
    }
    if component.readiness is not None:
        container["readinessProbe"] = _probe(component.readiness)
    requests = {"cpu": component.cpu}
    if component.memory:
        requests["memory"] = component.memory
    container["resources"] = {"requests": requests}
    container["startupProbe"] = _probe(component.startup)
    container["volumeMounts"] = [
        {"mountPath": m.mount_path, "name": m.name, **({"readOnly": True} if m.read_only else {})}
        for m in component.mounts
    ]
    metadata: dict[str, Any] = {
        "labels": {"component": component.name, "tier": "control-plane"},
        "name": component.name,
        "namespace": "kube-system",
    }
    if component.annotations:
        metadata = {"annotations": dict(component.annotations), **metadata}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "containers": [container],
            "hostNetwork": True,
            "priority": 2000001000,
            "priorityClassName": "system-node-critical",
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "volumes": [
                {"hostPath": {"path": str(m.host_path), "type": m.type}, "name": m.name}
                for m in sorted(component.mounts, key=lambda m: m.name)
            ],
        },
        "status": {},
    }


def render(component: Component) -> str:
    """The manifest file's text."""
    return yaml.safe_dump(pod(component), sort_keys=False)
