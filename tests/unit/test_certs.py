"""Certificates of a kubeadm control plane: kubeadm's list, HumanDuration (apimachinery's table
tests), and renewal as kubeadm's RenewUsingLocalCA does it, on a PKI made here."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubecare.certs.inventory import inventory
from kubecare.certs.renew import components_for, plan_renew, renew, select
from kubecare.durations import human_duration, parse_age
from kubecare.errors import CertError, UsageError

S = 1_000_000_000
MS = S // 1000
MIN, H, D, Y = 60 * S, 3600 * S, 86400 * S, 365 * 86400 * S


@pytest.mark.parametrize(
    ("ns", "want"),
    [
        # TestHumanDuration
        (S, "1s"),
        (70 * S, "70s"),
        (190 * S, "3m10s"),
        (70 * MIN, "70m"),
        (47 * H, "47h"),
        (49 * H, "2d1h"),
        ((8 * 24 + 2) * H, "8d"),
        (367 * 24 * H, "367d"),
        ((365 * 2 * 24 + 25) * H, "2y1d"),
        ((365 * 8 * 24 + 2) * H, "8y"),
        # TestHumanDurationBoundaries
        (-2 * S, "<invalid>"),
        (-2 * S + 1, "0s"),
        (0, "0s"),
        (S - MS, "0s"),
        (2 * MIN - MS, "119s"),
        (2 * MIN, "2m"),
        (2 * MIN + S, "2m1s"),
        (10 * MIN - MS, "9m59s"),
        (10 * MIN, "10m"),
        (10 * MIN + S, "10m"),
        (3 * H - MS, "179m"),
        (3 * H, "3h"),
        (3 * H + MIN, "3h1m"),
        (8 * H - MS, "7h59m"),
        (8 * H, "8h"),
        (8 * H + 59 * MIN, "8h"),
        (2 * D - MS, "47h"),
        (2 * D, "2d"),
        (2 * D + H, "2d1h"),
        (8 * D - MS, "7d23h"),
        (8 * D, "8d"),
        (8 * D + 23 * H, "8d"),
        (2 * Y - MS, "729d"),
        (2 * Y, "2y"),
        (2 * Y + 23 * H, "2y"),
        (2 * Y + 23 * H + 59 * MIN, "2y"),
        (2 * Y + D - MS, "2y"),
        (2 * Y + D, "2y1d"),
        (3 * Y, "3y"),
        (7 * Y, "7y"),
        (8 * Y - MS, "7y364d"),
        (8 * Y, "8y"),
        (8 * Y + 364 * D, "8y"),
        (9 * Y, "9y"),
    ],
)
def test_human_duration_is_apimachinerys(ns: int, want: str) -> None:
    assert human_duration(ns) == want


def test_ages_take_days() -> None:
    assert parse_age("30d", "--warn") == 30 * 86400
    assert parse_age("12h", "--warn") == 12 * 3600
    with pytest.raises(UsageError):
        parse_age("soon", "--warn")


NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _ca(cn: str, until: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(days=400))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    orgs: list[str],
    until: dt.datetime,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        + [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW - dt.timedelta(days=300))
        .not_valid_after(until)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(ca[1], hashes.SHA256()), key


def make_pki(root: Path, *, ca_key: bool = True, ca_until: dt.datetime | None = None) -> Path:
    """A kubeadm-shaped /etc/kubernetes with stacked etcd: every file check-expiration reads."""
    k = root / "kubernetes"
    (k / "pki" / "etcd").mkdir(parents=True)
    (k / "manifests").mkdir()
    (k / "manifests" / "etcd.yaml").write_text("kind: Pod\n")
    soon = NOW + dt.timedelta(days=20)
    cas = {}
    for name, base in (("ca", "ca"), ("front-proxy-ca", "front-proxy-ca"), ("etcd-ca", "etcd/ca")):
        cas[name] = _ca(name, ca_until or NOW + dt.timedelta(days=3000))
        (k / "pki" / f"{base}.crt").write_bytes(_pem(cas[name][0]))
        if ca_key:
            (k / "pki" / f"{base}.key").write_bytes(_key_pem(cas[name][1]))
    leaves = {
        "apiserver": ("ca", "kube-apiserver", []),
        "apiserver-kubelet-client": (
            "ca",
            "kube-apiserver-kubelet-client",
            ["kubeadm:cluster-admins"],
        ),
        "front-proxy-client": ("front-proxy-ca", "front-proxy-client", []),
        "etcd/server": ("etcd-ca", "cp-1", []),
        "etcd/peer": ("etcd-ca", "cp-1", []),
        "etcd/healthcheck-client": ("etcd-ca", "kube-etcd-healthcheck-client", []),
        "apiserver-etcd-client": ("etcd-ca", "kube-apiserver-etcd-client", []),
    }
    san = [x509.DNSName("kubernetes"), x509.IPAddress(ipaddress.ip_address("10.96.0.1"))]
    for base, (ca, cn, orgs) in leaves.items():
        cert, key = _leaf(cas[ca], cn, orgs, soon, san if base == "apiserver" else None)
        (k / "pki" / f"{base}.crt").write_bytes(_pem(cert))
        (k / "pki" / f"{base}.key").write_bytes(_key_pem(key))
        os.chmod(k / "pki" / f"{base}.key", 0o600)
    for conf, cn, org in (
        ("admin.conf", "kubernetes-admin", "kubeadm:cluster-admins"),
        ("controller-manager.conf", "system:kube-controller-manager", None),
        ("scheduler.conf", "system:kube-scheduler", None),
    ):
        cert, key = _leaf(cas["ca"], cn, [org] if org else [], soon)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "ctx",
            "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.1:6443"}}],
            "contexts": [{"name": "ctx", "context": {"cluster": "k", "user": "u"}}],
            "users": [
                {
                    "name": "u",
                    "user": {
                        "client-certificate-data": base64.b64encode(_pem(cert)).decode(),
                        "client-key-data": base64.b64encode(_key_pem(key)).decode(),
                    },
                }
            ],
        }
        (k / conf).write_text(yaml.safe_dump(doc))
        os.chmod(k / conf, 0o600)
    return k


def test_inventory_is_kubeadms_list(tmp_path: Path) -> None:
    k = make_pki(tmp_path)
    certs, cas = inventory(k, "cp-1")
    assert [c.name for c in certs] == [
        "admin.conf",
        "apiserver",
        "apiserver-etcd-client",
        "apiserver-kubelet-client",
        "controller-manager.conf",
        "etcd-healthcheck-client",
        "etcd-peer",
        "etcd-server",
        "front-proxy-client",
        "scheduler.conf",
        "super-admin.conf",
    ]
    assert [c.name for c in cas] == ["ca", "etcd-ca", "front-proxy-ca"]
    by = {c.name: c for c in certs}
    assert by["super-admin.conf"].missing  # a joined node has none
    assert by["etcd-peer"].ca == "etcd-ca" and not by["etcd-peer"].externally_managed
    assert by["apiserver"].residual(NOW) == dt.timedelta(days=20)


def test_without_local_etcd_the_etcd_certificates_are_not_listed(tmp_path: Path) -> None:
    k = make_pki(tmp_path)
    (k / "manifests" / "etcd.yaml").unlink()
    for f in (k / "pki" / "etcd").iterdir():
        f.unlink()
    certs, cas = inventory(k)
    assert "etcd-peer" not in {c.name for c in certs} and "etcd-ca" not in {c.name for c in cas}


def test_a_ca_without_its_key_is_externally_managed(tmp_path: Path) -> None:
    certs, cas = inventory(make_pki(tmp_path, ca_key=False))
    assert all(c.externally_managed for c in cas) and all(
        c.externally_managed for c in certs if not c.missing
    )


def test_renewal_keeps_subject_sans_and_usages_with_a_new_key_and_the_old_files(
    tmp_path: Path,
) -> None:
    k = make_pki(tmp_path)
    old_cert = x509.load_pem_x509_certificate((k / "pki" / "apiserver.crt").read_bytes())
    old_key = (k / "pki" / "apiserver.key").read_bytes()
    steps = plan_renew(k, select(["apiserver", "admin.conf"]), NOW)
    done = renew(k, steps, NOW)
    new = x509.load_pem_x509_certificate((k / "pki" / "apiserver.crt").read_bytes())
    assert new.subject == old_cert.subject and new.issuer == old_cert.issuer
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        old_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert list(new.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    assert new.not_valid_before_utc == NOW - dt.timedelta(minutes=5)  # CertificateBackdate
    assert new.not_valid_after_utc == NOW + dt.timedelta(days=365)
    ca = x509.load_pem_x509_certificate((k / "pki" / "ca.crt").read_bytes())
    new.verify_directly_issued_by(ca)
    key = (k / "pki" / "apiserver.key").read_bytes()
    assert key != old_key and os.stat(k / "pki" / "apiserver.key").st_mode & 0o777 == 0o600
    loaded = serialization.load_pem_private_key(key, None)
    assert loaded.public_key().public_numbers() == new.public_key().public_numbers()  # type: ignore[union-attr]
    kept = {p.name for p in next(d for d in done if d.name == "apiserver").kept}
    assert kept == {
        "apiserver.crt.kubecare-20261207T120000Z",
        "apiserver.key.kubecare-20261207T120000Z",
    }
    assert (k / "pki" / "apiserver.key.kubecare-20261207T120000Z").read_bytes() == old_key
    # the kubeconfig's embedded certificate, the rest of the file as it was
    doc = yaml.safe_load((k / "admin.conf").read_text())
    cert = x509.load_pem_x509_certificate(
        base64.b64decode(doc["users"][0]["user"]["client-certificate-data"])
    )
    assert cert.subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    assert doc["clusters"][0]["cluster"]["server"] == "https://10.0.0.1:6443"
    assert os.stat(k / "admin.conf").st_mode & 0o777 == 0o600
    certs, _ = inventory(k)
    assert {c.name: c.residual(NOW) for c in certs}["admin.conf"] == dt.timedelta(days=365)


def test_renewal_refuses_before_writing_anything(tmp_path: Path) -> None:
    k = make_pki(tmp_path, ca_key=False)
    before = (k / "pki" / "apiserver.crt").read_bytes()
    with pytest.raises(CertError, match="externally managed CA"):
        plan_renew(k, select(["all"]), NOW, skip_missing=True)
    assert (k / "pki" / "apiserver.crt").read_bytes() == before
    expired = make_pki(tmp_path / "x", ca_until=NOW - dt.timedelta(days=1))
    with pytest.raises(CertError, match="its CA ca expired on 2026-12-06"):
        plan_renew(expired, select(["apiserver"]), NOW)
    with pytest.raises(CertError, match=r"super-admin\.conf: .* not found"):
        plan_renew(make_pki(tmp_path / "y"), select(["super-admin.conf"]), NOW)
    with pytest.raises(CertError, match="is a CA: neither kubeadm nor kubecare renews CAs"):
        select(["etcd-ca"])
    with pytest.raises(CertError, match=r"no certificate 'apiserverr'; one of: all, admin.conf"):
        select(["apiserverr"])


def test_the_components_that_read_them_restart_in_order() -> None:
    assert components_for(["scheduler.conf", "etcd-peer", "apiserver"]) == [
        "etcd",
        "kube-apiserver",
        "kube-scheduler",
    ]
    assert components_for(["admin.conf", "etcd-healthcheck-client"]) == []


def test_kubelet_client_certificates_are_found_by_their_subject_not_the_requester() -> None:
    """The TLS bootstrap's CSR is made by ``system:bootstrap:<token-id>``; only rotations by
    the node itself. The newest issued one per node wins; others' signers are ignored."""
    from kubecare.certs.kubelets import KUBELET_CLIENT_SIGNER, newest_client_certs

    ca = _ca("kubernetes", NOW + dt.timedelta(days=3650))

    def csr(user: str, cn: str, until: dt.datetime, signer: str = KUBELET_CLIENT_SIGNER) -> dict:
        cert, _ = _leaf(ca, cn, ["system:nodes"], until)
        return {
            "spec": {"username": user, "signerName": signer},
            "status": {"certificate": base64.b64encode(_pem(cert)).decode()},
        }

    first, rotated = NOW + dt.timedelta(days=365), NOW + dt.timedelta(days=400)
    got = newest_client_certs(
        [
            csr("system:bootstrap:abcdef", "system:node:real-1", first),
            csr("system:bootstrap:abcdef", "system:node:real-2", first),
            csr("system:node:real-2", "system:node:real-2", rotated),
            csr("system:node:real-1", "system:node:real-1", rotated, signer="other/signer"),
            csr("someone", "not-a-node", rotated),
            {"spec": {"signerName": KUBELET_CLIENT_SIGNER}, "status": {}},  # pending
        ]
    )
    assert {n: t[0] for n, t in got.items()} == {"real-1": first, "real-2": rotated}
    assert got["real-1"][1] == "CN=kubernetes"


def test_a_kept_copy_is_never_readable_by_others_nor_written_over(tmp_path: Path) -> None:
    from kubecare.certs.renew import _keep

    key = tmp_path / "apiserver.key"
    key.write_bytes(b"secret")
    os.chmod(key, 0o600)
    crt = tmp_path / "apiserver.crt"
    crt.write_bytes(b"cert")
    os.chmod(crt, 0o644)
    first, second = _keep(key, "T"), _keep(key, "T")
    assert (first.name, second.name) == ("apiserver.key.kubecare-T", "apiserver.key.kubecare-T-1")
    assert all(os.stat(p).st_mode & 0o777 == 0o600 and p.read_bytes() == b"secret"
               for p in (first, second))  # fmt: skip
    assert os.stat(_keep(crt, "T")).st_mode & 0o777 == 0o644  # the mode it had


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda k: (k / "pki" / "front-proxy-client.crt").write_text("junk"), "is not a PEM"),
        (lambda k: (k / "pki" / "front-proxy-client.key").unlink(), "its key .* is missing"),
        (lambda k: (k / "pki" / "front-proxy-ca.key").write_text("junk"), "cannot load the CA key"),
        (lambda k: (k / "scheduler.conf").write_text("users: [\n"), "not a readable kubeconfig"),
    ],
)  # fmt: skip
def test_a_bad_file_anywhere_refuses_the_run_before_the_first_write(
    tmp_path: Path, damage: Any, message: str
) -> None:
    """apiserver comes first in kubeadm's order: it must not be renewed when a later file is
    bad (the review found it renewed, then the run stopped half-way)."""
    k = make_pki(tmp_path)
    damage(k)
    before = {p: p.read_bytes() for p in k.rglob("*") if p.is_file()}
    with pytest.raises(CertError, match=message):
        plan_renew(k, select(["all"]), NOW, skip_missing=True)
    assert {p: p.read_bytes() for p in k.rglob("*") if p.is_file()} == before


def test_renew_all_skips_what_an_external_ca_signed_and_names_refuse_it(tmp_path: Path) -> None:
    """kubeadm's renewCert: "Detected external ... can't be renewed", and the rest goes on."""
    k = make_pki(tmp_path)
    (k / "pki" / "front-proxy-ca.key").unlink()
    steps = plan_renew(k, select(["all"]), NOW, skip_missing=True, skip_external=True)
    skipped = {s.spec.name: s.skipped for s in steps if s.skipped}
    assert skipped == {"front-proxy-client": "its CA front-proxy-ca is externally managed "
                       "(no front-proxy-ca.key here)"}  # fmt: skip
    before = (k / "pki" / "front-proxy-client.crt").read_bytes()
    done = renew(k, steps, NOW)
    assert "front-proxy-client" not in {d.name for d in done} and "apiserver" in {
        d.name for d in done
    }
    assert (k / "pki" / "front-proxy-client.crt").read_bytes() == before
    with pytest.raises(CertError, match="externally managed CA"):
        plan_renew(k, select(["front-proxy-client"]), NOW, skip_external=False)


def test_a_renewed_kubeconfig_embeds_the_ca_again(tmp_path: Path) -> None:
    """kubeadm's kubeConfigReadWriter.Write sets the current cluster's CA data from ca.crt."""
    k = make_pki(tmp_path)
    renew(k, plan_renew(k, select(["admin.conf"]), NOW), NOW)
    doc = yaml.safe_load((k / "admin.conf").read_text())
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == (
        (k / "pki" / "ca.crt").read_bytes()
    )


def test_an_external_etcds_copied_ca_is_not_local_etcd(tmp_path: Path) -> None:
    """kubeadm's external-etcd guide copies etcd/ca.crt (and apiserver-etcd-client) onto every
    control plane; kubeadm lists no etcd certificate there (GetCertsWithoutEtcd)."""
    k = make_pki(tmp_path)
    (k / "manifests" / "etcd.yaml").unlink()
    certs, cas = inventory(k)
    assert "etcd-server" in {c.name for c in certs}  # stopped: its server certificate is here
    for f in ("server", "peer", "healthcheck-client"):
        for ext in ("crt", "key"):
            (k / "pki" / "etcd" / f"{f}.{ext}").unlink()
    certs, cas = inventory(k)
    assert not {"etcd-server", "etcd-peer", "etcd-healthcheck-client"} & {c.name for c in certs}
    assert "etcd-ca" not in {c.name for c in cas}
