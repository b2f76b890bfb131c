"""`kubecare certs renew`: kubeadm's renewal (renewal/manager.go RenewUsingLocalCA), with the old
files kept.

As kubeadm does: the existing certificate is the source of the new one's attributes (Common Name,
Organization, IP and DNS SANs, extended key usages; pkiutil.NewSignedCert's key usages
KeyEncipherment|DigitalSignature), a new private key of the same kind, NotBefore backdated
5 minutes (CertificateBackdate), NotAfter one year on (CertificateValidityPeriod) unless told,
signed by the same CA. Certificates in kubeconfig files are rewritten inside the file. CAs are
not renewed (kubeadm does not either). Refused: a CA whose key is not here (externally
managed), a CA that has expired (what it signs is trusted by nobody), a missing certificate.
:func:`plan_renew` is pure; :func:`renew` writes.

Each file is written atomically, and the old one is first kept next to it as
``<file>.kubecare-<UTC time>`` (keys 0600). The components that read a renewed file must be
restarted to use it (kubeadm's docs: static pods, by moving their manifest away and back);
:func:`components_for` says which.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CertError
from ..files import write_atomic
from .inventory import CAS, CERTS, Spec, ca_paths, cert_path, key_path, kubeconfig_user, read_cert

BACKDATE = dt.timedelta(minutes=5)  # kubeadm's CertificateBackdate
VALIDITY = dt.timedelta(days=365)  # kubeadm's CertificateValidityPeriod

#: Which static pods read each certificate (kubeadm's manifests' flags and kubeconfigs).
READERS = {
    "apiserver": ("kube-apiserver",),
    "apiserver-kubelet-client": ("kube-apiserver",),
    "apiserver-etcd-client": ("kube-apiserver",),
    "front-proxy-client": ("kube-apiserver",),
    "etcd-server": ("etcd",),
    "etcd-peer": ("etcd",),
    "etcd-healthcheck-client": (),  # read by etcdctl and probes, per use
    "controller-manager.conf": ("kube-controller-manager",),
    "scheduler.conf": ("kube-scheduler",),
    "admin.conf": (),
    "super-admin.conf": (),
}

#: The order components restart in: etcd first (the apiserver needs it), the apiserver before
#: the components that talk to it.
RESTART_ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


@dataclass(frozen=True)
class RenewStep:
    spec: Spec
    path: Path
    not_after: dt.datetime
    skipped: str = ""  # why it is left as it is (``all`` and an externally managed CA)


def select(names: list[str]) -> list[Spec]:
    """``names`` (kubeadm's, or "all") -> the specs, in kubeadm's order."""
    known = {s.name: s for s in CERTS}
    if not names or names == ["all"]:
        return list(CERTS)
    unknown = [n for n in names if n not in known]
    if unknown:
        if unknown[0] in CAS:
            raise CertError(
                f"{unknown[0]} is a CA: neither kubeadm nor kubecare renews CAs (every "
                "certificate it signed would have to be replaced)"
            )
        raise CertError(
            f"no certificate {unknown[0]!r}; one of: all, " + ", ".join(s.name for s in CERTS)
        )
    return [s for s in CERTS if s.name in names]


def plan_renew(
    kubernetes_dir: Path,
    specs: list[Spec],
    now: dt.datetime,
    validity: dt.timedelta = VALIDITY,
    *,
    skip_missing: bool = False,
    skip_external: bool = False,
) -> list[RenewStep]:
    """What would be renewed, each with its new expiry; every refusal before anything is
    written. ``skip_external`` (``renew all``, as kubeadm's "Detected external ... can't be
    renewed"): a certificate whose CA key is not here is a skipped step, not a refusal."""
    from .inventory import local_etcd

    etcd = local_etcd(kubernetes_dir)
    steps = []
    for spec in specs:
        if spec.etcd and not etcd:
            continue  # kubeadm's list without etcd (GetCertsWithoutEtcd): not kubeadm's to renew
        path = cert_path(kubernetes_dir, spec)
        if not path.exists():
            if skip_missing:
                continue
            raise CertError(f"{spec.name}: {path} not found; nothing to renew it from")
        crt, key = ca_paths(kubernetes_dir, spec.ca)
        if not crt.exists():
            raise CertError(f"{spec.name}: its CA {spec.ca} ({crt}) is missing")
        if not key.exists():
            if skip_external:
                why = f"its CA {spec.ca} is externally managed (no {key.name} here)"
                steps.append(RenewStep(spec, path, now + validity, skipped=why))
                continue
            raise CertError(
                f"{spec.name}: the key of its CA {spec.ca} ({key}) is not here (an externally "
                "managed CA); have that CA sign a renewed certificate"
            )
        from .inventory import load_pem_cert

        ca_cert = load_pem_cert(crt)
        if ca_cert.not_valid_after_utc <= now:
            raise CertError(
                f"{spec.name}: its CA {spec.ca} expired on "
                f"{ca_cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; a certificate it signs "
                "would be trusted by nobody: the CA must be replaced first"
            )
        _loadable(kubernetes_dir, spec, key)
        steps.append(RenewStep(spec, path, now + validity))
    return steps


def _loadable(kubernetes_dir: Path, spec: Spec, ca_key: Path) -> None:
    """Everything :func:`renew` reads for ``spec``, read once here, so that a bad file refuses
    the whole run before anything is written (not half-way through it)."""
    old = read_cert(kubernetes_dir, spec)  # CertError when not a certificate
    _new_key_like(old.public_key())  # CertError for a key type kubeadm does not make
    load_ca_key(ca_key)
    if not spec.kubeconfig:
        kp = key_path(kubernetes_dir, spec)
        if not kp.exists():
            raise CertError(f"{spec.name}: its key {kp} is missing; nothing to renew it with")


def load_ca_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except PermissionError:
        raise CertError(
            f"{path}: the CA key is not readable (permission denied; run as root)"
        ) from None
    except (OSError, ValueError, TypeError) as e:
        raise CertError(f"{path}: cannot load the CA key ({type(e).__name__})") from None


def _new_key_like(public: Any) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(public, ec.EllipticCurvePublicKey):
        return ec.generate_private_key(public.curve)
    if isinstance(public, rsa.RSAPublicKey):
        return rsa.generate_private_key(public_exponent=65537, key_size=public.key_size)
    raise CertError(f"unsupported key type {type(public).__name__}")


def _signed(
    old: Any, key: Any, ca_cert: Any, ca_key: Any, now: dt.datetime, until: dt.datetime
) -> Any:
    """kubeadm's pkiutil.NewSignedCert with certToConfig's attributes of ``old``."""
    import secrets

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    cn = old.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = old.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(o.value)) for o in orgs]
        + [x509.NameAttribute(NameOID.COMMON_NAME, str(c.value)) for c in cn]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(secrets.randbelow((1 << 63) - 2) + 1)
        .not_valid_before(now - BACKDATE)
        .not_valid_after(until)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    try:
        eku = old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    except x509.ExtensionNotFound:
        pass
    try:
        san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n for n in san if isinstance(n, x509.DNSName | x509.IPAddress)]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    except x509.ExtensionNotFound:
        pass
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    except x509.ExtensionNotFound:
        pass
    algorithm = None if _is_ed25519(ca_key) else hashes.SHA256()
    return builder.sign(ca_key, algorithm)


def _is_ed25519(key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return isinstance(key, ed25519.Ed25519PrivateKey)


def _keep(path: Path, stamp: str) -> Path:
    """Copy ``path`` to ``<path>.kubecare-<stamp>`` (its mode kept), never over an existing
    file. The copy is created 0600 and exclusively: a key's copy is never readable by others,
    not even while it is being written."""
    mode = os.stat(path).st_mode & 0o777
    data = path.read_bytes()
    n = 0
    while True:
        kept = path.with_name(f"{path.name}.kubecare-{stamp}" + (f"-{n}" if n else ""))
        try:
            fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            n += 1
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)
    except OSError:
        kept.unlink(missing_ok=True)
        raise
    return kept


@dataclass(frozen=True)
class Renewed:
    name: str
    path: Path
    not_after: dt.datetime
    kept: tuple[Path, ...]


def renew(kubernetes_dir: Path, steps: list[RenewStep], now: dt.datetime) -> list[Renewed]:
    from cryptography.hazmat.primitives import serialization

    from .inventory import load_pem_cert

    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    done = []
    for step in steps:
        if step.skipped:
            continue
        old = read_cert(kubernetes_dir, step.spec)
        crt, key_file = ca_paths(kubernetes_dir, step.spec.ca)
        ca_cert = load_pem_cert(crt)
        ca_key = load_ca_key(key_file)
        key = _new_key_like(old.public_key())
        cert = _signed(old, key, ca_cert, ca_key, now, step.not_after)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL
            if not _is_ed25519(key)
            else serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if step.spec.kubeconfig:
            import yaml

            kept: tuple[Path, ...] = (_keep(step.path, stamp),)
            doc, user = kubeconfig_user(step.path)
            # kubeadm's kubeConfigReadWriter.Write embeds the CA again too: a kubeconfig
            # renewed after the CA changed trusts the new one
            _cluster_of_current_context(doc, step.path)["certificate-authority-data"] = (
                base64.b64encode(crt.read_bytes()).decode()
            )
            user["client-certificate-data"] = base64.b64encode(cert_pem).decode()
            user["client-key-data"] = base64.b64encode(key_pem).decode()
            mode = os.stat(step.path).st_mode & 0o777
            write_atomic(step.path, yaml.safe_dump(doc, sort_keys=False), mode=mode or 0o600)
        else:
            kp = key_path(kubernetes_dir, step.spec)
            kept = (_keep(step.path, stamp), _keep(kp, stamp))
            # each file atomically; the pair is consistent for its readers once both are
            # written, and they read it when they are restarted, after this
            write_atomic(kp, key_pem, mode=0o600)
            write_atomic(step.path, cert_pem, mode=0o644)
        done.append(Renewed(step.spec.name, step.path, step.not_after, kept))
    return done


def renew_files(kubernetes_dir: Path, steps: list[RenewStep], now: dt.datetime) -> list[Renewed]:
    """:func:`renew`, a file system that refuses a write (read-only, full) named as such."""
    try:
        return renew(kubernetes_dir, steps, now)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise CertError(
            f"writing{where} failed ({e.strerror or e}); the files already renewed stay, each "
            "with its old copy beside it as <file>.kubecare-<time>"
        ) from None


def _cluster_of_current_context(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        ctx = next(c for c in doc["contexts"] if c["name"] == doc["current-context"])["context"]
        cluster: dict[str, Any] = next(c for c in doc["clusters"] if c["name"] == ctx["cluster"])[
            "cluster"
        ]
    except (KeyError, TypeError, StopIteration):
        raise CertError(f"{path}: no cluster for its current context") from None
    return cluster


def components_for(names: list[str]) -> list[str]:
    """The static pods to restart after renewing ``names``, in restart order."""
    wanted = {c for n in names for c in READERS.get(n, ())}
    return [c for c in RESTART_ORDER if c in wanted]
