"""Shell completion: `kubecare completion bash|zsh|fish`, and the protocol behind it.

The shell scripts call ``kubecare __complete WORDS... CURRENT``, which prints one candidate per
line and a last line ``:N`` — cobra's protocol (N = ShellCompDirective bits: 2 no space, 4 no file
completion). kubectl speaks the same protocol to plugins: for ``kubectl care <TAB>`` it runs
``kubectl_complete-care WORDS... CURRENT`` (kubectl >= 1.26), which is installed with kubecare.

Candidates: subcommands and flags from the parser itself, flag values from their choices, node
names from the current cluster (one list call with a short timeout, silent on failure), contexts
from the kubeconfig, sandbox names and nodes from the local sandbox state.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

COMPLETE = "__complete"
NO_SPACE, NO_FILES = 2, 4
SHELLS = ("bash", "zsh", "fish")
FILE_FLAGS = {"--kubeconfig", "--ssh-key", "--known-hosts"}

BASH = r"""# bash completion for kubecare (and kubectl-care); load with: source <(kubecare completion bash)
_kubecare_complete() {
    local cur="${COMP_WORDS[COMP_CWORD]}" out directive
    out=$("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD-1}" "$cur" 2>/dev/null) || return
    directive=${out##*:}
    out=${out%:*}
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$out" -- "$cur"))
    if [[ ${#COMPREPLY[@]} -eq 0 ]] && (( (directive & 4) == 0 )); then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
    if (( directive & 2 )); then compopt -o nospace 2>/dev/null; fi
}
complete -o default -F _kubecare_complete kubecare kubectl-care
"""

ZSH = r"""#compdef kubecare kubectl-care
# zsh completion for kubecare; load with: source <(kubecare completion zsh)
_kubecare_complete() {
    local -a out comps
    local directive
    out=("${(@f)$(${words[1]} __complete ${words[2,CURRENT-1]} "${words[CURRENT]}" 2>/dev/null)}")
    directive=${out[-1]#:}
    comps=(${out[1,-2]})
    if (( ${#comps} )); then
        compadd -a comps
    elif (( (directive & 4) == 0 )); then
        _files
    fi
}
compdef _kubecare_complete kubecare kubectl-care
"""

FISH = r"""# fish completion for kubecare; load with: kubecare completion fish | source
function __kubecare_complete
    set -l tokens (commandline -opc)
    set -l out ($tokens[1] __complete $tokens[2..-1] (commandline -ct) 2>/dev/null)
    printf '%s\n' $out[1..-2]
end
complete -c kubecare -f -a '(__kubecare_complete)'
complete -c kubectl-care -f -a '(__kubecare_complete)'
"""


def register(subs: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subs.add_parser(
        "completion",
        help="print the shell completion script (bash, zsh or fish)",
        description="Load it with: source <(kubecare completion bash)  (zsh alike; fish: | source)",
    )
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(
        handler=lambda args: print({"bash": BASH, "zsh": ZSH, "fish": FISH}[args.shell], end="")
    )


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(action, argparse.BooleanOptionalAction)


def candidates(
    root: argparse.ArgumentParser, before: Sequence[str], current: str
) -> tuple[list[str], int]:
    """Completions for ``current`` after the words ``before`` (pure but for cluster lookups)."""
    parser = root
    flags: dict[str, str] = {}
    positionals: list[str] = []
    pending: argparse.Action | None = None
    pending_flag = ""
    for word in before:
        if pending is not None:
            flags[pending_flag] = word
            pending = None
            continue
        if word.startswith("-") and word != "-":
            name, eq, value = word.partition("=")
            action = _option_actions(parser).get(name)
            if action is not None and _takes_value(action):
                if eq:
                    flags[name] = value
                else:
                    pending, pending_flag = action, name
            continue
        sub = _subcommands(parser).get(word)
        if sub is not None and not positionals:
            parser = sub
            continue
        positionals.append(word)
    if pending is not None:
        return _values(pending, pending_flag, current, parser, flags)
    if current.startswith("-"):
        options = sorted(
            s for s in _option_actions(parser) if s.startswith("--") or len(current) <= 2
        )
        return [o for o in options if o.startswith(current)], NO_FILES
    subs = _subcommands(parser)
    if subs and not positionals:
        return sorted(n for n in subs if n.startswith(current) and not n.startswith("_")), NO_FILES
    defaults = parser._defaults
    if defaults.get("completes_nodes"):
        if parser.prog.endswith("maintain") and positionals:
            return [], NO_FILES
        return [n for n in _cluster_nodes(flags) if n.startswith(current)], NO_FILES
    if parser.prog.endswith(("node-down", "node-up")):
        return [n for n in _sandbox_nodes(flags) if n.startswith(current)], NO_FILES
    if parser.prog.endswith("sandbox logs"):
        return [n for n in _sandbox_components(flags) if n.startswith(current)], NO_FILES
    for action in parser._actions:
        if (
            not action.option_strings
            and action.choices
            and not isinstance(action, argparse._SubParsersAction)
        ):
            return [str(c) for c in action.choices if str(c).startswith(current)], NO_FILES
    return [], NO_FILES


def _values(
    action: argparse.Action,
    flag: str,
    current: str,
    parser: argparse.ArgumentParser,
    flags: dict[str, str],
) -> tuple[list[str], int]:
    if action.choices:
        return [str(c) for c in action.choices if str(c).startswith(current)], NO_FILES
    if flag in FILE_FLAGS:
        return [], 0  # let the shell complete file names
    if flag == "--context":
        return [c for c in _contexts(flags) if c.startswith(current)], NO_FILES
    if flag == "--name" and "sandbox" in parser.prog:
        return [n for n in _sandbox_names() if n.startswith(current)], NO_FILES
    if flag in ("-l", "--selector", "--pod-selector"):
        return [], NO_FILES | NO_SPACE
    return [], NO_FILES


def _contexts(flags: dict[str, str]) -> list[str]:
    try:
        from kubecare.kube.config import _read, kubeconfig_paths, merge_kubeconfigs

        paths = kubeconfig_paths(flags.get("--kubeconfig"))
        merged = merge_kubeconfigs([(p, _read(p)) for p in paths])
        return [str(c.get("name")) for c in merged["contexts"]]
    except Exception:  # completion is silent on failure
        return []


def _cluster_nodes(flags: dict[str, str]) -> list[str]:
    """Node names, by one metadata-only list call with short timeouts; [] on any failure."""
    try:
        import asyncio
        import os

        from kubecare.kube import ClientOptions, Kube

        os.environ["KUBECARE_NONINTERACTIVE"] = "1"  # an exec plugin must not prompt during TAB

        async def names() -> list[str]:
            opts = ClientOptions(
                kubeconfig=flags.get("--kubeconfig"),
                context=flags.get("--context"),
                connect_timeout=1.0,
                request_timeout=2.0,
            )
            async with Kube(opts) as kube:
                doc = await kube.get_json(
                    "/api/v1/nodes",
                    accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json",
                )
            return sorted(i["metadata"]["name"] for i in doc.get("items") or [])

        return asyncio.run(names())
    except Exception:  # completion is silent on failure
        return []


def _sandbox_names() -> list[str]:
    try:
        from kubecare.sandbox.state import list_sandboxes

        return list_sandboxes()
    except Exception:
        return []


def _sandbox_state(flags: dict[str, str]) -> dict[str, object]:
    import json

    from kubecare.sandbox.state import state_root

    try:
        raw = json.loads(
            (state_root() / flags.get("--name", "kubecare") / "state.json").read_text()
        )
        return raw if isinstance(raw, dict) else {}
    except (OSError, ValueError):
        return {}


def _sandbox_nodes(flags: dict[str, str]) -> list[str]:
    return [str(n) for n in _sandbox_state(flags).get("nodes") or []]  # type: ignore[attr-defined]


def _sandbox_components(flags: dict[str, str]) -> list[str]:
    return [str(n) for n in _sandbox_state(flags).get("components") or {}]  # type: ignore[attr-defined]


def complete(root: argparse.ArgumentParser, words: Sequence[str]) -> int:
    """``__complete WORDS... CURRENT``: print the candidates, then ``:directive``."""
    before, current = list(words[:-1]), (words[-1] if words else "")
    found, directive = candidates(root, before, current)
    out = sys.stdout
    for c in found:
        out.write(c + "\n")
    out.write(f":{directive}\n")
    return 0


def plugin_main() -> int:
    """``kubectl_complete-care``: kubectl's plugin completion calls it with the words after
    ``kubectl care`` and the word being completed."""
    from kubecare.cli.app import build_parser

    return complete(build_parser(), sys.argv[1:])
