"""Fleet selection, fleet files and the run's read-only rule (pure; no cluster)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubecare.errors import UsageError
from kubecare.fleet.fleetfile import (
    FleetCluster,
    FleetFileError,
    load_fleet,
    parse_fleet,
    waves_flag,
)
from kubecare.fleet.runner import argv_for, is_read_only
from kubecare.fleet.select import (
    Filter,
    match_contexts,
    matches,
    parse_filter,
    parse_selector,
    select,
)

# kubectl-foreach's filter_test.go Test_parseFilter, ported (plus kubecare's globs)
PARSE = [
    ("foo", Filter("foo", "exact", "foo")),
    ("^foo", Filter("^foo", "exact", "foo", exclude=True)),
    ("/re/", Filter("/re/", "regex", "re")),
    ("/re", Filter("/re", "exact", "/re")),  # pattern missing trailing slash
    ("^/re/", Filter("^/re/", "regex", "re", exclude=True)),
    ("dev-*", Filter("dev-*", "glob", "dev-*")),
    ("^edge-?", Filter("^edge-?", "glob", "edge-?", exclude=True)),
]


@pytest.mark.parametrize(("text", "want"), PARSE)
def test_filters_parse_as_kubectl_foreachs(text: str, want: Filter) -> None:
    assert parse_filter(text) == want


@pytest.mark.parametrize("bad", ["", "/re(/"])
def test_bad_filters_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_filter(bad)


def test_exact_pattern_and_exclude_match_as_kubectl_foreachs() -> None:
    assert parse_filter("foo").match("foo") and not parse_filter("foo").match("bar")
    pattern = parse_filter("/^re/")
    assert not pattern.match("are") and pattern.match("res")
    unanchored = parse_filter("/re/")
    assert unanchored.match("are")  # Go's MatchString finds it anywhere


# kubectl-foreach's matcher_test.go Test_matchContexts, ported
MATCH = [
    ("empty input", [], ["foo"], []),
    ("empty filters match all", ["a", "b", "c"], [], ["a", "b", "c"]),
    ("only additive patterns", ["a", "b", "c"], ["a", "/^c/"], ["a", "c"]),
    ("only additive patterns no results", ["a", "b", "c"], ["d", "/^e/"], []),
    ("only excluding patterns", ["a", "b", "c"], ["^b", "^d"], ["a", "c"]),
    ("only excluding patterns no results", ["a", "b", "c"], ["^/^/"], []),
    ("mixed patterns", ["a", "b", "c", "d", "e"], ["a", "b", "^b", "^e", "/^[cde]/"],
     ["a", "c", "d"]),
    ("globs", ["dev-1", "dev-2", "prod"], ["dev-*", "^dev-2"], ["dev-1"]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "names", "patterns", "want"), MATCH, ids=[m[0] for m in MATCH])
def test_contexts_match_as_kubectl_foreachs(
    name: str, names: list[str], patterns: list[str], want: list[str]
) -> None:
    assert match_contexts(names, [parse_filter(p) for p in patterns]) == want


def test_a_selection_of_nothing_names_the_contexts() -> None:
    with pytest.raises(UsageError, match=r"no cluster matches prod-\*; the contexts are: a, b"):
        select(["a", "b"], ["prod-*"])


def test_label_selectors() -> None:
    reqs = parse_selector("env=prod,tier!=edge,canary,!legacy")
    assert matches(reqs, {"env": "prod", "canary": "yes"})
    assert not matches(reqs, {"env": "prod", "canary": "", "tier": "edge"})
    assert not matches(reqs, {"env": "prod", "canary": "", "legacy": "1"})
    assert not matches(reqs, {"env": "dev", "canary": ""})
    assert matches(parse_selector("env==prod"), {"env": "prod"})
    for bad in ("env in (a,b)", "a,,b", "=x"):
        with pytest.raises(UsageError):
            parse_selector(bad)


FLEET = {
    "clusters": [
        {"context": "dev", "labels": {"env": "dev"}},
        {"context": "stage", "labels": {"env": "staging"}},
        {"context": "prod-eu", "labels": {"env": "prod"}, "kubeconfig": "/k/prod"},
        {"context": "prod-us", "name": "us", "labels": {"env": "prod"}},
    ],
    "groups": {"prod": {"selector": "env=prod"}},
    "waves": [
        {"name": "canary", "clusters": ["dev"]},
        {"name": "staging", "selector": "env=staging"},
        {"name": "rest", "clusters": ["*"]},
    ],
}


def test_a_fleet_file_gives_clusters_and_waves_in_order() -> None:
    fleet = parse_fleet(FLEET, "fleet.yaml")
    assert [c.name for c in fleet.clusters] == ["dev", "stage", "prod-eu", "us"]
    assert fleet.clusters[3] == FleetCluster("us", "prod-us", None, {"env": "prod"})
    assert fleet.clusters[2].kubeconfig == "/k/prod"
    # a pattern takes what earlier waves did not; each wave after the one before by default
    assert [(w.name, w.clusters, w.after) for w in fleet.waves] == [
        ("canary", ("dev",), ()),
        ("staging", ("stage",), ("canary",)),
        ("rest", ("prod-eu", "us"), ("staging",)),
    ]


def test_waves_run_in_an_order_after_allows() -> None:
    doc = {
        "clusters": FLEET["clusters"],
        "waves": [
            {"name": "prod", "clusters": ["group:prod"], "after": ["canary"]},
            {"name": "canary", "clusters": ["dev"], "after": []},
        ],
        "groups": FLEET["groups"],
    }
    assert [w.name for w in parse_fleet(doc, "f").waves] == ["canary", "prod"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"waves": [{"name": "a", "clusters": ["nope"]}]}, "wave 'a': unknown cluster 'nope'"),
        (
            {"waves": [{"name": "a", "clusters": ["dev"], "after": ["b"]},
                       {"name": "b", "clusters": ["stage"], "after": ["a"]}]},
            "waves a -> b -> a form a cycle",
        ),
        ({"waves": [{"name": "a", "clusters": ["dev"], "after": ["x"]}]}, "unknown wave 'x'"),
        (
            {"waves": [{"name": "a", "clusters": ["dev"]}, {"name": "b", "clusters": ["dev"]}]},
            "cluster 'dev' is already in wave 'a'",
        ),
        ({"waves": [{"name": "a", "selector": "env=none"}]}, "selects no cluster"),
        ({"waves": [{"name": "a"}]}, "needs clusters or a selector"),
        ({"groups": {"g": {"clusters": ["group:h"]}}}, "unknown group 'h'"),
        ({"colour": "red"}, "unknown key 'colour'"),
        ({"clusters": []}, "clusters must be a non-empty list"),
        ({"clusters": [{"context": "a"}, {"context": "a"}]}, "the name 'a' is used twice"),
        ({"clusters": [{"name": "x"}]}, r"clusters\[0\] needs a context"),
    ],
)  # fmt: skip
def test_fleet_file_mistakes_are_named(change: dict, message: str) -> None:
    doc = {"clusters": FLEET["clusters"], **change}
    with pytest.raises(FleetFileError, match=message):
        parse_fleet(doc, "fleet.yaml")


def test_fleet_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(FleetFileError, match="does not exist"):
        load_fleet(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [\n")
    with pytest.raises(FleetFileError, match="is not valid YAML"):
        load_fleet(bad)
    with pytest.raises(FleetFileError, match="is a directory"):
        load_fleet(tmp_path)


def test_waves_flag() -> None:
    clusters = [FleetCluster(n, n) for n in ("dev-1", "dev-2", "prod")]
    waves = waves_flag("canary=dev-1,rest=*", clusters)
    assert [(w.name, w.clusters) for w in waves] == [
        ("canary", ("dev-1",)),
        ("rest", ("dev-2", "prod")),
    ]
    with pytest.raises(UsageError, match="NAME=PATTERN"):
        waves_flag("canary", clusters)


@pytest.mark.parametrize(
    ("command", "read_only"),
    [
        (["nodes"], True),
        (["versions", "-o", "json"], True),
        (["backup", "create", "nightly-{context}", "--to", "/b"], True),
        (["etcd", "members"], True),
        (["upgrade", "plan"], True),
        (["drain", "n1", "--dry-run=server"], True),
        (["etcd", "defrag", "--plan"], True),
        (["drain", "n1"], False),
        (["drain", "n1", "--dry-run=none"], False),
        (["upgrade", "apply", "--to", "1.37"], False),
        (["etcd", "defrag"], False),
        (["backup", "restore", "x"], False),
        (["cordon", "-l", "a=b"], False),
        # the review's finds: argparse takes the value as the next word; none is a real run
        (["cordon", "n1", "--dry-run", "none"], False),
        (["drain", "n1", "--dry-run", "client"], True),
        (["certs", "renew", "all", "--dry-run"], True),
        (["certs", "renew", "all", "--dry-run", "--sandbox", "s"], True),
        # a --plan of the command maintain runs is not maintain's
        (["maintain", "n1", "--", "./reboot", "--plan"], False),
        (["backup", "create", "b", "--volumes"], False),
        (["etcd", "snapshot", "recover", "f.db", "deploy/x", "--apply"], False),
        (["etcd", "snapshot", "recover", "f.db", "deploy/x"], False),
        (["etcd", "snapshot", "save", "s-{context}.db"], True),
    ],
)
def test_what_asks_before_running_on_many_clusters(command: list[str], read_only: bool) -> None:
    assert is_read_only(command) is read_only


def test_each_cluster_gets_its_own_kubeconfig_and_context() -> None:
    argv = argv_for(FleetCluster("eu", "prod-eu", "/k/prod"), ["backup", "create", "n-{context}"])
    assert argv[3:] == [
        "--kubeconfig",
        "/k/prod",
        "--context",
        "prod-eu",
        "backup",
        "create",
        "n-eu",
    ]


@pytest.mark.parametrize("flag", ["--context", "--kubeconfig=/k", "--sandbox"])
def test_a_command_aimed_elsewhere_is_refused(flag: str) -> None:
    from kubecare.fleet.runner import check_command

    with pytest.raises(UsageError, match="would send every cluster's run to the same place"):
        check_command(["drain", "n1", flag, "prod"])
    check_command(["maintain", "n1", "--", "ssh", "--context", "x"])  # the inner command's own


def test_a_wave_of_exclusions_alone_takes_from_every_cluster_and_labels_read_as_written() -> None:
    doc = {
        "clusters": [
            {"context": "a", "labels": {"canary": True}},
            {"context": "b", "labels": {"canary": False}},
        ],
        "waves": [{"name": "all-but-a", "clusters": ["^a"]}],
    }
    fleet = parse_fleet(doc, "f")
    assert fleet.waves[0].clusters == ("b",)
    assert fleet.clusters[0].labels == {"canary": "true"}
    assert matches(parse_selector("canary=true"), fleet.clusters[0].labels)


async def test_a_line_longer_than_a_stream_buffer_arrives_whole(tmp_path: Path) -> None:
    """The review's find: readline() overruns at 64 KiB; one JSON document can be longer."""
    import asyncio

    from kubecare.fleet.runner import _pump

    reader = asyncio.StreamReader(limit=1 << 16)
    big = "x" * (1 << 18)
    reader.feed_data(f"{big}\nshort\ntail".encode())
    reader.feed_eof()
    got: list[str] = []
    keep: list[str] = []
    await _pump(reader, "c", "out", lambda _c, _w, line: got.append(line), keep)
    assert got == [big, "short", "tail"] == keep


def test_a_user_shadowed_by_kubectls_merge_is_named(tmp_path: Path) -> None:
    """Two clusters' files that both call their user kubernetes-admin: merged as kubectl
    merges, the second file's context would use the first file's credentials."""
    import yaml

    from kubecare.kube.config import context_names, shadowed

    paths = []
    for name in ("one", "two"):
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": name, "cluster": {"server": f"https://{name}.example:6443"}}],
            "users": [{"name": "kubernetes-admin", "user": {"token": name}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": "kubernetes-admin"}}],
        }))  # fmt: skip
        paths.append(str(p))
    kubeconfig = os.pathsep.join(paths)
    assert context_names(kubeconfig) == ["one", "two"]
    [note] = shadowed(kubeconfig, ["one", "two"])
    assert note.startswith(f"user 'kubernetes-admin' is defined in {paths[0]} and in {paths[1]}")
    assert shadowed(kubeconfig, ["one"]) == []  # the first file's own context is fine
