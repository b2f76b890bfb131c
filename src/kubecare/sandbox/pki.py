"""Certificates for the sandbox, laid out like kubeadm's: a cluster CA, an etcd CA, serving and
client certificates, and the service-account key pair. Keys are ECDSA P-256 (fast to make) and
written 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubecare.files import write_atomic

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertPair:
    """Paths of one certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class SandboxPKI:
    """Every credential the sandbox's components use."""

    dir: Path

    def pair(self, name: str) -> CertPair:
        return CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    @property
    def ca(self) -> CertPair:
        return self.pair("ca")

    @property
    def etcd_ca(self) -> CertPair:
        return self.pair("etcd-ca")

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_pair(pair: CertPair, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    write_atomic(pair.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_atomic(
        pair.key,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _make_ca(pair: CertPair, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + 10 * _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_pair(pair, cert, key)
    return cert, key


def _issue(
    pair: CertPair,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    *,
    org: str | None = None,
    server: bool = False,
    client: bool = False,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
) -> None:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if dns or ips:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_pair(pair, builder.sign(ca[1], hashes.SHA256()), key)


def create_pki(directory: Path, *, service_ip: str = "10.96.0.1") -> SandboxPKI:
    """Create every certificate and key the sandbox needs in ``directory`` (0700)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    pki = SandboxPKI(directory)
    loopback = ("127.0.0.1",)
    ca = _make_ca(pki.ca, "kubecare-sandbox-ca")
    etcd_ca = _make_ca(pki.etcd_ca, "kubecare-sandbox-etcd-ca")
    _issue(
        pki.pair("etcd-server"),
        etcd_ca,
        "etcd-server",
        server=True,
        client=True,
        dns=("localhost",),
        ips=loopback,
    )
    _issue(pki.pair("apiserver-etcd-client"), etcd_ca, "kube-apiserver-etcd-client", client=True)
    _issue(
        pki.pair("etcd-healthcheck-client"), etcd_ca, "kube-etcd-healthcheck-client", client=True
    )
    _issue(
        pki.pair("apiserver"),
        ca,
        "kube-apiserver",
        server=True,
        dns=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=(*loopback, service_ip),
    )
    _issue(pki.pair("admin"), ca, "kubernetes-admin", org="system:masters", client=True)
    _issue(pki.pair("controller-manager"), ca, "system:kube-controller-manager", client=True)
    _issue(pki.pair("scheduler"), ca, "system:kube-scheduler", client=True)
    # kwok acts for every fake kubelet; a kubeadm kubelet would be system:node:<name>, but kwok
    # also patches pods on all its nodes, which the Node authorizer would refuse one-by-one.
    _issue(pki.pair("kwok"), ca, "kwok-controller", org="system:masters", client=True)
    sa = _key()
    write_atomic(
        pki.sa_key,
        sa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    write_atomic(
        pki.sa_pub,
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return pki
