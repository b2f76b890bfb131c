"""Shell completion, driven as the shells drive it: bash's completion function on a real command
line, and kubectl's plugin completion (`kubectl care <TAB>`), against the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubecare.sandbox import Sandbox
from kubecare.sandbox.binaries import find_kubectl

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def env_for(sandbox: Sandbox) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "KUBECONFIG": str(sandbox.kubeconfig),
    }


def bash_complete(sandbox: Sandbox, *words: str) -> list[str]:
    """COMPREPLY of kubecare's bash completion for the command line ``words`` (the last one is
    the word being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    script = f"""
source <(kubecare completion bash)
COMP_WORDS=({quoted})
COMP_CWORD={len(words) - 1}
_kubecare_complete
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    res = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        env=env_for(sandbox),
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line]


def test_bash_completes_commands_flags_and_node_names(sandbox: Sandbox) -> None:
    assert bash_complete(sandbox, "kubecare", "dr") == ["drain"]
    assert set(bash_complete(sandbox, "kubecare", "drain", "wor")) == {
        "worker-1",
        "worker-2",
        "worker-3",
    }
    assert bash_complete(sandbox, "kubecare", "drain", "--ignore-d") == ["--ignore-daemonsets"]
    assert bash_complete(sandbox, "kubecare", "drain", "worker-1", "--dry-run", "s") == ["server"]
    assert bash_complete(sandbox, "kubecare", "sandbox", "node-") == ["node-down", "node-up"]
    assert "control-plane" in bash_complete(sandbox, "kubecare", "cordon", "")
    assert bash_complete(sandbox, "kubecare", "-n", "x", "uncordon", "control") == ["control-plane"]


def test_completion_is_silent_when_the_cluster_is_unreachable(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    bad = tmp_path / "kc"
    bad.write_text(
        sandbox.kubeconfig.read_text().replace(sandbox.load().apiserver, "https://127.0.0.1:1")
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubecare.cli.app",
            "__complete",
            "--kubeconfig",
            str(bad),
            "drain",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0 and res.stdout == ":4\n" and res.stderr == ""


def test_kubectl_completes_the_plugin_through_kubectl_complete_care(sandbox: Sandbox) -> None:
    res = subprocess.run(
        [str(find_kubectl()), "__complete", "care", "drain", "wor"],
        capture_output=True,
        text=True,
        env=env_for(sandbox),
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert {"worker-1", "worker-2", "worker-3"} <= set(lines)
    assert lines[-1].startswith(":")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_other_shells_get_a_script(shell: str) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "kubecare.cli.app", "completion", shell],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0 and "__complete" in res.stdout
