"""Reading every component's version off a live cluster (what `kubecare versions` shows).

Where each comes from, as ``kubeadm upgrade plan`` reads them (phases/upgrade/versiongetter.go):
- kube-apiserver: ``/version`` of each instance — the advertise endpoint kubeadm writes on its
  mirror pod (annotation ``kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint``),
  else the image tag of the mirror pod, else ``/version`` of the endpoint the kubeconfig names;
- kube-controller-manager, kube-scheduler, etcd: the image tag of the kube-system mirror pods
  ``component=<name>,tier=control-plane`` (absent on managed control planes: reported as such);
- etcd's binary: the Status RPC, when kubecare is told where etcd is;
- kubelet and container runtime: each Node's ``status.nodeInfo``;
- kube-proxy: the ``kube-system/kube-proxy`` DaemonSet's image (``nodeInfo.kubeProxyVersion`` is
  cleared by kubelets since 1.33, feature gate DisableNodeKubeProxyVersion);
- CoreDNS: the ``kube-system/coredns`` Deployment's image;
- kubectl: ``kubectl version --client`` of the kubectl on $PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kubecare.errors import Forbidden, KubecareError, NotFound
from kubecare.kube import JSON, Kube
from kubecare.versions import skew
from kubecare.versions.skew import Component, Violation

ADVERTISE = "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint"
MIRROR = "kubernetes.io/config.mirror"


@dataclass
class Inventory:
    components: list[Component]
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what RBAC kept from being read ("<what> not shown: this user may not ..."), one each
    unseen: list[str] = field(default_factory=list)


def _image(obj: JSON) -> str:
    spec = obj.get("spec") or {}
    if "template" in spec:
        spec = (spec.get("template") or {}).get("spec") or {}
    containers = spec.get("containers") or [{}]
    return str(containers[0].get("image") or "")


def _tag(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return tag.replace("_", "+") if name and "/" not in tag else image


async def _apiserver_version(kube: Kube, endpoint: str) -> str | None:
    other = kube.at(endpoint)
    try:
        return str((await other.version()).get("gitVersion") or "") or None
    except KubecareError:
        return None
    finally:
        await other.close()


def kubectl_version() -> Component | None:
    """The kubectl on $PATH, as ``kubectl version --client -o json`` reports it."""
    path = shutil.which("kubectl")
    if not path:
        return None
    try:
        out = subprocess.run(
            [path, "version", "--client", "-o", "json"],
            capture_output=True,
            timeout=10,
            check=True,
        ).stdout
        version = json.loads(out)["clientVersion"]["gitVersion"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError):
        return None
    return Component(skew.KUBECTL, "", str(version), f"kubectl version --client ({path})")


async def control_plane_pods(kube: Kube) -> list[JSON]:
    """The kube-system mirror pods of kubeadm's control plane (``tier=control-plane``)."""
    return await kube.list_objects(
        "/api/v1/namespaces/kube-system/pods", params={"labelSelector": "tier=control-plane"}
    )


async def collect(
    kube: Kube,
    *,
    etcd_status: Sequence[Any] = (),
    include_kubectl: bool = True,
) -> Inventory:
    """Every component's version, and the skew policy checked over them."""
    from kubecare.kube.unseen import note, or_unseen

    notes: list[str] = []
    unseen: list[str] = []
    server, pods, nodes = await asyncio.gather(
        kube.version(),
        or_unseen(control_plane_pods(kube), None, unseen, "the control plane's components",
                  "list pods in kube-system", "only the apiserver's /version is known"),
        or_unseen(kube.list_objects("/api/v1/nodes"), [], unseen, "kubelets and runtimes",
                  "list nodes"),
    )  # fmt: skip
    cp_unseen = pods is None
    pods = pods or []
    comps: list[Component] = []
    apiservers = [
        p for p in pods if (p["metadata"].get("labels") or {}).get("component") == skew.APISERVER
    ]
    endpoints = [
        ((p["metadata"].get("annotations") or {}).get(ADVERTISE) or "") for p in apiservers
    ]
    live = await asyncio.gather(*(_apiserver_version(kube, e) for e in endpoints if e))
    by_endpoint = dict(zip([e for e in endpoints if e], live, strict=True))
    for pod, endpoint in zip(apiservers, endpoints, strict=True):
        node = str((pod.get("spec") or {}).get("nodeName") or "")
        version = by_endpoint.get(endpoint) if endpoint else None
        if version:
            comps.append(Component(skew.APISERVER, node, version, f"/version at {endpoint}"))
        else:
            comps.append(Component(skew.APISERVER, node, _tag(_image(pod)), "mirror pod image"))
    if not apiservers:
        comps.append(
            Component(
                skew.APISERVER,
                "",
                str(server.get("gitVersion") or "?"),
                f"/version at {kube.server}",
            )
        )
        if not cp_unseen:
            notes.append(
                "no kubeadm control-plane pods in kube-system: the controller-manager, scheduler "
                "and etcd are not visible from the API (a managed control plane?)"
            )
    for name in (skew.CONTROLLER_MANAGER, skew.SCHEDULER, skew.ETCD):
        for pod in pods:
            if (pod["metadata"].get("labels") or {}).get("component") == name:
                node = str((pod.get("spec") or {}).get("nodeName") or "")
                comps.append(Component(name, node, _tag(_image(pod)), "mirror pod image"))
    for st in etcd_status:
        comps.append(Component(skew.ETCD, st.endpoint, f"v{st.version}", "Status RPC"))
    for obj in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        info = (obj.get("status") or {}).get("nodeInfo") or {}
        name = obj["metadata"]["name"]
        comps.append(
            Component(skew.KUBELET, name, str(info.get("kubeletVersion") or "?"), "nodeInfo")
        )
        if info.get("containerRuntimeVersion"):
            comps.append(
                Component(skew.RUNTIME, name, str(info["containerRuntimeVersion"]), "nodeInfo")
            )
    for what, path in (
        (skew.KUBE_PROXY, "/apis/apps/v1/namespaces/kube-system/daemonsets/kube-proxy"),
        (skew.COREDNS, "/apis/apps/v1/namespaces/kube-system/deployments/coredns"),
    ):
        try:
            obj = await kube.get_json(path, what=f"{what} in kube-system")
        except Forbidden:
            unseen.append(note(what, f"get {path.rsplit('/', 2)[-2]} in kube-system"))
            continue
        except NotFound:
            notes.append(
                f"{what}: not installed (no {path.rsplit('/', 2)[-2][:-1]} kube-system/{path.rsplit('/', 1)[-1]})"
            )
            continue
        kind = "DaemonSet" if what == skew.KUBE_PROXY else "Deployment"
        comps.append(Component(what, "", _tag(_image(obj)), f"{kind} image"))
    if include_kubectl:
        client = await asyncio.to_thread(kubectl_version)
        if client is not None:
            comps.append(client)
        else:
            notes.append("kubectl: not found on $PATH")
    return Inventory(comps, skew.check_skew(comps), notes, unseen)


async def etcd_statuses(endpoints: Sequence[Any]) -> list[Any]:
    """Maintenance.Status of each etcd endpoint (unreachable members are left out with no
    error: the image tag still says what kubeadm runs there)."""
    from kubecare.etcd.grpc import member_status

    out = []
    for ep in endpoints:
        with contextlib.suppress(KubecareError):
            out.append(await member_status(ep))
    return out
