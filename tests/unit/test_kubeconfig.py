from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubecare.errors import ConfigError
from kubecare.kube.config import ClientOptions, load_connection, merge_kubeconfigs


def doc(
    name: str, server: str, current: str | None = None, ca: str | None = None
) -> dict[str, object]:
    cluster: dict[str, object] = {"server": server}
    if ca:
        cluster["certificate-authority"] = ca
    d: dict[str, object] = {
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": {"token": "t"}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }
    if current:
        d["current-context"] = current
    return d


def test_first_file_wins_for_names_and_current_context(tmp_path: Path) -> None:
    merged = merge_kubeconfigs(
        [
            (tmp_path / "a", doc("shared", "https://a", current="shared")),
            (
                tmp_path / "b",
                doc("shared", "https://b", current="other")
                | {
                    "contexts": [
                        {"name": "shared", "context": {"cluster": "shared"}},
                        {"name": "extra", "context": {"cluster": "shared"}},
                    ]
                },
            ),
        ]
    )
    assert merged["current-context"] == "shared"
    assert [c["cluster"]["server"] for c in merged["clusters"]] == ["https://a"]
    assert [c["name"] for c in merged["contexts"]] == ["shared", "extra"]


def test_relative_paths_resolve_against_their_own_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    merged = merge_kubeconfigs([(sub / "config", doc("c", "https://x", ca="ca.crt"))])
    assert merged["clusters"][0]["cluster"]["certificate-authority"] == str(
        (sub / "ca.crt").resolve()
    )


def test_kubeconfig_env_list_is_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text(yaml.safe_dump(doc("one", "https://one")))
    b.write_text(yaml.safe_dump(doc("two", "https://two", current="two")))
    monkeypatch.setenv("KUBECONFIG", f"{a}:{tmp_path / 'missing'}:{b}")
    cfg = load_connection(ClientOptions())
    assert cfg.context_name == "two" and cfg.server == "https://two"
    assert load_connection(ClientOptions(context="one")).server == "https://one"
    assert load_connection(ClientOptions(context="one", namespace="ns1")).namespace == "ns1"


@pytest.mark.parametrize(
    ("content", "context", "message"),
    [
        ("clusters: [", None, "is not valid YAML"),
        ("- a\n- b\n", None, "expected a mapping"),
        (yaml.safe_dump(doc("x", "https://x")), None, "no current-context"),
        (yaml.safe_dump(doc("x", "https://x", current="x")), "y", "context 'y' not found"),
    ],
)
def test_bad_kubeconfigs_say_what_is_wrong(
    tmp_path: Path, content: str, context: str | None, message: str
) -> None:
    path = tmp_path / "kc"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_connection(ClientOptions(kubeconfig=str(path), context=context))


def test_missing_kubeconfig_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_connection(ClientOptions(kubeconfig=str(tmp_path / "nope")))


def test_in_cluster_without_service_env_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("t")
    (sa / "namespace").write_text("ns")
    monkeypatch.setenv("KUBECARE_SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr("kubecare.kube.config.DEFAULT_KUBECONFIG", tmp_path / "none")
    with pytest.raises(ConfigError, match=r"needs \$KUBERNETES_SERVICE_HOST"):
        load_connection(ClientOptions())


def one_user(
    user: dict[str, object], cluster: dict[str, object] | None = None
) -> dict[str, object]:
    return {
        "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"auth-provider": {"name": "gcp"}}, "gke-gcloud-auth-plugin"),
        ({"auth-provider": {"name": "oidc"}}, "kubelogin"),
        (
            {"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1alpha1"}},
            "not supported",
        ),
        (
            {"exec": {"command": "x", "apiVersion": "client.authentication.k8s.io/v1"}},
            "interactiveMode must be set",
        ),
        (
            {
                "exec": {
                    "command": "x",
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "interactiveMode": "Sometimes",
                }
            },
            "must be Never, IfAvailable or Always",
        ),
        ({"exec": {"apiVersion": "client.authentication.k8s.io/v1"}}, "exec needs a command"),
        (
            {"client-certificate": "/nonexistent/cert.pem"},
            "cannot read client-certificate /nonexistent",
        ),
    ],
)
def test_users_kubectl_would_refuse_are_refused_with_the_fix(
    tmp_path: Path, user: dict[str, object], message: str
) -> None:
    path = tmp_path / "kc"
    path.write_text(yaml.safe_dump(one_user(user)))
    with pytest.raises(ConfigError, match=message):
        load_connection(ClientOptions(kubeconfig=str(path)))


def test_v1beta1_exec_defaults_to_if_available_as_client_go_does(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    exec_cfg = {
        "command": "plugin",
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "args": ["a"],
    }
    path.write_text(yaml.safe_dump(one_user({"exec": exec_cfg})))
    conn = load_connection(ClientOptions(kubeconfig=str(path)))
    assert conn.exec is not None and conn.exec.interactive_mode == "IfAvailable"
    assert conn.exec.args == ("a",)


def test_cluster_options_are_read(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    cluster = {
        "server": "https://10.0.0.1:6443/",
        "insecure-skip-tls-verify": True,
        "tls-server-name": "kubernetes",
        "proxy-url": "http://127.0.0.1:3128",
    }
    path.write_text(yaml.safe_dump(one_user({"token": "t"}, cluster)))
    conn = load_connection(ClientOptions(kubeconfig=str(path)))
    assert (conn.server, conn.insecure, conn.tls_server_name, conn.proxy_url, conn.token) == (
        "https://10.0.0.1:6443",
        True,
        "kubernetes",
        "http://127.0.0.1:3128",
        "t",
    )


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"kind": "Secret"}', "did not print an ExecCredential"),
        (
            b'{"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1beta1", "status": {"token": "t"}}',
            "expected 'client.authentication.k8s.io/v1'",
        ),
        (
            b'{"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1", "status": {}}',
            "neither a token",
        ),
        (
            b'{"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1", "status": {"clientCertificateData": "x"}}',
            "neither a token",
        ),
        (
            b'{"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1", "status": {"token": "t", "expirationTimestamp": "soon"}}',
            "malformed expirationTimestamp",
        ),
    ],
)
def test_bad_exec_plugin_output_is_one_clear_error(stdout: bytes, message: str) -> None:
    from kubecare.kube.auth import parse_exec_credential
    from kubecare.kube.config import ExecConfig

    with pytest.raises(ConfigError, match=message):
        parse_exec_credential(stdout, ExecConfig(command="plugin"))


def test_exec_credentials_carry_their_expiry() -> None:
    from kubecare.kube.auth import parse_exec_credential
    from kubecare.kube.config import ExecConfig

    cred = parse_exec_credential(
        b'{"kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1",'
        b' "status": {"token": "t", "expirationTimestamp": "2030-01-01T00:00:00Z"}}',
        ExecConfig(command="plugin"),
    )
    assert cred.token == "t" and cred.expires == 1893456000.0


def test_an_impersonating_user_is_refused_not_silently_ignored(tmp_path: Path) -> None:
    """kubectl impersonates (``as:``); kubecare cannot, and acting as the real user instead
    would do what that user may. The shape check lets the list-valued as-groups through."""
    doc = {
        "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t", "as": "bob", "as-groups": ["ops"]}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }
    path = tmp_path / "config"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="impersonates another user"):
        load_connection(ClientOptions(kubeconfig=str(path)))
    doc["users"][0]["user"]["as-groups"] = "ops"  # client-go: a list
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"users\[0\]\.user\.as-groups is not a list"):
        load_connection(ClientOptions(kubeconfig=str(path)))
