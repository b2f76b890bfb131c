"""The httpGet probes of a static pod manifest, as the kubelet reads them: what tells whether a
kubeadm control-plane component serves. Used by the sandbox's runner and by tools that wait for
a component on a real node (etcd restore). Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ProbeError(ValueError):
    """A probe the kubelet's httpGet reading cannot use; the message names it."""


@dataclass(frozen=True)
class Probe:
    """An httpGet probe (the only kind kubeadm writes)."""

    scheme: str
    host: str
    port: int
    path: str
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    failure_threshold: int = 3

    @property
    def url(self) -> str:
        return f"{self.scheme.lower()}://{self.host}:{self.port}{self.path}"


def parse_probe(raw: Any, where: str, ports: dict[str, int]) -> Probe | None:
    if not raw:
        return None
    get = raw.get("httpGet") if isinstance(raw, dict) else None
    if not isinstance(get, dict) or "port" not in get:
        raise ProbeError(f"{where}: only httpGet probes with a port are supported")
    named = get["port"]
    if isinstance(named, str) and not named.isdigit():
        # kubeadm names the port ("probe-port") and declares it in the container's ports.
        if named not in ports:
            raise ProbeError(f"{where}: probe port {named!r} is not a port of the container")
        port = ports[named]
    else:
        try:
            port = int(named)
        except (TypeError, ValueError):
            raise ProbeError(f"{where}: probe port {named!r} is not a number") from None
    try:
        return Probe(
            scheme=str(get.get("scheme") or "HTTP"),
            host=str(get.get("host") or "127.0.0.1"),
            port=port,
            path=str(get.get("path") or "/"),
            initial_delay=float(raw.get("initialDelaySeconds") or 0),
            period=float(raw.get("periodSeconds") or 10),
            timeout=float(raw.get("timeoutSeconds") or 1),
            failure_threshold=int(raw.get("failureThreshold") or 3),
        )
    except (TypeError, ValueError):
        raise ProbeError(f"{where}: a probe setting is not a number") from None


def serving_probe(doc: dict[str, Any], where: str) -> Probe | None:
    """The probe that tells whether a static pod's component serves: its readiness probe, else
    its liveness probe (what the kubelet would use), for tools outside the runner."""
    containers = (doc.get("spec") or {}).get("containers") or [{}]
    container = containers[0] if isinstance(containers[0], dict) else {}
    ports = {
        str(p.get("name")): int(p.get("containerPort") or 0)
        for p in container.get("ports") or []
        if isinstance(p, dict) and p.get("name") and str(p.get("containerPort") or "0").isdigit()
    }
    raw = container.get("readinessProbe") or container.get("livenessProbe")
    return parse_probe(raw, f"{where} probe", ports)
