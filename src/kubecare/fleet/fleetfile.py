"""The fleet file, and the fleet made from kubeconfig contexts when there is none.

::

    kubeconfig: ~/.kube/fleet.yaml        # optional: every cluster's default kubeconfig
    clusters:
      - context: dev                      # required: a context of that kubeconfig
        labels: {env: dev}
      - context: prod-eu
        name: prod-eu                     # optional: the row's name (default: the context)
        kubeconfig: ~/.kube/prod.yaml     # optional: this cluster's own kubeconfig
        labels: {env: prod}
        upgrade: [--executor, ssh, --ssh-user, admin]   # optional: its `upgrade apply` flags
    groups:                               # optional: named sets, by patterns or a selector
      prod: {selector: env=prod}
    waves:                                # optional: for fleet upgrade
      - name: canary
        clusters: [dev]                   # names, patterns, or group:NAME
      - name: prod
        selector: env=prod
        after: [canary]                   # default: the wave before it

Everything is checked when the file is read, before any cluster is asked anything: unknown
keys, duplicate names, a wave or group naming a cluster the file does not have, a cluster in
two waves by name, waves whose ``after`` form a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .select import matches, parse_filter, parse_selector


@dataclass(frozen=True)
class FleetCluster:
    name: str  # unique in the fleet: the row's CONTEXT column, the record's .context
    context: str
    kubeconfig: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    upgrade_args: tuple[str, ...] = ()  # this cluster's own `upgrade apply` flags (executor...)


@dataclass(frozen=True)
class Wave:
    name: str
    clusters: tuple[str, ...]  # cluster names, in fleet order
    after: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fleet:
    clusters: tuple[FleetCluster, ...]
    waves: tuple[Wave, ...] = ()  # in the order they run
    source: str = ""

    def named(self, names: list[str]) -> Fleet:
        keep = set(names)
        return Fleet(tuple(c for c in self.clusters if c.name in keep), self.waves, self.source)


class FleetFileError(UsageError):
    """A fleet file that cannot be used as written (exit 2, nothing asked of any cluster)."""


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise FleetFileError(f"{where} must be a mapping")
    return v


def _strings(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise FleetFileError(f"{where} must be a list of names or patterns")
    return list(v)


def _only(doc: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(doc) - keys)
    if unknown:
        raise FleetFileError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})"
        )


def _label(v: object) -> str:
    """A label value as written: YAML's ``true`` is the label ``true``, not Python's True."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _pick(
    spec: dict[str, Any],
    clusters: list[FleetCluster],
    groups: dict[str, list[str]],
    where: str,
) -> list[str]:
    """The cluster names a wave or group spec selects: ``clusters`` (exact names must exist;
    patterns and ``group:NAME``) and/or ``selector``, both applying when both are given."""
    names = [c.name for c in clusters]
    chosen: list[str] | None = None
    if "clusters" in spec:
        texts = _strings(spec["clusters"], f"{where}.clusters")
        # as kubectl-foreach: exclusions alone take from every cluster
        only_excluding = all(t.startswith("^") for t in texts)
        picked: list[str] = list(names) if only_excluding else []
        for text in texts:
            if text.startswith("group:"):
                group = text.removeprefix("group:")
                if group not in groups:
                    raise FleetFileError(f"{where}: unknown group {group!r}")
                picked += groups[group]
                continue
            f = parse_filter(text)
            if f.kind == "exact" and not f.exclude and f.value not in names:
                raise FleetFileError(
                    f"{where}: unknown cluster {f.value!r}; the fleet has: {', '.join(names)}"
                )
            if f.exclude:
                picked = [n for n in picked if not f.match(n)]
            else:
                picked += [n for n in names if f.match(n)]
        chosen = [n for n in names if n in set(picked)]
    if "selector" in spec:
        if not isinstance(spec["selector"], str):
            raise FleetFileError(f"{where}.selector must be a label selector string")
        reqs = parse_selector(spec["selector"])
        by_sel = [c.name for c in clusters if matches(reqs, c.labels)]
        chosen = by_sel if chosen is None else [n for n in chosen if n in set(by_sel)]
    if chosen is None:
        raise FleetFileError(f"{where} needs clusters or a selector")
    return chosen


def order_waves(waves: list[Wave]) -> list[Wave]:
    """Waves in an order every ``after`` allows, the file's order where it is free; a cycle
    is named."""
    by_name = {w.name: w for w in waves}
    for w in waves:
        for a in w.after:
            if a not in by_name:
                raise FleetFileError(f"wave {w.name!r} comes after unknown wave {a!r}")
    out: list[Wave] = []
    state: dict[str, int] = {}  # 1: on the path, 2: placed

    def visit(w: Wave, path: list[str]) -> None:
        if state.get(w.name) == 2:
            return
        if state.get(w.name) == 1:
            cycle = [*path[path.index(w.name) :], w.name]
            raise FleetFileError(f"waves {' -> '.join(cycle)} form a cycle")
        state[w.name] = 1
        for a in w.after:
            visit(by_name[a], [*path, w.name])
        state[w.name] = 2
        out.append(w)

    for w in waves:
        visit(w, [])
    return out


def parse_fleet(doc: Any, source: str) -> Fleet:
    doc = _mapping(doc if doc is not None else {}, source)
    _only(doc, {"apiVersion", "kind", "kubeconfig", "clusters", "groups", "waves"}, source)
    default_kc = doc.get("kubeconfig")
    if default_kc is not None and not isinstance(default_kc, str):
        raise FleetFileError(f"{source}: kubeconfig must be a path")
    raw = doc.get("clusters")
    if not isinstance(raw, list) or not raw:
        raise FleetFileError(f"{source}: clusters must be a non-empty list")
    clusters: list[FleetCluster] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"{source}: clusters[{i}]"
        entry = _mapping(entry, where)
        _only(entry, {"context", "name", "kubeconfig", "labels", "upgrade"}, where)
        context = entry.get("context")
        if not isinstance(context, str) or not context:
            raise FleetFileError(f"{where} needs a context")
        name = entry.get("name", context)
        if not isinstance(name, str) or not name:
            raise FleetFileError(f"{where}: name must be a string")
        if name in seen:
            raise FleetFileError(f"{where}: the name {name!r} is used twice")
        seen.add(name)
        labels = _mapping(entry.get("labels") or {}, f"{where}.labels")
        if not all(
            isinstance(k, str) and isinstance(v, str | int | bool) for k, v in labels.items()
        ):
            raise FleetFileError(f"{where}.labels must map names to strings")
        kc = entry.get("kubeconfig", default_kc)
        if kc is not None and not isinstance(kc, str):
            raise FleetFileError(f"{where}: kubeconfig must be a path")
        upgrade = entry.get("upgrade") or []
        if not isinstance(upgrade, list) or not all(isinstance(a, str | int) for a in upgrade):
            raise FleetFileError(f"{where}.upgrade must be a list of `upgrade apply` flags")
        clusters.append(
            FleetCluster(
                name,
                context,
                kc,
                {str(k): _label(v) for k, v in labels.items()},
                tuple(str(a) for a in upgrade),
            )
        )
    groups: dict[str, list[str]] = {}
    for gname, spec in _mapping(doc.get("groups") or {}, f"{source}: groups").items():
        where = f"{source}: group {gname!r}"
        spec = {"clusters": spec} if isinstance(spec, list | str) else _mapping(spec, where)
        _only(spec, {"clusters", "selector"}, where)
        groups[str(gname)] = _pick(spec, clusters, groups, where)
    waves = parse_waves(doc.get("waves") or [], clusters, groups, source)
    return Fleet(tuple(clusters), tuple(waves), source)


def parse_waves(
    raw: Any, clusters: list[FleetCluster], groups: dict[str, list[str]], source: str
) -> list[Wave]:
    if not isinstance(raw, list):
        raise FleetFileError(f"{source}: waves must be a list")
    waves: list[Wave] = []
    placed: dict[str, str] = {}  # cluster -> wave
    for i, spec in enumerate(raw):
        spec = _mapping(spec, f"{source}: waves[{i}]")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise FleetFileError(f"{source}: waves[{i}] needs a name")
        where = f"{source}: wave {name!r}"
        _only(spec, {"name", "clusters", "selector", "after"}, where)
        if any(w.name == name for w in waves):
            raise FleetFileError(f"{where} is declared twice")
        picked = _pick(spec, clusters, groups, where)
        exact = {
            parse_filter(t).value
            for t in _strings(spec.get("clusters", []), where)
            if parse_filter(t).kind == "exact" and not t.startswith(("^", "group:"))
        }
        for n in exact:
            if n in placed:
                raise FleetFileError(f"{where}: cluster {n!r} is already in wave {placed[n]!r}")
        # a pattern takes what no earlier wave took: `rest: ["*"]` is the rest
        mine = tuple(n for n in picked if n not in placed)
        if not mine:
            raise FleetFileError(f"{where} selects no cluster that an earlier wave does not have")
        for n in mine:
            placed[n] = name
        after = spec.get("after")
        deps = _strings(after, f"{where}.after") if after is not None else (
            [waves[-1].name] if waves else []
        )  # fmt: skip
        waves.append(Wave(name, mine, tuple(deps)))
    return order_waves(waves)


def waves_flag(text: str, clusters: list[FleetCluster]) -> list[Wave]:
    """``--waves canary=dev-*,rest=*``: waves in that order, each its patterns (``+`` joins
    several: ``canary=dev+/^qa-/``)."""
    specs: list[dict[str, Any]] = []
    for part in text.split(","):
        name, sep, patterns = part.partition("=")
        if not sep or not name or not patterns:
            raise UsageError(f"--waves {text!r}: each wave is NAME=PATTERN[+PATTERN...]")
        specs.append({"name": name.strip(), "clusters": patterns.split("+")})
    return parse_waves(specs, clusters, {}, "--waves")


def load_fleet(path: Path) -> Fleet:
    import yaml

    try:
        text = path.expanduser().read_text()
    except FileNotFoundError:
        raise FleetFileError(f"fleet file {path} does not exist") from None
    except PermissionError:
        raise FleetFileError(f"fleet file {path} is not readable (permission denied)") from None
    except IsADirectoryError:
        raise FleetFileError(f"fleet file {path} is a directory, not a file") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FleetFileError(
            f"fleet file {path} is not valid YAML: {str(e).splitlines()[0]}"
        ) from None
    return parse_fleet(doc, str(path))


def from_contexts(names: list[str], kubeconfig: str | None) -> Fleet:
    return Fleet(tuple(FleetCluster(n, n, kubeconfig) for n in names), (), "kubeconfig")
