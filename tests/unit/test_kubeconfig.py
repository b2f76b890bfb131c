from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubecare.errors import ConfigError
from kubecare.kube.config import ClientOptions, load_config, merge_kubeconfigs


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
    cfg = load_config(ClientOptions())
    assert cfg.context_name == "two" and cfg.cluster.server == "https://two"
    assert load_config(ClientOptions(context="one")).cluster.server == "https://one"
    assert load_config(ClientOptions(context="one", namespace="ns1")).namespace == "ns1"


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
        load_config(ClientOptions(kubeconfig=str(path), context=context))


def test_missing_kubeconfig_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ClientOptions(kubeconfig=str(tmp_path / "nope")))


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
        load_config(ClientOptions())
