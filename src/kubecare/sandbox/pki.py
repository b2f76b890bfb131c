"""The sandbox's own certificates, signed by the CA kubeadm made (its ``certs`` phase writes every
control-plane node's ``/etc/kubernetes/pki``; see :mod:`kubecare.sandbox.kubeadm_init`): the
client certificates of the host's kubeconfig files (admin, super-admin, kwok) in the sandbox's
private ``clients/`` dir, and each kwok worker's kubelet identity (what its TLS bootstrap would
leave). Keys are ECDSA P-256 (kubeadm's ``encryptionAlgorithm: ECDSA-P256``) and written 0600."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubecare.files import write_atomic

_VALIDITY = dt.timedelta(days=365)

# the host's kubeconfig identities, as kubeadm's kubeconfig phase names them: (file stem, CN,
# organisation)
CLIENTS = (
    ("admin", "kubernetes-admin", "kubeadm:cluster-admins"),
    ("super-admin", "kubernetes-super-admin", "system:masters"),
    # kwok acts for every fake kubelet; a kubeadm kubelet would be system:node:<name>, but kwok
    # also patches pods on all its nodes, which the Node authorizer would refuse one by one.
    ("kwok", "kwok-controller", "system:masters"),
)


#: kubelet.conf's identity on each node, as kubeadm's kubeconfig phase makes it:
#: ``system:node:<node>`` in ``system:nodes`` (the Node authorizer's). Its file stem in clients/.
KUBELET_CLIENT = "kubelet-"


@dataclass(frozen=True)
class CertPair:
    """Paths of one certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class SandboxPKI:
    """One control-plane node's ``pki/`` dir, and the sandbox's client certificates."""

    dir: Path
    clients: Path

    def pair(self, name: str) -> CertPair:
        if any(name == c[0] for c in CLIENTS) or name.startswith(KUBELET_CLIENT):
            return CertPair(self.clients / f"{name}.crt", self.clients / f"{name}.key")
        return CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")

    @property
    def ca(self) -> CertPair:
        return self.pair("ca")

    @property
    def etcd_ca(self) -> CertPair:
        return self.pair("etcd/ca")


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


def _issue(
    pair: CertPair,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    *,
    org: str | None = None,
) -> None:
    """A client certificate (CN = user, O = group) signed by ``ca``."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca[0].subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca[1], hashes.SHA256())
    )
    _write_pair(pair, cert, key)


def _load(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def issue_clients(pki: SandboxPKI) -> None:
    """The sandbox's own client certificates (:data:`CLIENTS`), signed by the cluster CA kubeadm
    made on the first control-plane node: what the host's kubeconfig files carry."""
    pki.clients.mkdir(parents=True, exist_ok=True)
    pki.clients.chmod(0o700)
    ca = _load(pki.ca)
    for stem, cn, org in CLIENTS:
        _issue(pki.pair(stem), ca, cn, org=org)


def issue_node_client(pki: SandboxPKI, node: str) -> CertPair:
    """A worker's kubelet client certificate (``system:node:<node>``, group system:nodes),
    signed by the cluster CA: what the kubelet's TLS bootstrap leaves on a joined node."""
    pair = pki.pair(KUBELET_CLIENT + node)
    if not (pair.cert.exists() and pair.key.exists()):
        _issue(pair, _load(pki.ca), f"system:node:{node}", org="system:nodes")
    return pair
