"""Building through the real Go toolchain fails clearly; `kubectl care` runs kubecare as a plugin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubecare.errors import BuildError
from kubecare.sandbox import Sandbox
from kubecare.sandbox.binaries import Artifact, build_artifact, find_kubectl

pytestmark = pytest.mark.e2e


def test_a_failed_go_build_names_the_step_and_shows_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECARE_CACHE_DIR", str(tmp_path))
    steps: list[str] = []
    with pytest.raises(BuildError) as info:
        build_artifact(Artifact("kwok", "0.0.999", ("kwok",)), steps.append)
    message = info.value.message
    assert "sandbox build step 'resolve kwok v0.0.999 modules (go mod tidy)' failed" in message
    assert "v0.0.999" in message.splitlines()[1]  # go's own words about the missing version
    assert "kubecare sandbox build" in message  # what to try
    assert steps == ["resolve kwok v0.0.999 modules (go mod tidy)"]
    assert not (
        tmp_path / "bin" / "kwok-v0.0.999"
    ).exists()  # nothing half-built is left as "built"


def test_kubectl_runs_kubecare_as_the_care_plugin(sandbox: Sandbox) -> None:
    kubectl = find_kubectl()
    assert kubectl is not None
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        KUBECONFIG=str(sandbox.kubeconfig),
    )
    res = subprocess.run(
        [str(kubectl), "care", "nodes", "-o", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)) == 4
