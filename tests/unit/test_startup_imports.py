"""Start-up guard: cheap commands must not import what only real work needs.

Deterministic (which modules got imported), not timed. Every command added later inherits it:
`--help` of every command is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kubecare.cli.app import _all_subparsers, build_parser

# Heavy modules no `--help`, `version` or `completion` may pull in.
HEAVY = (
    "asyncio",
    "ssl",
    "httpx2",
    "httpcore2",
    "yaml",
    "orjson",
    "asyncssh",
    "cryptography",
    "grpc",
    "lightkube",
    "rich",
    "typer",
    "click",
    "kubecare.kube",
    "kubecare.nodes",
    "kubecare.sandbox.cluster",
)

PROBE = """
import json, sys
from kubecare.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("MODULES=" + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def imported(*args: str) -> set[str]:
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(x for x in res.stderr.splitlines() if x.startswith("MODULES="))
    return set(json.loads(line.removeprefix("MODULES=")))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def every_command() -> list[list[str]]:
    root = build_parser()
    out = [[]]
    for sub in _all_subparsers(root):
        out.append(sub.prog.split()[1:])
    return out


@pytest.mark.parametrize("args", [["version"], ["--help"], ["completion", "bash"]])
def test_cheap_commands_import_nothing_heavy(args: list[str]) -> None:
    assert heavy_in(imported(*args)) == []


def test_every_commands_help_imports_nothing_heavy() -> None:
    # One process per command would take seconds; the parser is the same, so one probe that
    # asks each command's help in turn proves the same thing.
    probe = """
import json, sys
from kubecare.cli.app import main
for cmd in json.loads(sys.argv[1]):
    try:
        main([*cmd, "--help"])
    except SystemExit:
        pass
print("MODULES=" + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""
    res = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(every_command())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = next(x for x in res.stderr.splitlines() if x.startswith("MODULES="))
    assert heavy_in(set(json.loads(line.removeprefix("MODULES=")))) == []
    assert len(every_command()) > 15


def test_reading_a_snapshot_imports_neither_grpc_nor_asyncio(tmp_path: Path) -> None:
    # status, ls and get are offline: what only `save` (grpc) and the cluster commands need
    # stays out of them.
    import zstandard

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "etcd" / "registry.db.zst"
    snap = tmp_path / "s.db"
    snap.write_bytes(zstandard.ZstdDecompressor().decompress(fixture.read_bytes()))
    for args in (["etcd", "snapshot", "status", str(snap)], ["etcd", "snapshot", "ls", str(snap)]):
        mods = imported(*args)
        assert "kubecare.etcd.snapshot" in mods  # the command did run
        assert [m for m in ("grpc", "asyncio", "kubecare.kube") if m in mods] == []


def test_reading_a_local_backup_imports_no_cluster_client_s3_or_age(tmp_path: Path) -> None:
    # list, describe and verify of a local archive are offline: no HTTP client, no asyncio,
    # no obstore (S3) and no pyrage (only Secrets need it).
    from tests.unit.test_backup_logic import cm, write_archive

    store = tmp_path / "store"
    store.mkdir()
    write_archive(store / "b1.tar.zst", {"configmaps": [cm("x")]})
    for args in (
        ["backup", "list", "--from", str(store)],
        ["backup", "describe", "b1", "--from", str(store)],
        ["backup", "verify", str(store / "b1.tar.zst")],
    ):
        mods = imported(*args)
        assert "kubecare.backup.archive" in mods  # the command did run
        unwanted = ("asyncio", "kubecare.kube", "obstore", "pyrage", "ssl")
        assert [m for m in unwanted if m in mods] == [], args


def test_an_unexpected_exception_is_one_line_and_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's last resort (issue 19, item 13): never a bare traceback."""
    import argparse
    import stat

    from kubecare.cli import app

    def boom(_args: argparse.Namespace) -> int:
        raise TypeError("can only concatenate str (not 'list') to str")

    parser = argparse.ArgumentParser(prog="kubecare")
    parser.set_defaults(handler=boom)
    monkeypatch.setattr(app, "build_parser", lambda: parser)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert app.main([]) == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: kubecare failed unexpectedly (TypeError: can only concatenate")
    [report] = (tmp_path / "kubecare" / "crashes").iterdir()
    assert str(report) in err and stat.S_IMODE(report.stat().st_mode) == 0o600
    assert "Traceback" in report.read_text() and "boom" in report.read_text()
