"""The `kubecare` / `kubectl care` command line: a thin layer over the library.

Results go to stdout, progress and errors to stderr. Exit codes: 0 done, 1 the operation failed,
2 usage error. Expected failures print one ``error: ...`` line, never a traceback.

Start-up is kept small on purpose: declaring every command's flags is cheap (argparse and the
``kubecare.cli`` modules only), and the library behind a command — HTTP client, YAML, SSH — is
imported inside the handler that runs. ``tests/unit/test_startup_imports.py`` guards that.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kubecare import __version__
from kubecare.cli import (
    backup,
    certs,
    completion,
    drain,
    etcd,
    fleet,
    nodes,
    outage,
    sandbox,
    upgrade,
)
from kubecare.cli.args import add_global_flags

DESCRIPTION = (
    "Kubernetes node maintenance: cordon, drain, maintain, node outages and risks, "
    "versions and cluster upgrades, etcd snapshots and care, certificates, resource backups, "
    "and a local sandbox "
    "control plane."
)
# Commands that take a command line after `--` (it is split off before parsing).
TAKES_COMMAND = {"maintain", "fleet"}

Register = Callable[[argparse._SubParsersAction], None]  # type: ignore[type-arg]
MODULES: tuple[Register, ...] = (
    nodes.register,
    drain.register,
    outage.register,
    etcd.register,
    certs.register,
    backup.register,
    upgrade.register,
    fleet.register,
    sandbox.register,
    completion.register,
)


class Parser(argparse.ArgumentParser):
    """argparse with kubectl's habits: exit 2 with one `error:` line and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from kubecare.cli.render import error

        error(message if "--help" in message else f"{message}; see '{self.prog} --help'")
        sys.exit(2)


def build_parser() -> Parser:
    root = Parser(
        prog="kubecare",
        description=DESCRIPTION,
        epilog="Installed as kubectl-care, every command also runs as `kubectl care ...`.",
    )
    add_global_flags(root, defaults=True)
    root.add_argument("--version", action="version", version=f"kubecare {__version__}")
    subs = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    version = subs.add_parser("version", help="print kubecare's version")
    version.set_defaults(handler=lambda _args: print(f"kubecare {__version__}"))
    for register in MODULES:
        register(subs)
    for sub in _all_subparsers(root):
        add_global_flags(sub, defaults=False)
        sub.set_defaults(parser_prog=sub.prog)  # the deepest command's wins: for error hints
        sub.epilog = (
            sub.epilog or "Global options (--kubeconfig, --context, -n, ...): kubecare --help"
        )
    return root


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out.append(sub)
                out.extend(_all_subparsers(sub))
    return out


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``[flags...] -- COMMAND...`` -> (flags, COMMAND) for commands that run a command line."""
    argv = list(argv)
    if "--" in argv and any(a in TAKES_COMMAND for a in argv[: argv.index("--")]):
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of both `kubecare` and `kubectl-care`."""
    from kubecare.errors import KubecareError

    args_in, command = split_command(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == [completion.COMPLETE]:
        return completion.complete(build_parser(), args_in[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(args_in)
    if extra:
        prog = getattr(args, "parser_prog", "kubecare")
        what = "flag" if extra[0].startswith("-") else "argument"
        parser.error(f"unknown {what}: {' '.join(extra)}; see '{prog} --help'")
    args.command_line = command
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        code = handler(args)
    except KubecareError as e:
        from kubecare.cli.render import error

        error(e.message)
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `kubecare nodes | head`: the reader left; not an error
        return 0
    except Exception as e:  # a defect of kubecare's: one line here, the details in a file
        sys.stderr.write(f"error: {crash_report(e)}\n")
        return 70  # EX_SOFTWARE
    return int(code or 0)


def crash_report(e: BaseException) -> str:
    """Write ``e``'s traceback to a private file; the one line that names it."""
    import os
    import tempfile
    import time
    import traceback

    text = "".join(traceback.format_exception(e))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    where = Path(base) / "kubecare" / "crashes"
    try:
        from kubecare.files import write_atomic

        where.mkdir(parents=True, exist_ok=True)
        path = where / f"crash-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.txt"
        write_atomic(path, text, mode=0o600)
        detail = f"the details are in {path}"
    except OSError:
        fd, name = tempfile.mkstemp(prefix="kubecare-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        detail = f"the details are in {name}"
    return (
        f"kubecare failed unexpectedly ({type(e).__name__}: {e}); {detail} — please report "
        "it with that file"
    )


if __name__ == "__main__":
    sys.exit(main())
