"""Which nodes a command acts on: names, or a label selector — never both, never neither."""

from __future__ import annotations

import re
from collections.abc import Sequence

from kubecare.errors import NotFound, UsageError
from kubecare.kube import JSON, Kube

# A conservative check that catches typos before the server does; the server has the last word.
_SELECTOR = re.compile(r"^[A-Za-z0-9_.\-/!=,() ]+$")


def validate_selection(names: Sequence[str], selector: str | None) -> None:
    """Raise :class:`UsageError` unless exactly one of ``names`` / ``selector`` is given."""
    if names and selector:
        raise UsageError("give node names or -l/--selector, not both")
    if not names and not selector:
        raise UsageError("name at least one node, or pass -l/--selector")
    if selector is not None and (not selector.strip() or not _SELECTOR.match(selector)):
        raise UsageError(
            f"invalid label selector {selector!r}; example: -l node-role.kubernetes.io/worker="
        )


async def select_nodes(
    kube: Kube, names: Sequence[str], selector: str | None, *, chunk_size: int = 500
) -> list[JSON]:
    """The node objects named (each must exist) or matching ``selector`` (at least one), the
    list paged by ``chunk_size`` (kubectl drain's builder: RequestChunksOf its --chunk-size)."""
    validate_selection(names, selector)
    if selector:
        nodes = [
            n
            async for n in kube.list_items(
                "/api/v1/nodes",
                params={"labelSelector": selector},
                chunk_size=chunk_size,
                what=f"nodes matching {selector!r}",
            )
        ]
        if not nodes:
            raise NotFound(
                f"no nodes match selector {selector!r}; list nodes with: kubecare nodes", status=404
            )
        return nodes
    out = []
    for name in dict.fromkeys(names):  # keep order, drop repeats
        try:
            out.append(await kube.get_json(f"/api/v1/nodes/{name}", what=f'node "{name}"'))
        except NotFound:
            raise NotFound(
                f'node "{name}" not found; list nodes with: kubecare nodes', status=404
            ) from None
    return out
