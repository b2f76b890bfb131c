"""The etcd members of a kubeadm control plane, read from their static pod manifests.

On a kubeadm node, /etc/kubernetes/manifests/etcd.yaml says everything etcdctl needs: the
client URLs, the certificates (etcd/ca.crt and a client certificate: kubeadm's
etcd/healthcheck-client, or the server certificate, which kubeadm issues for client auth too),
the member name, its peer URL, the initial cluster and the data dir. Paths in the command are
the container's; the hostPath volumes say where they are on the node (for the sandbox: inside
its state dir). Pure: text in, :class:`Member` out.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import EtcdError

KUBEADM_MANIFESTS = Path("/etc/kubernetes/manifests")

#: How this process dials a URL a manifest names: (its manifests dir, the URL) -> the URL to
#: dial. On the node itself, the URL as written (:func:`as_written`); for a node whose network
#: this process is not in (a sandbox's, from the host), its forward.
Reach = Callable[[Path, str], str]


def as_written(_manifests: Path, url: str) -> str:
    return url


def _inside(path: Path, top: Path) -> bool:
    p, t = os.path.normpath(path), os.path.normpath(top)
    return p == t or p.startswith(t.rstrip("/") + "/")


@dataclass(frozen=True)
class NodeTree:
    """Where the paths a node's manifests name (``/etc/kubernetes/pki``, ``/var/lib/etcd``) lie
    for this process. On the node itself, where they say (``root`` None). For a node whose
    tree is a directory here (a sandbox's node, seen from the host), inside ``root`` — except
    paths already inside ``keep``, which the tree's owner wrote as this machine sees them (what
    a kubelet for that node does with the same manifests)."""

    root: Path | None = None
    keep: Path | None = None

    def local(self, path: Path) -> Path:
        """A node's path as this process opens it."""
        if self.root is None or not path.is_absolute():
            return path
        if self.keep is not None and _inside(path, self.keep):
            return path
        return self.root / os.path.normpath(path).lstrip("/")

    def node(self, path: Path) -> Path:
        """This process's ``path`` as the node names it in a manifest (the inverse of
        :meth:`local`); a path the node cannot see is refused."""
        if self.root is None:
            return path
        if _inside(path, self.root):
            return Path("/") / os.path.relpath(path, self.root)
        if self.keep is not None and _inside(path, self.keep):
            return path
        raise EtcdError(
            f"{path} is outside the node's tree ({self.root}): its etcd would not see it; "
            "choose a path inside it"
        )


ON_THE_NODE = NodeTree()

#: The node tree of the member whose manifests dir is given (:data:`ON_THE_NODE`: this
#: process runs on the node).
Trees = Callable[[Path], NodeTree]


def on_the_node(_manifests: Path) -> NodeTree:
    return ON_THE_NODE


@dataclass(frozen=True)
class Endpoint:
    """How to reach one etcd member as a client (etcdctl's --endpoints/--cacert/--cert/--key)."""

    url: str  # https://127.0.0.1:2379
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @property
    def target(self) -> str:
        """host:port for gRPC."""
        parts = urlsplit(self.url if "://" in self.url else f"https://{self.url}")
        if not parts.hostname or not parts.port:
            raise EtcdError(
                f"etcd endpoint {self.url!r} needs a host and a port (https://HOST:2379)"
            )
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return f"{host}:{parts.port}"

    @property
    def tls(self) -> bool:
        return not self.url.startswith("http://")


@dataclass(frozen=True)
class Member:
    """One etcd member as its manifest describes it (host paths already mapped)."""

    name: str
    manifest: Path
    endpoint: Endpoint
    peer_url: str  # --initial-advertise-peer-urls
    initial_cluster: str  # --initial-cluster (name=peer,...)
    data_dir: Path  # on the host
    data_flag: str  # --data-dir as written (the container path)
    data_volume: str | None  # the hostPath volume that holds the data dir (kubeadm: etcd-data)
    image: str
    tree: NodeTree = (
        ON_THE_NODE  # where the node's paths are for this process (paths above: mapped)
    )


def _flags(command: list[str]) -> dict[str, str]:
    out = {}
    for arg in command[1:]:
        if arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            out[name] = value
    return out


def _mounts(doc: dict[str, Any], container: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(mountPath, hostPath, volume name), longest mountPath first."""
    volumes = {
        v.get("name"): (v.get("hostPath") or {}).get("path")
        for v in (doc.get("spec") or {}).get("volumes") or []
        if isinstance(v, dict) and isinstance(v.get("hostPath") or {}, dict)
    }
    out = []
    for m in container.get("volumeMounts") or []:
        host = volumes.get(m.get("name"))
        if isinstance(host, str) and isinstance(m.get("mountPath"), str):
            out.append((m["mountPath"].rstrip("/") or "/", host, str(m.get("name"))))
    return sorted(out, key=lambda t: len(t[0]), reverse=True)


def host_path(path: str, mounts: list[tuple[str, str, str]]) -> tuple[Path, str | None]:
    """A container path as the node sees it, and the volume it is in (None: not in any)."""
    for mount, host, volume in mounts:
        if path == mount or path.startswith(mount + "/"):
            rel = path[len(mount) :].lstrip("/")
            return Path(os.path.join(host, rel) if rel else host), volume
    return Path(path), None


def parse_member(
    manifest: Path, text: str, reach: Reach = as_written, tree: NodeTree = ON_THE_NODE
) -> Member:
    """The member ``manifest`` (its text) describes; anything not shaped like a Pod is an
    :class:`EtcdError` naming the file, never a traceback."""
    try:
        return _parse_member(manifest, text, reach, tree)
    except (
        AttributeError,
        TypeError,
        KeyError,
        ValueError,
    ) as e:  # a field of another type, a bad URL
        raise EtcdError(
            f"{manifest} does not look like kubeadm's etcd manifest ({type(e).__name__}: {e})"
        ) from None


def _parse_member(manifest: Path, text: str, reach: Reach, tree: NodeTree) -> Member:
    import yaml

    where = str(manifest)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise EtcdError(f"{where} is not valid YAML") from None
    containers = (
        ((doc or {}).get("spec") or {}).get("containers") if isinstance(doc, dict) else None
    )
    if not isinstance(containers, list) or not containers or not isinstance(containers[0], dict):
        raise EtcdError(f"{where} does not look like kubeadm's etcd manifest (no container)")
    container = containers[0]
    command: list[str] = []
    for part in ("command", "args"):
        value = container.get(part) or []
        if not isinstance(value, list):
            raise EtcdError(f"{where}: the etcd container's {part} is not a list")
        if not all(isinstance(c, str) for c in value):
            raise EtcdError(f"{where}: the etcd container's {part} is not a list of strings")
        command += value
    mounts_in = container.get("volumeMounts") or []
    if not isinstance(mounts_in, list) or not all(isinstance(m, dict) for m in mounts_in):
        raise EtcdError(f"{where}: the etcd container's volumeMounts are not a list of mounts")
    if not command or os.path.basename(command[0]) != "etcd":
        raise EtcdError(f"{where} does not look like kubeadm's etcd manifest (command is not etcd)")
    flags = _flags(command)
    missing = [f for f in ("name", "data-dir", "listen-client-urls") if f not in flags]
    if missing:
        raise EtcdError(
            f"{where} does not look like kubeadm's etcd manifest: no --{', --'.join(missing)}"
        )
    mounts = _mounts(doc, container)
    node_data, volume = host_path(flags["data-dir"], mounts)
    data_dir = tree.local(node_data)

    def file(flag: str) -> Path | None:
        return tree.local(host_path(flags[flag], mounts)[0]) if flag in flags else None

    cacert, cert, key = file("trusted-ca-file"), file("cert-file"), file("key-file")
    if cert is not None:  # prefer kubeadm's client certificate next to the server's
        client = cert.parent / "healthcheck-client.crt"
        if client.exists() and client.with_suffix(".key").exists():
            cert, key = client, client.with_suffix(".key")
    urls = flags["listen-client-urls"].split(",")
    loopback = [u for u in urls if urlsplit(u).hostname in ("127.0.0.1", "localhost", "::1")]
    url = reach(manifest.parent, (loopback or urls)[0])
    peer = flags.get("initial-advertise-peer-urls", "")
    return Member(
        name=flags["name"],
        manifest=manifest,
        endpoint=Endpoint(url, cacert, cert, key),
        peer_url=peer,
        initial_cluster=flags.get("initial-cluster", f"{flags['name']}={peer}"),
        data_dir=data_dir,
        data_flag=flags["data-dir"],
        data_volume=volume,
        image=str(container.get("image") or ""),
        tree=tree,
    )


def parse_endpoints(
    urls: str, cacert: str | None, cert: str | None, key: str | None
) -> list[Endpoint]:
    """etcdctl's ``--endpoints URL,... --cacert --cert --key``: one Endpoint per URL."""
    return [
        Endpoint(
            url.strip(),
            Path(cacert) if cacert else None,
            Path(cert) if cert else None,
            Path(key) if key else None,
        )
        for url in urls.split(",")
        if url.strip()
    ]


def read_members(
    manifest_dirs: list[Path], reach: Reach = as_written, trees: Trees = on_the_node
) -> list[Member]:
    """Every etcd member whose manifest is in one of ``manifest_dirs`` (etcd.yaml), its client
    URL as ``reach`` dials it, its files where ``trees`` says its node's tree is."""
    out = []
    for d in manifest_dirs:
        path = d / "etcd.yaml"
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise EtcdError(
                f"{path} not found: not a kubeadm control-plane node with local etcd; "
                "give --endpoints/--cacert/--cert/--key, or --manifests-dir"
            ) from None
        except PermissionError:
            raise EtcdError(f"{path}: permission denied (run as root on the node)") from None
        except (OSError, UnicodeDecodeError) as e:  # a directory, a device, not text
            why = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise EtcdError(f"{path}: cannot read it ({why})") from None
        out.append(parse_member(path, text, reach, trees(d)))
    return out
