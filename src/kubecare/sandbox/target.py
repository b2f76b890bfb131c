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
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kubecare.errors import EtcdError
from kubecare.sandbox.state import state_root


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


def etcd_target(name: str) -> tuple[list[Path], Callable[[Path, str], str]]:
    """The manifests dir of every control-plane node of sandbox ``name``, and how the host
    reaches the URLs their manifests name."""
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
    routes: dict[Path, tuple[list[str], dict[int, int]]] = {}
    for cp in cps:
        forwards = {int(k): int(v) for k, v in (cp.get("forward") or {}).items()}
        routes[Path(cp["manifests"]).resolve()] = ([str(cp.get("ip") or "")], forwards)

    def reach(manifests: Path, url: str) -> str:
        route = routes.get(manifests.resolve())
        return host_address(url, *route) if route else url

    return [Path(cp["manifests"]) for cp in cps], reach
