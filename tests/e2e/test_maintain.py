"""`kubecare maintain`: drain → command → Ready (→ new boot ID) → uncordon, and every way it stops short."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from kubecare.kube import Kube
from kubecare.nodes.cordon import set_unschedulable
from kubecare.sandbox import Sandbox

from .conftest import cli_argv, run_cli
from .scenarios import roles_on
from .workloads import Pool, apply, cordoned, deployment, wait_running

pytestmark = pytest.mark.e2e


def kubecare_sh(sandbox: Sandbox, *args: str) -> str:
    return shlex.join(cli_argv(*args, "--name", sandbox.name))


def outage_command(sandbox: Sandbox, *, reboot: bool = True, come_back: bool = True) -> list[str]:
    """A maintenance command that takes $NODE NotReady (its kwok stops) and, optionally, back."""
    down = kubecare_sh(sandbox, "sandbox", "node-down", "$NODE", "--wait").replace(
        "'$NODE'", '"$NODE"'
    )
    up = kubecare_sh(
        sandbox, "sandbox", "node-up", "$NODE", *(["--reboot"] if reboot else [])
    ).replace("'$NODE'", '"$NODE"')
    return ["sh", "-c", f"{down} && {up}" if come_back else down]


async def boot_id(kube: Kube, node: str) -> str:
    return str(
        (await kube.get_json(f"/api/v1/nodes/{node}"))["status"]["nodeInfo"].get("bootID", "")
    )


async def start_web(kube: Kube, namespace: str, pool: Pool) -> None:
    await apply(kube, namespace, deployment("web", 3, pool.pod_spec()))
    await wait_running(kube, namespace, 3)
    await set_unschedulable(kube, pool.nodes[1], False)


async def test_maintain_drains_reboots_waits_and_uncordons(
    sandbox: Sandbox, kube: Kube, namespace: str, pool: Pool
) -> None:
    await start_web(kube, namespace, pool)
    node = pool.nodes[0]
    old_boot = await boot_id(kube, node)
    res = await asyncio.to_thread(
        run_cli,
        "maintain",
        node,
        "--expect-reboot",
        "--ready-timeout",
        "90s",
        "-o",
        "json",
        "--",
        *outage_command(sandbox),
        kubeconfig=sandbox.kubeconfig,
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["exit_code"] == 0 and report["uncordoned"] is True
    assert report["boot_id_after"] != old_boot == report["boot_id_before"]
    assert not await cordoned(kube, node)
    assert await roles_on(kube, namespace, node) == []  # its pods were moved before the work
    assert await roles_on(kube, namespace, pool.nodes[1]) == ["web"] * 3
    assert "uncordoned" in res.stderr


async def test_a_failing_command_leaves_the_node_cordoned(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:
    res = run_cli(
        "maintain", pool.nodes[0], "--", "sh", "-c", "exit 3", kubeconfig=sandbox.kubeconfig
    )
    assert res.returncode == 1
    assert f'maintenance command exited 3; node "{pool.nodes[0]}" stays cordoned' in res.stderr
    assert await cordoned(kube, pool.nodes[0])


async def test_a_node_that_does_not_come_back_stays_cordoned(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:
    node = pool.nodes[0]
    try:
        res = await asyncio.to_thread(
            run_cli,
            "maintain",
            node,
            "--ready-timeout",
            "3s",
            "--",
            *outage_command(sandbox, come_back=False),
            kubeconfig=sandbox.kubeconfig,
            timeout=120,
        )
        assert res.returncode == 1
        assert f'node "{node}" is not Ready after 3s; it stays cordoned' in res.stderr
        assert await cordoned(kube, node)
    finally:
        await sandbox.node_up(node)


async def test_expect_reboot_without_a_reboot_is_not_success(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:
    res = run_cli(
        "maintain",
        pool.nodes[0],
        "--expect-reboot",
        "--ready-timeout",
        "2s",
        "--",
        "true",
        kubeconfig=sandbox.kubeconfig,
    )
    assert res.returncode == 1
    assert "did not reboot (boot ID unchanged)" in res.stderr
    assert await cordoned(kube, pool.nodes[0])


def test_maintain_needs_a_command(sandbox: Sandbox) -> None:
    res = run_cli("maintain", "worker-1", kubeconfig=sandbox.kubeconfig)
    assert res.returncode == 2


@pytest.fixture
async def ssh_server(tmp_path: Path) -> AsyncIterator[tuple[int, Path, Path]]:
    """A real SSH server on loopback (asyncssh) that runs each command with sh; yields
    (port, client key, known_hosts)."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "id_ed25519"
    client_key.write_private_key(str(key_file))
    key_file.chmod(0o600)
    authorized = tmp_path / "authorized_keys"
    client_key.write_public_key(str(authorized))

    async def handle(proc: asyncssh.SSHServerProcess[str]) -> None:
        child = await asyncio.create_subprocess_shell(
            proc.command or "true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await child.communicate()
        proc.stdout.write(out.decode())
        proc.exit(child.returncode or 0)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=str(authorized),
        process_factory=handle,
    )
    port = server.sockets[0].getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}")
    try:
        yield port, key_file, known
    finally:
        server.close()
        await server.wait_closed()


async def maintain_over_ssh(
    sandbox: Sandbox, node: str, port: int, key: Path, known_hosts: Path, *command: str
) -> subprocess.CompletedProcess[str]:
    # In a thread: the SSH server answers from this test's event loop.
    return await asyncio.to_thread(
        run_cli,
        "maintain",
        node,
        "--ssh",
        f"root@127.0.0.1:{port}",
        "--ssh-key",
        str(key),
        "--known-hosts",
        str(known_hosts),
        "--",
        *command,
        kubeconfig=sandbox.kubeconfig,
        timeout=120,
    )


async def test_maintain_runs_the_command_on_the_node_over_ssh(
    sandbox: Sandbox, kube: Kube, pool: Pool, ssh_server: tuple[int, Path, Path], tmp_path: Path
) -> None:
    port, key, known = ssh_server
    marker = tmp_path / "ran-on"
    res = await maintain_over_ssh(
        sandbox, pool.nodes[0], port, key, known, "sh", "-c", f'echo "$NODE" > {marker}'
    )
    assert res.returncode == 0, res.stderr
    assert marker.read_text().strip() == pool.nodes[0]
    assert not await cordoned(kube, pool.nodes[0])


async def test_an_unknown_host_key_is_refused(
    sandbox: Sandbox, kube: Kube, pool: Pool, ssh_server: tuple[int, Path, Path], tmp_path: Path
) -> None:
    port, key, _ = ssh_server
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    res = await maintain_over_ssh(sandbox, pool.nodes[0], port, key, empty, "true")
    assert res.returncode == 1
    assert f"ssh to root@127.0.0.1:{port} failed" in res.stderr
    assert await cordoned(kube, pool.nodes[0])  # the work never ran: the node stays out of service


async def test_maintain_holds_the_lock_until_the_node_is_back(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:

    first, second = pool.nodes
    await set_unschedulable(kube, second, False)
    work = subprocess.Popen(
        cli_argv("maintain", first, "--", "sleep", "4", kubeconfig=sandbox.kubeconfig),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    await asyncio.sleep(2)  # the drain is done; the "work" is running
    res = await asyncio.to_thread(
        run_cli, "drain", second, "--ignore-daemonsets", kubeconfig=sandbox.kubeconfig, timeout=60
    )
    _, err = work.communicate(timeout=60)
    assert work.returncode == 0, err
    assert res.returncode == 0, res.stderr
    assert "waiting for the maintenance lock, held by " in res.stderr and f"/{first}" in res.stderr
    assert not await cordoned(kube, first)
    await set_unschedulable(kube, second, False)


async def test_the_commands_output_goes_to_stderr_and_the_report_never_to_stdout(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:
    res = run_cli(
        "maintain",
        pool.nodes[0],
        "-o",
        "json",
        "--",
        "sh",
        "-c",
        "echo hello-from-the-node; echo on-stderr >&2",
        kubeconfig=sandbox.kubeconfig,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)  # stdout is only the JSON report
    assert report["output_tail"] == ["hello-from-the-node", "on-stderr"]
    assert "hello-from-the-node" in res.stderr
    assert not await cordoned(kube, pool.nodes[0])


async def test_a_process_left_in_the_background_does_not_hold_maintain(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:
    # `agent &` keeps the output pipe open after the command itself has exited
    t0 = time.monotonic()
    res = run_cli(
        "maintain",
        pool.nodes[0],
        "--",
        "sh",
        "-c",
        "sleep 8 & echo started",
        kubeconfig=sandbox.kubeconfig,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - t0 < 8  # not waiting for the background sleep
    assert "started" in res.stderr and "still holds its output" in res.stderr
    assert not await cordoned(kube, pool.nodes[0])


async def test_a_node_cordoned_before_maintain_stays_cordoned(
    sandbox: Sandbox, kube: Kube, pool: Pool
) -> None:
    """Someone cordoned it for a reason (issue 19, item 15): maintain does its work and leaves
    the node cordoned, saying so; its own cordon, left by a run that stopped short, it lifts."""
    node = pool.nodes[1]  # the pool's second node starts cordoned
    assert await cordoned(kube, node)
    res = await asyncio.to_thread(
        run_cli, "maintain", node, "-o", "json", "--", "true",
        kubeconfig=sandbox.kubeconfig, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["left_cordoned"] is True and report["uncordoned"] is False
    assert f"node/{node} stays cordoned: it was cordoned before maintain began" in res.stderr
    assert await cordoned(kube, node)

    # A run that stops short (the command fails) leaves its own cordon; the rerun lifts it.
    other = pool.nodes[0]
    failed = run_cli("maintain", other, "--", "sh", "-c", "exit 3", kubeconfig=sandbox.kubeconfig)
    assert failed.returncode == 1 and await cordoned(kube, other)
    again = run_cli("maintain", other, "-o", "json", "--", "true", kubeconfig=sandbox.kubeconfig)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["uncordoned"] is True and not await cordoned(kube, other)
    annotations = (await kube.get_json(f"/api/v1/nodes/{other}"))["metadata"].get("annotations")
    assert "kubecare.io/cordoned-by-maintain" not in (annotations or {})
