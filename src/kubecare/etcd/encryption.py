"""Values encrypted at rest by kube-apiserver, decrypted with the keys of its
EncryptionConfiguration (apiserver.config.k8s.io/v1), as its transformers do
(k8s.io/apiserver/pkg/storage/value/encrypt/aes, .../encryptionconfig/config.go):

- ``k8s:enc:aescbc:v1:<key name>:`` + IV(16) + AES-CBC with PKCS#7 padding (unauthenticated: a
  wrong key is caught by checking that the plaintext is a Kubernetes object);
- ``k8s:enc:aesgcm:v1:<key name>:`` + nonce(12) + AES-GCM, the additional data being the full
  etcd key;
- secretbox needs XSalsa20-Poly1305 and kms the key management plugin: both are reported, not
  decrypted.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SnapshotError, UsageError

SUPPORTED = ("aescbc", "aesgcm")


@dataclass
class Keys:
    """provider -> key name -> candidate secrets (a name may repeat across resources)."""

    keys: dict[str, dict[str, list[bytes]]] = field(default_factory=dict)

    def decrypt(self, value: bytes, etcd_key: str) -> bytes:
        parts = value.split(b":", 5)
        if len(parts) < 6:
            raise SnapshotError(f"{etcd_key}: malformed encrypted value")
        provider, name, data = (
            parts[2].decode(errors="replace"),
            parts[4].decode(errors="replace"),
            parts[5],
        )
        if provider not in SUPPORTED:
            raise SnapshotError(
                f"{etcd_key} is encrypted with {provider}, which kubecare does not decrypt offline "
                f"(supported: {', '.join(SUPPORTED)})"
            )
        candidates = self.keys.get(provider, {}).get(name)
        if not candidates:
            raise SnapshotError(
                f"{etcd_key} is encrypted with {provider} key {name!r}, which the encryption config "
                "does not have"
            )
        for secret in candidates:
            if len(secret) not in (16, 24, 32):
                raise SnapshotError(
                    f"{provider} key {name!r} is {len(secret)} bytes; AES keys are 16, 24 or 32"
                )
            plain = (
                _aescbc(secret, data) if provider == "aescbc" else _aesgcm(secret, data, etcd_key)
            )
            if plain is not None and (plain.startswith(b"k8s\x00") or plain[:1] == b"{"):
                return plain
        raise SnapshotError(f"{etcd_key}: {provider} key {name!r} does not decrypt it (wrong key?)")


def _aescbc(secret: bytes, data: bytes) -> bytes | None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(data) < 32 or len(data) % 16:
        return None
    decryptor = Cipher(algorithms.AES(secret), modes.CBC(data[:16])).decryptor()
    out = decryptor.update(data[16:]) + decryptor.finalize()
    pad = out[-1]
    if not 1 <= pad <= 16 or out[-pad:] != bytes([pad]) * pad:
        return None
    return out[:-pad]


def _aesgcm(secret: bytes, data: bytes, etcd_key: str) -> bytes | None:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        return AESGCM(secret).decrypt(data[:12], data[12:], etcd_key.encode())
    except (InvalidTag, ValueError):
        return None


def load_keys(path: Path) -> Keys:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--encryption-config {path}: no such file") from None
    except (OSError, yaml.YAMLError) as e:
        raise UsageError(f"--encryption-config {path}: cannot read it ({e})") from None
    if not isinstance(doc, dict) or doc.get("kind") != "EncryptionConfiguration":
        raise UsageError(f"{path} is not an EncryptionConfiguration")
    keys = Keys()
    for entry in doc.get("resources") or []:
        for provider in entry.get("providers") or []:
            for kind in SUPPORTED:
                for k in (provider.get(kind) or {}).get("keys") or []:
                    try:
                        secret = base64.b64decode(str(k["secret"]), validate=True)
                    except (KeyError, ValueError):
                        raise UsageError(
                            f"{path}: {kind} key {k.get('name')!r} has no valid base64 secret"
                        ) from None
                    keys.keys.setdefault(kind, {}).setdefault(str(k["name"]), []).append(secret)
    return keys
