"""Every certificate `kubeadm certs check-expiration` lists, read from a control-plane node's
``/etc/kubernetes``.

The list is kubeadm's (cmd/kubeadm/app/phases/certs/renewal/manager.go, NewManager): the leaf
certificates of certsphase.GetDefaultCertList (the etcd ones only with local etcd), the client
certificates embedded in admin.conf, super-admin.conf, controller-manager.conf and
scheduler.conf (kubelet.conf is the kubelet's own to rotate), and the three CAs. A CA whose key
is absent is "externally managed" (kubeadm cannot renew what it signed). Names, files and CAs
are kubeadm's, so a row here is a row there.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CertError


@dataclass(frozen=True)
class Spec:
    name: str  # kubeadm's name: "apiserver", "etcd-peer", "admin.conf", "ca"
    file: str  # pki/<base>.crt's base ("etcd/peer"), or the kubeconfig's file name
    ca: str  # the CA's name ("" for a CA)
    kubeconfig: bool = False
    etcd: bool = False  # only with local (stacked) etcd


#: kubeadm's CAs: name -> base name under pki/
CAS = {"ca": "ca", "front-proxy-ca": "front-proxy-ca", "etcd-ca": "etcd/ca"}

CERTS = (
    Spec("admin.conf", "admin.conf", "ca", kubeconfig=True),
    Spec("apiserver", "apiserver", "ca"),
    Spec("apiserver-etcd-client", "apiserver-etcd-client", "etcd-ca", etcd=True),
    Spec("apiserver-kubelet-client", "apiserver-kubelet-client", "ca"),
    Spec("controller-manager.conf", "controller-manager.conf", "ca", kubeconfig=True),
    Spec("etcd-healthcheck-client", "etcd/healthcheck-client", "etcd-ca", etcd=True),
    Spec("etcd-peer", "etcd/peer", "etcd-ca", etcd=True),
    Spec("etcd-server", "etcd/server", "etcd-ca", etcd=True),
    Spec("front-proxy-client", "front-proxy-client", "front-proxy-ca"),
    Spec("scheduler.conf", "scheduler.conf", "ca", kubeconfig=True),
    Spec("super-admin.conf", "super-admin.conf", "ca", kubeconfig=True),
)

#: kubeadm join does not write super-admin.conf (only init does): missing on a joined node is
#: the normal state, not a fault.
OPTIONAL = {"super-admin.conf"}


@dataclass(frozen=True)
class CertInfo:
    node: str
    name: str
    ca: str
    path: Path
    not_after: dt.datetime | None  # None: missing
    externally_managed: bool = False
    is_ca: bool = False

    @property
    def missing(self) -> bool:
        return self.not_after is None

    def residual(self, now: dt.datetime) -> dt.timedelta | None:
        return None if self.not_after is None else self.not_after - now

    def as_dict(self, now: dt.datetime) -> dict[str, Any]:
        left = self.residual(now)
        return {
            "node": self.node,
            "name": self.name,
            "caName": "" if self.missing else self.ca,  # as kubeadm's JSON has it
            "path": str(self.path),
            "expirationDate": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
            if self.not_after
            else None,
            "residualTime": int(left.total_seconds()) if left is not None else None,
            "externallyManaged": self.externally_managed,
            "missing": self.missing,
        }


def pki_dir(kubernetes_dir: Path) -> Path:
    return kubernetes_dir / "pki"


def cert_path(kubernetes_dir: Path, spec: Spec) -> Path:
    if spec.kubeconfig:
        return kubernetes_dir / spec.file
    return pki_dir(kubernetes_dir) / f"{spec.file}.crt"


def key_path(kubernetes_dir: Path, spec: Spec) -> Path:
    return pki_dir(kubernetes_dir) / f"{spec.file}.key"


def ca_paths(kubernetes_dir: Path, ca: str) -> tuple[Path, Path]:
    base = pki_dir(kubernetes_dir) / CAS[ca]
    return base.with_name(base.name + ".crt"), base.with_name(base.name + ".key")


def load_pem_cert(path: Path) -> Any:
    from cryptography import x509

    try:
        data = path.read_bytes()
    except PermissionError:
        raise CertError(f"{path}: permission denied (run as root on the node)") from None
    except OSError as e:
        raise CertError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertError(f"{path} is not a PEM certificate") from None


def kubeconfig_user(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kubeconfig document and the user entry of its current context (kubeadm's kubeconfig
    ReadWriter reads that one)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except PermissionError:
        raise CertError(f"{path}: permission denied (run as root on the node)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CertError(f"{path} is not a readable kubeconfig ({type(e).__name__})") from None
    try:
        ctx_name = doc["current-context"]
        ctx = next(c for c in doc["contexts"] if c["name"] == ctx_name)["context"]
        user = next(u for u in doc["users"] if u["name"] == ctx["user"])["user"]
    except (KeyError, TypeError, StopIteration):
        raise CertError(f"{path}: no user for its current context") from None
    if "client-certificate-data" not in user:
        raise CertError(f"{path}: its user has no embedded client certificate")
    return doc, user


def read_cert(kubernetes_dir: Path, spec: Spec) -> Any:
    """The certificate of ``spec`` (a cryptography x509.Certificate), or None if missing."""
    from cryptography import x509

    path = cert_path(kubernetes_dir, spec)
    if not path.exists():
        return None
    if not spec.kubeconfig:
        return load_pem_cert(path)
    _, user = kubeconfig_user(path)
    try:
        return x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    except ValueError:
        raise CertError(f"{path}: its client-certificate-data is not a certificate") from None


def local_etcd(kubernetes_dir: Path) -> bool:
    """kubeadm lists the etcd certificates only for local etcd (``Etcd.Local`` set): its static
    pod is there, or its server certificate is while the manifest is moved away (etcd stopped).
    Not ``etcd/ca.crt``: kubeadm's external-etcd guide copies that one onto every control
    plane, with the apiserver's etcd client pair, and no etcd certificate is kubeadm's there."""
    try:
        return (kubernetes_dir / "manifests" / "etcd.yaml").exists() or (
            pki_dir(kubernetes_dir) / "etcd" / "server.crt"
        ).exists()
    except PermissionError:
        raise CertError(
            f"{kubernetes_dir}: permission denied (kubeadm makes manifests/ 0700: run as root)"
        ) from None


def inventory(kubernetes_dir: Path, node: str = "") -> tuple[list[CertInfo], list[CertInfo]]:
    """(certificates, CAs) of one control-plane node, in kubeadm's order (by name)."""
    try:
        is_dir = pki_dir(kubernetes_dir).is_dir()
    except PermissionError:
        raise CertError(f"{pki_dir(kubernetes_dir)}: permission denied (run as root)") from None
    if not is_dir:
        raise CertError(
            f"{pki_dir(kubernetes_dir)} not found: not a kubeadm control-plane node; give "
            "--kubernetes-dir, or --sandbox NAME"
        )
    etcd = local_etcd(kubernetes_dir)
    cas = []
    for name in CAS:
        if name == "etcd-ca" and not etcd:
            continue
        crt, key = ca_paths(kubernetes_dir, name)
        cert = load_pem_cert(crt) if crt.exists() else None
        cas.append(
            CertInfo(
                node,
                name,
                "",
                crt,
                cert.not_valid_after_utc if cert else None,
                externally_managed=cert is not None and not key.exists(),
                is_ca=True,
            )
        )
    external = {c.name: c.externally_managed for c in cas}
    certs = []
    for spec in CERTS:
        if spec.etcd and not etcd:
            continue
        cert = read_cert(kubernetes_dir, spec)
        certs.append(
            CertInfo(
                node,
                spec.name,
                spec.ca,
                cert_path(kubernetes_dir, spec),
                cert.not_valid_after_utc if cert is not None else None,
                externally_managed=external.get(spec.ca, False),
            )
        )
    return certs, sorted(cas, key=lambda c: c.name)
