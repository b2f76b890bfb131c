"""A real node: a real kubelet and containerd running real containers, on a machine of its own.

kwok's workers only pretend (a deleted pod is gone at once, a reboot stops nothing). A real node
is a small machine made of namespaces of this one (see ``docs/sandbox.md`` and
``../shared/notes/real-nodes.md`` for what it took):

- **its own PID, mount, UTS and network namespaces**, entered by one init process
  (:mod:`kubecare.sandbox.nodeinit`, PID 1 there): killing it is a power cut — the kernel
  kills every process of the node, its mounts and its network go with it;
- **its own files**: the node's view (:mod:`kubecare.sandbox.nodeshell`: ``/etc`` and
  ``/var`` overlaid by the node's tree, ``/etc/kubernetes`` and ``/var/lib/kubelet`` the
  node's own), plus containerd's root bound from the node's tree (overlayfs cannot hold
  containerd's overlay snapshots) and an empty ``/run`` at each boot;
- **its own address**: ``192.0.2.101``... on the sandbox's switch (control planes are
  ``.11``...), pods from ``198.51.100.0/24`` (a /27 per node, Debian-style CNI bridge, nothing
  routed out), a boot ID of its own;
- **its own cgroup subtree** (the kubelet's ``--cgroup-root``), removed when the node goes.

It joins as kubeadm joins a worker — the real ``kubeadm join`` with the sandbox's bootstrap
token, the kubelet's TLS bootstrap, the CSR approved by kubeadm's RBAC — so its kubelet.conf,
config.yaml and kubeadm-flags.env are kubeadm's. Pure planning here; the init and the sandbox
carry it out.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubecare.errors import SandboxError

MAX_REAL_NODES = 8
POD_RANGE = "198.51.100"  # RFC 5737 TEST-NET-2: never routed anywhere
#: containerd's root, bound from the node's tree (not the /var overlay: overlayfs cannot be
#: the upper layer of containerd's own overlay snapshots)
CONTAINERD_ROOT = "var/lib/containerd"
VOLUMES = "/var/lib/kubecare/volumes"  # the sandbox provisioner's hostPaths (sandbox.localpath)
#: what the node's init reads and the host writes (in the node's tree)
SPEC = ".ns/node.json"
BOOT_ID = ".ns/boot_id"
#: The kernel settings the kubelet wants (pkg/kubelet/cm/container_manager_linux.go
#: ``setupKernelTunables``): with protectKernelDefaults it refuses to start when they differ,
#: without it it writes them — into the machine's kernel, for every process. The node sees
#: these values instead (files bound over /proc/sys in its mount namespace): its own kernel's.
KERNEL_TUNABLES = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}
SYSCTLS = ".ns/sysctl"
CRI_SOCKET = "unix:///run/containerd/containerd.sock"

#: KubeletConfiguration for every node of the sandbox (the cluster's kubelet-config ConfigMap,
#: through kubeadm's config): what this machine needs of any kubelet on it.
KUBELET_CONFIGURATION: dict[str, Any] = {
    "apiVersion": "kubelet.config.k8s.io/v1beta1",
    "kind": "KubeletConfiguration",
    # cgroup v1 (hybrid) and no systemd: the kubelet refuses v1 unless told, and cannot use
    # systemd's driver
    "failCgroupV1": False,
    "cgroupDriver": "cgroupfs",
    # never touch the machine: its iptables, its kernel's sysctls, the kubelet's own OOM score
    # (a negative one is refused without CAP_SYS_RESOURCE)
    "makeIPTablesUtilChains": False,
    "protectKernelDefaults": True,
    "oomScoreAdj": 0,
    # images cannot be pulled back (no registry): never garbage-collect them, and a busy disk
    # of the machine is not the nodes' pressure
    # flexvolume drivers: the node's own dir (the default is the machine's /usr/libexec)
    "volumePluginDir": "/var/lib/kubelet/volume-plugins",
    "imageGCHighThresholdPercent": 100,
    "imageGCLowThresholdPercent": 99,
    "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%",
                     "imagefs.available": "1%"},
    "maxPods": 30,
}  # fmt: skip


#: KubeProxyConfiguration for the sandbox (the kube-proxy ConfigMap, through kubeadm's config):
#: the conntrack table's size and hash are the machine's kernel's, shared by every namespace —
#: a kube-proxy on a real node must not set them (0: leave as is, pkg/proxy/conntrack).
KUBE_PROXY_CONFIGURATION: dict[str, Any] = {
    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
    "kind": "KubeProxyConfiguration",
    "conntrack": {"maxPerCore": 0, "min": 0},
}


@dataclass(frozen=True)
class RealNodeSpec:
    """One real node, as its init reads it (``.ns/node.json`` in its tree)."""

    name: str
    sandbox: str
    index: int  # 0-based among the sandbox's real nodes: its address and pod range
    root: str  # the node's tree on the host
    gateway: str  # the switch's address
    prefix: int
    kubelet: str  # the kubelet binary (the node's usr/local/bin/kubelet)
    containerd: str  # dir with containerd, containerd-shim-runc-v2, ctr
    cni_bin: str
    runc: str
    images: list[str]  # OCI layout tars imported at each boot (unchanged ones are no-ops)

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    @property
    def cgroup(self) -> str:
        """The kubelet's --cgroup-root: one subtree per node in every hierarchy, under its
        sandbox's (names cannot collide: a sandbox name has no '/')."""
        return cgroup_root(self.sandbox, self.name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> RealNodeSpec:
        return cls(**json.loads(text))


def cgroup_root(sandbox: str, node: str) -> str:
    return f"/kubecare/{sandbox}/{node}"


#: The machine's other writable dirs a pod's hostPath (or a privileged container) commonly
#: names, overlaid per real node like /etc and /var (upper layer in the node's tree): what a
#: pod writes there stays the node's. Paths elsewhere (/tmp, /root, a new top-level dir) are the
#: machine's: a real node is namespaces, not a VM (documented).
EXTRA_OVERLAYS = ("/usr", "/opt", "/srv", "/mnt", "/home")


def node_ip(index: int) -> str:
    if not 0 <= index < MAX_REAL_NODES:
        raise SandboxError(f"a sandbox has at most {MAX_REAL_NODES} real nodes")
    return f"192.0.2.{101 + index}"


def pod_cidr(index: int) -> str:
    return f"{POD_RANGE}.{32 * index}/27"


def veth(index: int) -> str:
    """The switch's end of the node's cable (the node's end is its eth0)."""
    return f"vreal{index}"


def switch_script(index: int, init_pid: int) -> str:
    """``ip -batch`` in the switch: the node's cable, its eth0 moved into the node."""
    v = veth(index)
    return (
        f"link add {v} type veth peer name eth0 netns {init_pid}\n"
        f"link set {v} master br0\nlink set {v} up\n"
    )


def network_script(spec: RealNodeSpec) -> str:
    """``ip -batch`` in the node (its default route to the switch, which routes nowhere)."""
    return (
        "link set lo up\n"
        f"addr add {spec.ip}/{spec.prefix} dev eth0\n"
        "link set eth0 up\n"
        f"route add default via {spec.gateway}\n"
    )


def containerd_config(spec: RealNodeSpec) -> str:
    """containerd 2.x's config (version 3), every path at containerd's default inside the
    node's mounts (its own /run, /var/lib/containerd, /etc/cni)."""
    q = json.dumps  # TOML basic strings are JSON strings
    return "\n".join(
        [
            "version = 3",
            "imports = []",
            # NRI and the snapshotters this machine lacks only log errors at every start
            'disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.erofs",'
            ' "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.btrfs",'
            ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
            "",
            # its "opt" dir (default /opt/containerd) in the node's containerd root
            "[plugins.'io.containerd.internal.v1.opt']",
            '  path = "/var/lib/containerd/opt"',
            "[plugins.'io.containerd.cri.v1.runtime']",
            # without CAP_SYS_RESOURCE a negative oom_score_adj is refused, and runc fails with
            # "can't get final child's PID from pipe: EOF"
            "  restrict_oom_score_adj = true",
            "  disable_apparmor = true",
            "[plugins.'io.containerd.cri.v1.runtime'.cni]",
            f"  bin_dirs = [{q(spec.cni_bin)}]",
            '  conf_dir = "/etc/cni/net.d"',
            "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]",
            f"  BinaryName = {q(spec.runc)}",
            "  SystemdCgroup = false",
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]",
            '  sandbox = "registry.k8s.io/pause:3.10.2"',
            "[plugins.'io.containerd.grpc.v1.cri']",
            # exec/attach/port-forward streams: the kubelet proxies them from the same netns
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "",
        ]
    )


def cni_config(spec: RealNodeSpec) -> str:
    """One bridge for the node's pods, their gateway the node (their default route: Services,
    the apiserver, the other nodes' pods go through the node, whose own routes go nowhere out
    of the sandbox); no masquerade, no port maps."""
    gateway = f"{POD_RANGE}.{32 * spec.index + 1}"
    ipam = {
        "type": "host-local",
        "ranges": [[{"subnet": pod_cidr(spec.index), "gateway": gateway}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
              "hairpinMode": True, "ipam": ipam}  # fmt: skip
    conf = {"cniVersion": "1.0.0", "name": "kubecare", "plugins": [bridge]}
    return json.dumps(conf, indent=2) + "\n"


def hosts(spec: RealNodeSpec) -> str:
    """``/etc/hosts``: the node knows its own name (kubeadm join's preflight looks it up; asked
    of a resolver nothing can reach, it waits 10 s)."""
    return f"127.0.0.1\tlocalhost\n{spec.ip}\t{spec.name}\n"


#: ``/etc/resolv.conf``: no resolver is reachable from the sandbox's network, so a lookup
#: (an image that was not built) is refused at once rather than timing out
RESOLV_CONF = "# kubecare real node: nothing is routed out of the sandbox\nnameserver 127.0.0.1\n"


def kubelet_defaults(spec: RealNodeSpec) -> str:
    """``/etc/default/kubelet`` (KUBELET_EXTRA_ARGS): what is this machine's, not the
    cluster's — kubeadm never rewrites this file, so an upgrade keeps it."""
    args = [f"--node-ip={spec.ip}", f"--cgroup-root={spec.cgroup}"]
    return f"KUBELET_EXTRA_ARGS={shlex.quote(' '.join(args))}\n"


def kubelet_argv(kubelet: str, kubeadm_flags: str, extra: str) -> list[str]:
    """The kubelet as kubeadm's systemd drop-in (10-kubeadm.conf) starts it: the bootstrap
    kubeconfig, kubelet.conf, config.yaml, then $KUBELET_KUBEADM_ARGS (kubeadm-flags.env) and
    $KUBELET_EXTRA_ARGS (/etc/default/kubelet)."""
    return [
        kubelet,
        "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf",
        "--kubeconfig=/etc/kubernetes/kubelet.conf",
        "--config=/var/lib/kubelet/config.yaml",
        *_env_args(kubeadm_flags, "KUBELET_KUBEADM_ARGS"),
        *_env_args(extra, "KUBELET_EXTRA_ARGS"),
    ]


def _env_args(text: str, name: str) -> list[str]:
    """The words of ``NAME="..."`` in an environment file (systemd's EnvironmentFile)."""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key == name:
            try:
                words = shlex.split(value)
            except ValueError:
                return []
            return shlex.split(words[0]) if len(words) == 1 else words
    return []


def cgroup_dirs(hierarchies: list[Path], spec: RealNodeSpec) -> list[Path]:
    """The node's subtree in each cgroup hierarchy mounted under /sys/fs/cgroup."""
    return [h / spec.cgroup.lstrip("/") for h in hierarchies]


#: Every real node's taint: it runs only the images the sandbox built (``kubecare sandbox
#: images``), so a pod must say it can run there. kubeadm's CoreDNS does not (its image is not
#: built): without the taint a drain of a kwok worker could move it onto a real node, where it
#: never starts. DaemonSets that tolerate everything (kube-proxy) still come.
TAINT = {"key": "kubecare.local/real-node", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}


def join_configuration(endpoint: str, token: str, ca_hash: str, node: str) -> dict[str, Any]:
    """kubeadm's JoinConfiguration (v1beta4) for a worker: discovery by token and the CA's
    public key hash, the node's name and taint. Preflight checks that look at the machine
    (swap, kernel modules, its sysctls, its systemd) are reported but cannot stop a node made
    of namespaces."""
    return {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": endpoint,
                "token": token,
                "caCertHashes": [ca_hash],
            }
        },
        "nodeRegistration": {
            "name": node,
            "criSocket": CRI_SOCKET,
            "taints": [TAINT],
            "ignorePreflightErrors": ["all"],
        },
    }


def join_argv(kubeadm: str, config: str) -> list[str]:
    return [kubeadm, "join", "--config", config, "-v=1"]
