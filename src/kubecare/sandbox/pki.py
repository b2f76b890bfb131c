"""Certificates for the sandbox, laid out as kubeadm lays them out on every control-plane node:
``/etc/kubernetes/pki/{ca, apiserver, apiserver-kubelet-client, apiserver-etcd-client,
front-proxy-ca, front-proxy-client, sa}`` and ``pki/etcd/{ca, server, peer,
healthcheck-client}``. The CAs and the service-account key are the cluster's (the same on every
node, as ``kubeadm join --control-plane`` copies them); serving and client certificates are made
per node. The client certificates behind the kubeconfig files (admin, super-admin,
controller-manager, scheduler, kwok, each node's kubelet) live in the sandbox's private ``clients/``
dir. Keys are
ECDSA P-256 (kubeadm's ``encryptionAlgorithm: ECDSA-P256``: fast to make) and written 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubecare.files import write_atomic

_VALIDITY = dt.timedelta(days=365)

# kubeconfig identities (kubeadm's kubeconfig phase): (file stem, CN, organisation)
CLIENTS = (
    ("admin", "kubernetes-admin", "kubeadm:cluster-admins"),
    ("super-admin", "kubernetes-super-admin", "system:masters"),
    ("controller-manager", "system:kube-controller-manager", None),
    ("scheduler", "system:kube-scheduler", None),
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


# names kubecare has always used -> kubeadm's file (relative to pki/)
_ALIASES = {
    "etcd-ca": "etcd/ca",
    "etcd-server": "etcd/server",
    "etcd-peer": "etcd/peer",
    "etcd-healthcheck-client": "etcd/healthcheck-client",
}


@dataclass(frozen=True)
class SandboxPKI:
    """One control-plane node's ``pki/`` dir, and the sandbox's client certificates."""

    dir: Path
    clients: Path

    def pair(self, name: str) -> CertPair:
        if any(name == c[0] for c in CLIENTS) or name.startswith(KUBELET_CLIENT):
            return CertPair(self.clients / f"{name}.crt", self.clients / f"{name}.key")
        rel = _ALIASES.get(name, name)
        return CertPair(self.dir / f"{rel}.crt", self.dir / f"{rel}.key")

    @property
    def ca(self) -> CertPair:
        return self.pair("ca")

    @property
    def etcd_ca(self) -> CertPair:
        return self.pair("etcd/ca")

    @property
    def front_proxy_ca(self) -> CertPair:
        return self.pair("front-proxy-ca")

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


def _load(pair: CertPair) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def create_cluster_pki(
    clients: Path,
    nodes: Sequence[tuple[str, Path]],
    *,
    service_ip: str = "10.96.0.1",
    addresses: Mapping[str, Sequence[str]] | None = None,
) -> list[SandboxPKI]:
    """Every node's ``pki/`` dir (``nodes``: name and pki dir each) and the client certificates;
    returns one :class:`SandboxPKI` per node. ``addresses``: each node's own IPs (its address,
    and the cluster endpoint's), named in its apiserver and etcd certificates as kubeadm names
    the advertise address and controlPlaneEndpoint."""
    first = nodes[0][1]
    for d in [clients, *(p for _, p in nodes)]:
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    (first / "etcd").mkdir(exist_ok=True)
    (first / "etcd").chmod(0o700)
    view = SandboxPKI(first, clients)
    ca = _make_ca(view.ca, "kubernetes")
    etcd_ca = _make_ca(view.etcd_ca, "etcd-ca")
    _make_ca(view.front_proxy_ca, "front-proxy-ca")
    sa = _key()
    write_atomic(
        view.sa_key,
        sa.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    write_atomic(
        view.sa_pub,
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    shared = ["ca", "etcd/ca", "front-proxy-ca"]
    for cn_file, cn, org in CLIENTS:
        _issue(view.pair(cn_file), ca, cn, org=org, client=True)
    out = []
    for name, pki_dir in nodes:
        node = SandboxPKI(pki_dir, clients)
        (pki_dir / "etcd").mkdir(parents=True, exist_ok=True)
        (pki_dir / "etcd").chmod(0o700)
        if pki_dir != first:
            for rel in shared:  # kubeadm join --control-plane copies the cluster's CAs
                for src, dst in zip(
                    (view.pair(rel).cert, view.pair(rel).key),
                    (node.pair(rel).cert, node.pair(rel).key),
                    strict=True,
                ):
                    shutil.copy2(src, dst)
            shutil.copy2(view.sa_key, node.sa_key)
            shutil.copy2(view.sa_pub, node.sa_pub)
        _node_certs(
            node,
            name,
            ca,
            etcd_ca,
            _load(view.front_proxy_ca),
            service_ip,
            tuple((addresses or {}).get(name, ())),
        )
        out.append(node)
    return out


def _node_certs(
    pki: SandboxPKI,
    node: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    etcd_ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    front_proxy_ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    service_ip: str,
    own: tuple[str, ...] = (),
) -> None:
    loopback = ("127.0.0.1", "::1")
    _issue(
        pki.pair("apiserver"),
        ca,
        "kube-apiserver",
        server=True,
        dns=(
            node,
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        ips=(*loopback, service_ip, *own),
    )
    _issue(
        pki.pair("apiserver-kubelet-client"),
        ca,
        "kube-apiserver-kubelet-client",
        org="kubeadm:cluster-admins",
        client=True,
    )
    _issue(pki.pair("apiserver-etcd-client"), etcd_ca, "kube-apiserver-etcd-client", client=True)
    _issue(pki.pair("front-proxy-client"), front_proxy_ca, "front-proxy-client", client=True)
    for kind in ("server", "peer"):
        _issue(
            pki.pair(f"etcd/{kind}"),
            etcd_ca,
            node,
            server=True,
            client=True,
            dns=(node, "localhost"),
            ips=(*loopback, *own[:1]),  # the node's address (peers verify it), not the endpoint
        )
    _issue(
        pki.pair("etcd/healthcheck-client"), etcd_ca, "kube-etcd-healthcheck-client", client=True
    )
    _issue(
        pki.pair(KUBELET_CLIENT + node), ca, f"system:node:{node}", org="system:nodes", client=True
    )


def issue_node_client(pki: SandboxPKI, node: str) -> CertPair:
    """A worker's kubelet client certificate (``system:node:<node>``, group system:nodes),
    signed by the cluster CA: what the kubelet's TLS bootstrap leaves on a joined node."""
    pair = pki.pair(KUBELET_CLIENT + node)
    if not (pair.cert.exists() and pair.key.exists()):
        _issue(pair, _load(pki.ca), f"system:node:{node}", org="system:nodes", client=True)
    return pair
