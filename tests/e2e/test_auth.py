"""Every way a kubeconfig can authenticate, against the sandbox's real apiserver, as a new user
would try them: exec plugins (v1, v1beta1, expired and refreshed credentials), tokens, token
files, client certificates as files and data, CA file and data, insecure-skip-tls-verify,
tls-server-name, proxy-url, and the TLS failures kubectl explains."""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kubecare.kube import Kube
from kubecare.sandbox import Sandbox

from ..connectproxy import ConnectProxy
from ..faultproxy import FaultProxy
from .accounts import kubeconfig_with_user, service_account, token_for
from .conftest import run_cli

pytestmark = pytest.mark.e2e

READER = [{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}]

# An exec credential plugin: prints the token of $TOKEN_FILE (or "bad" on its first run when
# $FIRST_BAD is set), records KUBERNETES_EXEC_INFO and counts its runs in $STATE_DIR.
PLUGIN = """
import json, os, pathlib, sys
state = pathlib.Path(os.environ["STATE_DIR"])
runs = int((state / "runs").read_text()) if (state / "runs").exists() else 0
(state / "runs").write_text(str(runs + 1))
(state / "exec-info").write_text(os.environ.get("KUBERNETES_EXEC_INFO", ""))
token = pathlib.Path(os.environ["TOKEN_FILE"]).read_text()
if os.environ.get("FIRST_BAD") and runs == 0:
    token = "bad"
status = {"token": token}
if os.environ.get("EXPIRES"):
    status["expirationTimestamp"] = os.environ["EXPIRES"]
print(json.dumps({"apiVersion": sys.argv[1], "kind": "ExecCredential", "status": status}))
"""


@pytest.fixture
async def reader_token(kube: Kube, namespace: str) -> AsyncIterator[str]:
    async with service_account(kube, namespace, READER) as name:
        yield (await token_for(kube, namespace, name))["token"]


def exec_user(tmp_path: Path, token: str, api_version: str, **env: str) -> dict[str, Any]:
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "token").write_text(token)
    variables = {"STATE_DIR": str(tmp_path), "TOKEN_FILE": str(tmp_path / "token"), **env}
    cfg: dict[str, Any] = {
        "apiVersion": api_version,
        "command": sys.executable,
        "args": [str(tmp_path / "plugin.py"), api_version],
        "env": [{"name": k, "value": v} for k, v in variables.items()],
    }
    return {"exec": cfg}


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


async def nodes_with(kubeconfig: Path) -> Any:
    return await asyncio.to_thread(run_cli, "nodes", "-o", "json", kubeconfig=kubeconfig)


async def test_an_exec_plugin_in_v1_gets_the_cluster_info_client_go_gives_it(
    sandbox: Sandbox, reader_token: str, tmp_path: Path
) -> None:
    user = exec_user(tmp_path, reader_token, "client.authentication.k8s.io/v1")
    user["exec"].update(interactiveMode="Never", provideClusterInfo=True)
    kc = kubeconfig_with_user(sandbox, user, tmp_path / "kc")
    res = await nodes_with(kc)
    assert res.returncode == 0, res.stderr
    assert "control-plane" in {n["name"] for n in json.loads(res.stdout)}
    ca = base64.b64encode(sandbox.pki.ca.cert.read_bytes()).decode()
    server = sandbox.load().apiserver
    assert (tmp_path / "exec-info").read_text() == (
        '{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":'
        f'{{"cluster":{{"server":"{server}","certificate-authority-data":"{ca}","config":null}},'
        '"interactive":false}}\n'
    )


async def test_an_exec_plugin_in_v1beta1_without_interactive_mode(
    sandbox: Sandbox, reader_token: str, tmp_path: Path
) -> None:
    user = exec_user(tmp_path, reader_token, "client.authentication.k8s.io/v1beta1")
    res = await nodes_with(kubeconfig_with_user(sandbox, user, tmp_path / "kc"))
    assert res.returncode == 0, res.stderr
    assert (
        (tmp_path / "exec-info")
        .read_text()
        .startswith(
            '{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1beta1","spec":{"interactive":false}}'
        )
    )


async def test_a_rejected_credential_is_fetched_again_once(
    sandbox: Sandbox, reader_token: str, tmp_path: Path
) -> None:
    user = exec_user(
        tmp_path,
        reader_token,
        "client.authentication.k8s.io/v1",
        FIRST_BAD="1",
        EXPIRES="2099-01-01T00:00:00Z",
    )
    user["exec"]["interactiveMode"] = "Never"
    res = await nodes_with(kubeconfig_with_user(sandbox, user, tmp_path / "kc"))
    assert res.returncode == 0, res.stderr
    assert runs(tmp_path) == 2  # the first token was refused with 401, the plugin ran again


@pytest.mark.parametrize(
    ("expires", "most"), [("2099-01-01T00:00:00Z", 1), ("2001-01-01T00:00:00Z", None)]
)
async def test_a_credential_is_reused_until_its_expiration(
    sandbox: Sandbox, reader_token: str, tmp_path: Path, expires: str, most: int | None
) -> None:
    user = exec_user(tmp_path, reader_token, "client.authentication.k8s.io/v1", EXPIRES=expires)
    user["exec"]["interactiveMode"] = "Never"
    res = await nodes_with(kubeconfig_with_user(sandbox, user, tmp_path / "kc"))
    assert res.returncode == 0, res.stderr
    if most is not None:
        assert runs(tmp_path) == most  # nodes + pods lists, one plugin run
    else:
        assert runs(tmp_path) >= 2  # already expired: fetched again for the next request


@pytest.mark.parametrize(
    ("exec_cfg", "message"),
    [
        (
            {
                "command": "no-such-plugin",
                "installHint": "install it with: apt install no-such-plugin",
            },
            "exec plugin 'no-such-plugin' not found (context 'sb'); install it with: apt install no-such-plugin",
        ),
        ({"command": "false"}, "exec plugin 'false' failed with exit code 1"),
        ({"command": "true"}, "did not print an ExecCredential (not JSON)"),
    ],
)
async def test_a_broken_exec_plugin_is_one_clear_line(
    sandbox: Sandbox, tmp_path: Path, exec_cfg: dict[str, str], message: str
) -> None:
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "interactiveMode": "Never",
            **exec_cfg,
        }
    }
    res = await nodes_with(kubeconfig_with_user(sandbox, user, tmp_path / "kc"))
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


async def test_a_removed_auth_provider_names_its_exec_plugin(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    user = {"auth-provider": {"name": "gcp", "config": {}}}
    res = await nodes_with(kubeconfig_with_user(sandbox, user, tmp_path / "kc"))
    assert res.returncode == 1 and "gke-gcloud-auth-plugin" in res.stderr


async def test_token_and_token_file(sandbox: Sandbox, reader_token: str, tmp_path: Path) -> None:
    assert (
        await nodes_with(kubeconfig_with_user(sandbox, {"token": reader_token}, tmp_path / "a"))
    ).returncode == 0
    (tmp_path / "token").write_text(reader_token + "\n")
    # A relative tokenFile is resolved against the kubeconfig's own directory, as kubectl does.
    res = await nodes_with(kubeconfig_with_user(sandbox, {"tokenFile": "token"}, tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    bad = await nodes_with(kubeconfig_with_user(sandbox, {"token": "nope"}, tmp_path / "c"))
    assert bad.returncode == 1 and "unauthorized" in bad.stderr


async def test_client_certificates_as_files_and_as_data(sandbox: Sandbox, tmp_path: Path) -> None:
    admin = sandbox.pki.pair("admin")
    files = {"client-certificate": str(admin.cert), "client-key": str(admin.key)}
    assert (await nodes_with(kubeconfig_with_user(sandbox, files, tmp_path / "a"))).returncode == 0
    data = {
        "client-certificate-data": base64.b64encode(admin.cert.read_bytes()).decode(),
        "client-key-data": base64.b64encode(admin.key.read_bytes()).decode(),
    }
    res = await nodes_with(kubeconfig_with_user(sandbox, data, tmp_path / "b"))
    assert res.returncode == 0, res.stderr


def edit_cluster(kubeconfig: Path, **changes: Any) -> Path:
    import yaml

    doc = yaml.safe_load(kubeconfig.read_text())
    cluster = doc["clusters"][0]["cluster"]
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            cluster.pop(key, None)
        else:
            cluster[key] = value
    kubeconfig.write_text(yaml.safe_dump(doc))
    return kubeconfig


async def test_ca_as_a_file_insecure_and_an_unknown_authority(
    sandbox: Sandbox, reader_token: str, tmp_path: Path
) -> None:
    user = {"token": reader_token}
    as_file = edit_cluster(
        kubeconfig_with_user(sandbox, user, tmp_path / "a"),
        certificate_authority_data=None,
        certificate_authority=str(sandbox.pki.ca.cert),
    )
    assert (await nodes_with(as_file)).returncode == 0
    insecure = edit_cluster(
        kubeconfig_with_user(sandbox, user, tmp_path / "b"),
        certificate_authority_data=None,
        insecure_skip_tls_verify=True,
    )
    res = await nodes_with(insecure)
    assert res.returncode == 0, res.stderr
    other_ca = base64.b64encode(sandbox.pki.etcd_ca.cert.read_bytes()).decode()
    wrong = edit_cluster(
        kubeconfig_with_user(sandbox, user, tmp_path / "c"), certificate_authority_data=other_ca
    )
    res = await nodes_with(wrong)
    assert res.returncode == 1
    assert "TLS problem" in res.stderr and "signed by an unknown authority" in res.stderr
    assert "unreachable" not in res.stderr


async def test_a_certificate_not_valid_for_the_address_is_a_tls_problem_and_tls_server_name_fixes_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    async with FaultProxy(sandbox, host="127.0.0.2") as proxy:
        res = await nodes_with(proxy.kubeconfig)
        assert res.returncode == 1
        assert "TLS problem" in res.stderr and "not valid for" in res.stderr
        assert "127.0.0.2" in res.stderr and "tls-server-name" in res.stderr
        fixed = edit_cluster(proxy.kubeconfig, tls_server_name="kubernetes")
        ok = await nodes_with(fixed)
        assert ok.returncode == 0, ok.stderr


async def test_proxy_url_is_used(sandbox: Sandbox, reader_token: str, tmp_path: Path) -> None:
    async with ConnectProxy() as tunnel:
        kc = edit_cluster(
            kubeconfig_with_user(sandbox, {"token": reader_token}, tmp_path / "kc"),
            proxy_url=tunnel.url,
        )
        res = await nodes_with(kc)
        assert res.returncode == 0, res.stderr
        assert tunnel.tunnels and tunnel.tunnels[0].startswith("127.0.0.1:")


async def test_global_flags_work_after_the_command_as_kubectls_do(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    import subprocess

    base = [sys.executable, "-m", "kubecare.cli.app"]
    res = subprocess.run(
        [*base, "nodes", "--kubeconfig", str(sandbox.kubeconfig), "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    ctx = f"kubecare-{sandbox.name}"
    plan = subprocess.run(
        [
            *base,
            "drain",
            "worker-1",
            "--ignore-daemonsets",
            "--plan",
            "--context",
            ctx,
            "--kubeconfig",
            str(sandbox.kubeconfig),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert plan.returncode == 0, plan.stderr
    wrong = subprocess.run(
        [*base, "nodes", "--context", "nope", "--kubeconfig", str(sandbox.kubeconfig)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert wrong.returncode == 1 and "context 'nope' not found" in wrong.stderr
