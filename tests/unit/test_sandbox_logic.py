from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from kubecare.durations import parse_duration
from kubecare.errors import UsageError
from kubecare.files import write_atomic
from kubecare.sandbox.binaries import (
    DEFAULT_KUBE_VERSION,
    ETCD_RELEASES,
    KUBE_VERSIONS,
    artifacts,
    etcd_release,
    etcd_version_for,
    kube_ldflags,
    minor_of,
    resolve_version,
    staging_replaces,
    wrapper_gomod,
)
from kubecare.sandbox.bootstrap import _lease_seconds
from kubecare.sandbox.nodes import KWOK_LABEL, NodeSpec, kwok_args, node_manifest
from kubecare.sandbox.pki import SandboxPKI, issue_clients, issue_node_client

RELEASE_GOMOD = """module k8s.io/kubernetes

go 1.26.0

require (
	k8s.io/api v0.0.0
	github.com/spf13/cobra v1.10.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/kube-aggregator => ./staging/src/k8s.io/kube-aggregator
)
"""


def test_two_consecutive_minors_newest_first() -> None:
    assert KUBE_VERSIONS[0] == DEFAULT_KUBE_VERSION
    assert minor_of(KUBE_VERSIONS[0]) == minor_of(KUBE_VERSIONS[1]) + 1


@pytest.mark.parametrize(
    ("given", "full"),
    [
        (None, KUBE_VERSIONS[0]),
        ("", KUBE_VERSIONS[0]),
        (f"v{KUBE_VERSIONS[1]}", KUBE_VERSIONS[1]),
        (KUBE_VERSIONS[1].rsplit(".", 1)[0], KUBE_VERSIONS[1]),
        ("v" + KUBE_VERSIONS[0].rsplit(".", 1)[0], KUBE_VERSIONS[0]),
    ],
)
def test_versions_resolve(given: str | None, full: str) -> None:
    assert resolve_version(given) == full


@pytest.mark.parametrize(
    ("tag", "release"),
    [
        ("3.7.0-0", "3.7.4"),  # kubeadm v1.37.2's DefaultEtcdVersion
        ("3.6.8-0", "3.6.16"),  # kubeadm v1.36.3's
        ("v3.6.1", "3.6.16"),
        ("3.7.4", "3.7.4"),
        ("3.5.21-0", None),  # a minor the sandbox does not build
        ("latest", None),
        ("", None),
    ],
)
def test_an_etcd_tag_runs_the_release_of_its_minor(tag: str, release: str | None) -> None:
    assert etcd_release(tag) == release


def test_each_kubernetes_version_builds_the_etcd_its_kubeadm_pins() -> None:
    from kubecare.versions.kubeadm import etcd_tag

    assert etcd_version_for("1.36.3") == "3.6.16" and etcd_version_for("1.37.2") == "3.7.4"
    for v in KUBE_VERSIONS:
        etcd = next(a for a in artifacts(v) if a.kind == "etcd")
        assert etcd.version == etcd_release(etcd_tag(minor_of(v)))
        # the release is of the tag's own minor, never another
        assert etcd.version.rsplit(".", 1)[0] == etcd_tag(minor_of(v)).rsplit(".", 1)[0]
    assert set(ETCD_RELEASES) == {"3.6", "3.7"}


def test_an_etcd_image_of_an_unbuilt_minor_is_refused_with_the_fix() -> None:
    from kubecare.sandbox.runner import resolve_binary
    from kubecare.sandbox.staticpods import ImageNotBuilt

    with pytest.raises(ImageNotBuilt, match=r"etcd:3\.5\.21-0 is not an etcd minor.*3\.6, 3\.7"):
        resolve_binary("etcd", "3.5.21-0")


@pytest.mark.parametrize("bad", ["1.20", "v2.0.0", "latest", "1.3"])
def test_unknown_versions_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError, match="unsupported Kubernetes version"):
        resolve_version(bad)


def test_staging_replaces_come_from_the_release_gomod() -> None:
    assert staging_replaces(RELEASE_GOMOD, "1.37.2") == [
        ("k8s.io/api", "v0.37.2"),
        ("k8s.io/client-go", "v0.37.2"),
        ("k8s.io/kube-aggregator", "v0.37.2"),
    ]


def test_wrapper_gomod_requires_and_replaces() -> None:
    text = wrapper_gomod(
        "x.local/w", [("k8s.io/kubernetes", "v1.37.2")], [("k8s.io/api", "v0.37.2")]
    )
    assert "\tk8s.io/kubernetes v1.37.2\n" in text
    assert "\tk8s.io/api => k8s.io/api v0.37.2\n" in text
    assert "replace" not in wrapper_gomod("x.local/w", [("a", "v1")])


def test_ldflags_set_both_version_packages() -> None:
    flags = kube_ldflags("1.36.3")
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {pkg}.gitVersion=v1.36.3" in flags
        assert f"-X {pkg}.gitMinor=36" in flags


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15s", 15),
        ("2m", 120),
        ("90", 90),
        ("0s", 0),
        (None, None),
        ("1m30s", 90),
        ("1h", 3600),
        ("1500ms", 1),
    ],
)
def test_durations(text: str | None, seconds: int | None) -> None:
    assert parse_duration(text, "--x") == seconds


@pytest.mark.parametrize("bad", ["-5s", "soon", "5x", "1m-3s", "s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(bad, "--x")


@pytest.mark.parametrize(("grace", "lease"), [(None, 40), (10, 10), (2, 4), (300, 40)])
def test_lease_is_renewed_well_within_the_grace_period(grace: int | None, lease: int) -> None:
    assert _lease_seconds(grace) == lease


def test_nodes_look_like_kubeadm_nodes() -> None:
    specs = [NodeSpec("control-plane", 0, True)] + [
        NodeSpec(f"worker-{i}", i, False) for i in range(1, 300)
    ]
    assert len({s.ip for s in specs}) == 300
    # a control plane at its own network's address; kwok's workers on loopback (no network)
    assert specs[0].ip == "192.0.2.11" and all(s.ip.startswith("127.") for s in specs[1:])
    cp = node_manifest(specs[0], "1.37.2", max_pods=110)
    assert cp["spec"]["taints"] == [
        {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    ]
    w = node_manifest(specs[1], "1.37.2", max_pods=110)
    assert w["spec"]["taints"] == []
    assert w["status"]["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert w["status"]["capacity"]["pods"] == "110"
    assert w["metadata"]["labels"][KWOK_LABEL] == "on"  # managed by the one kwok


def test_one_kwok_manages_the_labelled_nodes(tmp_path: Path) -> None:
    args = kwok_args("kwok", kubeconfig=tmp_path / "kc", port=1234, lease_seconds=10)
    assert args[args.index("--manage-nodes-with-label-selector") + 1] == f"{KWOK_LABEL}=on"
    assert args[args.index("--node-lease-duration-seconds") + 1] == "10"


def _kubeadm_like_ca(pki: Path) -> x509.Certificate:
    """A CA at pki/ca.{crt,key}, as kubeadm's certs phase leaves it (ECDSA P-256, CA:TRUE)."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pki.mkdir(parents=True)
    (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert


def test_the_hosts_clients_are_signed_by_kubeadms_ca_and_private(tmp_path: Path) -> None:
    ca = _kubeadm_like_ca(tmp_path / "pki")
    pki = SandboxPKI(tmp_path / "pki", tmp_path / "clients")
    issue_clients(pki)
    assert stat.S_IMODE(pki.clients.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in pki.clients.glob("*.key"))
    subjects = {}
    for stem in ("admin", "super-admin", "kwok"):
        cert = x509.load_pem_x509_certificate(pki.pair(stem).cert.read_bytes())
        assert cert.issuer == ca.subject
        subjects[stem] = cert.subject.rfc4514_string()
    # kubeadm's kubeconfig identities (admin.conf, super-admin.conf), and kwok's
    assert subjects["admin"] == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    assert subjects["super-admin"] == "CN=kubernetes-super-admin,O=system:masters"
    assert subjects["kwok"] == "CN=kwok-controller,O=system:masters"
    # a kwok worker's kubelet identity, as its TLS bootstrap would leave it
    worker = x509.load_pem_x509_certificate(issue_node_client(pki, "worker-1").cert.read_bytes())
    assert worker.subject.rfc4514_string() == "CN=system:node:worker-1,O=system:nodes"


def test_write_atomic_sets_mode_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "d" / "secret"
    write_atomic(target, "one", mode=0o600)
    write_atomic(target, b"two", mode=0o600)
    assert target.read_text() == "two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["secret"]


def test_the_cli_names_the_supported_versions() -> None:
    from kubecare.cli.sandbox import SUPPORTED
    from kubecare.sandbox.binaries import KUBE_VERSIONS

    assert ", ".join(".".join(v.split(".")[:2]) for v in KUBE_VERSIONS) == SUPPORTED
