"""After a restore into a new data dir: kubeadm must know it.

kubeadm regenerates etcd.yaml from the cluster's ClusterConfiguration (ConfigMap
kube-system/kubeadm-config) on every ``kubeadm upgrade apply``/``upgrade node``
(cmd/kubeadm/app/phases/etcd/local.go ``GetEtcdPodSpec``: the etcd-data hostPath is
``cfg.Etcd.Local.DataDir``). A restore that only rewrites etcd.yaml is undone by the next
upgrade: etcd comes back on the old data dir, before the restore. So the restored dir is
recorded there too — one value for the cluster, which is why every member's dir must have the
same path on its node.

:func:`with_data_dir` is pure; :func:`record_data_dir` reads and writes the ConfigMap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import Conflict, EtcdError, NotFound

KUBEADM_CONFIG = "/api/v1/namespaces/kube-system/configmaps/kubeadm-config"


def with_data_dir(text: str, data_dir: str) -> str | None:
    """The ClusterConfiguration ``text`` with ``etcd.local.dataDir`` set to ``data_dir``;
    None when it has no local etcd (an external etcd: kubeadm writes no etcd.yaml) or already
    says so."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EtcdError(
            f"kubeadm-config's ClusterConfiguration is not YAML ({str(e).splitlines()[0]}); "
            "fix it with: kubectl -n kube-system edit configmap kubeadm-config"
        ) from None
    if not isinstance(doc, dict) or doc.get("kind") != "ClusterConfiguration":
        raise EtcdError("kubeadm-config's ClusterConfiguration is not a ClusterConfiguration")
    etcd = doc.get("etcd") or {}
    local = etcd.get("local") or {} if isinstance(etcd, dict) else None
    if not isinstance(etcd, dict) or not isinstance(local, dict):
        raise EtcdError("kubeadm-config's ClusterConfiguration has an etcd section kubeadm rejects")
    if "external" in etcd or local.get("dataDir") == data_dir:
        return None
    doc["etcd"] = {**etcd, "local": {**local, "dataDir": data_dir}}
    return str(yaml.safe_dump(doc, sort_keys=False))


def one_dir(node_dirs: Sequence[str]) -> str:
    """The one data dir every member has on its node, else an EtcdError naming them."""
    dirs = sorted(set(node_dirs))
    if len(dirs) != 1:
        raise EtcdError(
            "the restored members' data dirs differ (" + ", ".join(dirs) + "); kubeadm's "
            "ClusterConfiguration holds one etcd.local.dataDir for every node"
        )
    return dirs[0]


async def is_restored_cluster(
    kube: Any, members: Sequence[str], data_dir: str, timeout: float = 30
) -> bool:
    """Whether ``kube`` talks to the cluster just restored: each restored member's mirror pod
    (``kube-system/etcd-<member>``, as kubeadm names it after the node) mounts ``data_dir`` as
    etcd-data — a kubeconfig naming another cluster must not get this cluster's dir. Mirror pods
    follow a manifest change within seconds, hence the wait."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        seen = []
        for name in members:
            try:
                pod = await kube.get_json(
                    f"/api/v1/namespaces/kube-system/pods/etcd-{name}", what=f"pod etcd-{name}"
                )
            except NotFound:
                seen.append(False)
                continue
            volumes = (pod.get("spec") or {}).get("volumes") or []
            paths = {v.get("name"): (v.get("hostPath") or {}).get("path") for v in volumes}
            seen.append(paths.get("etcd-data") == data_dir)
        if all(seen):
            return True
        if loop.time() > deadline:
            return False
        await asyncio.sleep(1)


async def record_data_dir(kube: Any, data_dir: str, attempts: int = 3) -> bool:
    """Set etcd.local.dataDir in kubeadm-config; True when it changed. Retries a write that
    raced another (409, a node's own restore run recording the same dir)."""
    import yaml

    for _ in range(attempts):
        try:
            cm = await kube.get_json(KUBEADM_CONFIG, what="configmap kube-system/kubeadm-config")
        except NotFound:
            return False  # not a kubeadm cluster: nothing regenerates etcd.yaml
        text = (cm.get("data") or {}).get("ClusterConfiguration")
        if not text:
            return False
        try:
            new = with_data_dir(text, data_dir)
        except yaml.YAMLError as e:
            raise EtcdError(f"kubeadm-config's ClusterConfiguration is not YAML: {e}") from None
        if new is None:
            return False
        cm["data"]["ClusterConfiguration"] = new
        try:
            await kube.request_json("PUT", KUBEADM_CONFIG, body=cm)
            return True
        except Conflict:
            continue
    raise EtcdError(
        "kubeadm-config kept changing while the restored data dir was recorded; set "
        f"etcd.local.dataDir: {data_dir} in it by hand (kubectl -n kube-system edit cm "
        "kubeadm-config)"
    )
