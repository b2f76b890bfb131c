"""The kubelets' certificates, which kubeadm's list leaves out (the kubelet rotates its own):

- the serving certificate, as each kubelet presents it on its port (the Node's
  ``status.daemonEndpoints.kubeletEndpoint``, 10250 by default) at its InternalIP: a TLS
  handshake that only reads the certificate (nothing is sent, nothing is trusted);
- the client certificate, from the last issued CertificateSigningRequest whose
  certificate ``system:node:<name>`` for ``kubernetes.io/kube-apiserver-client-kubelet``, when the
  controller-manager has not cleaned it up yet (it deletes issued requests after an hour).

Where neither can be had the row says why; such a row is not counted as a failure.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..kube import Kube

HANDSHAKE_TIMEOUT = 3.0
KUBELET_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


@dataclass(frozen=True)
class KubeletCert:
    node: str
    kind: str  # serving, client
    not_after: dt.datetime | None
    issuer: str = ""
    error: str = ""

    def as_dict(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "node": self.node,
            "name": f"kubelet-{self.kind}",
            "expirationDate": f"{self.not_after:%Y-%m-%dT%H:%M:%SZ}" if self.not_after else None,
            "residualTime": int((self.not_after - now).total_seconds()) if self.not_after else None,
            "issuer": self.issuer,
            "error": self.error or None,
        }


def _cert_of(der: bytes) -> tuple[dt.datetime, str]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    return cert.not_valid_after_utc, cert.issuer.rfc4514_string()


def _internal_ip(node: dict[str, Any]) -> str | None:
    for a in (node.get("status") or {}).get("addresses") or []:
        if a.get("type") == "InternalIP":
            return str(a.get("address"))
    return None


async def presented_cert(host: str, port: int, timeout: float) -> bytes | None:
    """The DER certificate a TLS server presents, read by a handshake that trusts nothing and
    sends nothing; raises OSError, TimeoutError or ssl.SSLError when there is no handshake."""
    # a bare context: nothing is verified, so no CA store is loaded (tens of ms each)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), timeout)
    try:
        sock = writer.get_extra_info("ssl_object")
        return sock.getpeercert(binary_form=True) if sock is not None else None
    finally:
        writer.close()


async def serving_cert(node: dict[str, Any], timeout: float = HANDSHAKE_TIMEOUT) -> KubeletCert:
    name = node["metadata"]["name"]
    ip = _internal_ip(node)
    port = (
        ((node.get("status") or {}).get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}
    ).get("Port") or 10250
    if ip is None:
        return KubeletCert(name, "serving", None, error="the node has no InternalIP")
    try:
        der = await presented_cert(ip, int(port), timeout)
    except (OSError, TimeoutError, ssl.SSLError) as e:
        why = (
            "no answer" if isinstance(e, TimeoutError) else (getattr(e, "strerror", None) or str(e))
        )
        return KubeletCert(name, "serving", None, error=f"{ip}:{port}: {why}")
    if not der:
        return KubeletCert(name, "serving", None, error=f"{ip}:{port} presented no certificate")
    not_after, issuer = _cert_of(der)
    return KubeletCert(name, "serving", not_after, issuer)


def newest_client_certs(csrs: list[dict[str, Any]]) -> dict[str, tuple[dt.datetime, str]]:
    """Node name -> (notAfter, issuer) of its newest issued kubelet client certificate.

    The node is read from the issued certificate's subject (``CN=system:node:<name>``), not
    from the request's ``spec.username``: the first request, the TLS bootstrap's, is made by
    the bootstrap token's user (``system:bootstrap:<token-id>``); only rotations are made by
    ``system:node:<name>`` itself."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    newest: dict[str, tuple[dt.datetime, str]] = {}
    for csr in csrs:
        spec, status = csr.get("spec") or {}, csr.get("status") or {}
        if spec.get("signerName") != KUBELET_CLIENT_SIGNER or not status.get("certificate"):
            continue
        try:
            cert = x509.load_pem_x509_certificate(base64.b64decode(status["certificate"]))
        except ValueError:
            continue
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else ""
        if not cn.startswith("system:node:"):
            continue
        node = cn.removeprefix("system:node:")
        got = (cert.not_valid_after_utc, cert.issuer.rfc4514_string())
        if node not in newest or got[0] > newest[node][0]:
            newest[node] = got
    return newest


async def client_certs(kube: Kube, nodes: list[str]) -> list[KubeletCert]:
    """The newest issued kubelet client certificate of each node, from the CSRs left."""
    from ..errors import KubecareError

    try:
        csrs = (await kube.get_json("/apis/certificates.k8s.io/v1/certificatesigningrequests"))[
            "items"
        ]
    except KubecareError as e:
        return [KubeletCert(n, "client", None, error=f"CSRs not readable: {e}") for n in nodes]
    newest = newest_client_certs(csrs)
    return [
        KubeletCert(n, "client", *newest[n])
        if n in newest
        else KubeletCert(
            n, "client", None, error="no issued CSR left (they are deleted an hour after issue)"
        )
        for n in nodes
    ]


async def kubelet_certs(kube: Kube) -> list[KubeletCert]:
    nodes = (await kube.get_json("/api/v1/nodes"))["items"]
    names = [n["metadata"]["name"] for n in nodes]
    serving, clients = await asyncio.gather(
        asyncio.gather(*(serving_cert(n) for n in nodes)), client_certs(kube, names)
    )
    by_node = {c.node: c for c in clients}
    out: list[KubeletCert] = []
    for s in serving:
        out += [s, by_node[s.node]]
    return out
