"""A sandbox as a target of kubecare's node-level commands run on the host.

On a real control-plane node, what a manifest names (``https://127.0.0.1:2379``, the node's own
address) is reachable as written. A sandbox's nodes each have a network of their own
(:mod:`kubecare.sandbox.network`), so from the host those addresses go through the ports the
runner forwards. This turns ``--sandbox NAME`` into what etcd/ and the CLI take as parameters —
the manifests dirs and a :data:`kubecare.etcd.members.Reach` — so the product never imports the
sandbox. Light: state.json only (shell completion and one-shot commands load it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kubecare.errors import EtcdError
from kubecare.sandbox.state import state_root

if TYPE_CHECKING:
    from kubecare.etcd.members import NodeTree, Trees


def host_address(url: str, node_addresses: Sequence[str], forwards: Mapping[int, int]) -> str:
    """``url`` as a client on the host dials it: a node's own address or loopback on a forwarded
    port becomes ``127.0.0.1:<forward>``; another host is returned unchanged. A node's address
    or loopback on a port nothing forwards raises: dialled as written it would reach the
    machine's own loopback, or leave it."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    try:
        port = parts.port
    except ValueError:
        return url
    if parts.hostname not in ("127.0.0.1", "localhost", "::1", *node_addresses) or port is None:
        return url
    forward = forwards.get(port)
    if forward is None:
        raise EtcdError(
            f"{url}: port {port} of a sandbox node is not forwarded to the host (forwarded: "
            f"{', '.join(str(p) for p in sorted(forwards)) or 'none'}); run the command on the "
            "node: kubecare sandbox exec NODE -- ..."
        )
    moved = parts._replace(netloc=f"127.0.0.1:{forward}")
    return urlunsplit(moved) if "://" in url else moved.netloc


def owner(path: Path) -> str | None:
    """The sandbox whose state dir holds ``path`` (a node's manifests dir), if any."""
    root = state_root().resolve()
    where = path.resolve()
    if root not in where.parents:
        return None
    name = where.relative_to(root).parts[0]
    return name if (root / name / "state.json").exists() else None


def node_of(path: Path) -> tuple[str, str] | None:
    """(sandbox, node) whose node tree (``<state>/<sandbox>/nodes/<node>/``) holds ``path``:
    its manifests dir, or any dir an admin copied manifests into on that node."""
    root = state_root().resolve()
    where = path.resolve()
    if root not in where.parents:
        return None
    parts = where.relative_to(root).parts
    if len(parts) < 3 or parts[1] != "nodes" or not (root / parts[0] / "state.json").exists():
        return None
    return parts[0], parts[2]


def _tree(manifests: Path) -> NodeTree:
    """A sandbox node's tree, for a dir inside it: the node's own paths inside it, the
    sandbox's state dir as the host sees it (the paths the sandbox wrote itself), as the runner
    resolves them."""
    from kubecare.etcd.members import ON_THE_NODE, NodeTree

    found = node_of(manifests)
    if found is None:
        if owner(manifests) is not None:
            raise EtcdError(
                f"{manifests} is inside sandbox {owner(manifests)!r} but in no node's tree: its "
                "manifests name the node's paths (/etc/kubernetes/pki, /var/lib/etcd), which "
                "exist only there; use a dir under nodes/<node>/ (or --sandbox)"
            )
        return ON_THE_NODE
    name, node = found
    home = state_root().resolve() / name
    return NodeTree(root=home / "nodes" / node, keep=home)


def trees_for(dirs: Sequence[Path]) -> Trees:
    """Where the files the manifests in ``dirs`` name are: inside the node's tree for a
    sandbox node's dir, as written for any other."""
    per = {d.resolve(): _tree(d) for d in dirs}

    def tree(manifests: Path) -> NodeTree:
        return per.get(manifests.resolve()) or _tree(manifests)

    return tree


def reach_for(dirs: Sequence[Path]) -> Callable[[Path, str], str]:
    """How the host reaches what the manifests in ``dirs`` name: through its sandbox's forwards
    for a sandbox node's dir, as written for any other (a real node's, when run there)."""
    per: dict[Path, Callable[[Path, str], str]] = {}
    for d in dirs:
        name = owner(d)
        if name is not None:
            per[d.resolve()] = etcd_target(name)[1]

    def reach(manifests: Path, url: str) -> str:
        route = per.get(manifests.resolve())
        return route(manifests, url) if route else url

    return reach


def _state(name: str) -> dict[str, Any] | None:
    try:
        doc = json.loads((state_root() / name / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def sandbox_of_context(context: str | None) -> str | None:
    """The sandbox a kubeconfig context names, when it is one of this machine's: a sandbox's
    context is ``kubecare-<name>`` (sandbox.kubeconfigs), however the file was merged."""
    if not context or not context.startswith("kubecare-"):
        return None
    name = context.removeprefix("kubecare-")
    return name if _state(name) is not None else None


def api_addresses(name: str) -> tuple[tuple[str, str], ...]:
    """Each control plane's apiserver (``192.0.2.x:6443``, as its mirror pod names it) ->
    the host's forward to it; nothing for a sandbox that is not there."""
    doc = _state(name) or {}
    out = []
    for cp in doc.get("control_planes") or []:
        forward = (cp.get("forward") or {}).get("6443")
        if cp.get("ip") and forward:
            out.append((f"{cp['ip']}:6443", f"127.0.0.1:{forward}"))
    return tuple(out)


def etcd_target(name: str) -> tuple[list[Path], Callable[[Path, str], str], Trees]:
    """The manifests dir of every control-plane node of sandbox ``name``, how the host reaches
    the URLs their manifests name, and where the files they name are."""
    state = state_root() / name / "state.json"
    try:
        doc = json.loads(state.read_text())
    except FileNotFoundError:
        raise EtcdError(
            f'sandbox "{name}" not found; start it with: kubecare sandbox up --name {name}'
        ) from None
    except (OSError, ValueError) as e:
        raise EtcdError(f"sandbox {name!r}: cannot read {state}: {e}") from None
    cps = doc.get("control_planes") or []
    if not cps:
        raise EtcdError(f'sandbox "{name}" has no control-plane nodes in {state}')
    routes: dict[str, tuple[list[str], dict[int, int]]] = {}
    for cp in cps:
        forwards = {int(k): int(v) for k, v in (cp.get("forward") or {}).items()}
        routes[cp["node"]] = ([str(cp.get("ip") or "")], forwards)

    def reach(manifests: Path, url: str) -> str:
        found = node_of(manifests)
        route = routes.get(found[1]) if found and found[0] == name else None
        return host_address(url, *route) if route else url

    dirs = [Path(cp["manifests"]) for cp in cps]
    return dirs, reach, trees_for(dirs)


def etcdutl_for(images: Sequence[str]) -> Path | None:
    """The sandbox's etcdutl for members running ``images``: the release of the oldest etcd
    minor among them (a data dir the oldest member can open; mid-upgrade, members differ), or
    None when that etcd was never built."""
    from kubecare.sandbox.binaries import binary_path, etcd_release

    releases = [r for r in (etcd_release(i.rpartition(":")[2]) for i in images) if r]
    if not releases:
        return None
    oldest = min(releases, key=lambda v: tuple(int(x) for x in v.split(".")))
    return binary_path("etcdutl", oldest)
