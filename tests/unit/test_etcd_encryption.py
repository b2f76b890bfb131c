"""Values encrypted at rest, decrypted as kube-apiserver's transformers do. The AES-GCM vector is
k8s.io/apiserver's TestGCMLegacyDataCompatibility (recorded ciphertext, key "snorlax_awesomes",
additional data "bamboo"); the CBC and config cases follow aes.go and encryptionconfig."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kubecare.errors import SnapshotError, UsageError
from kubecare.etcd.encryption import _aesgcm, load_keys

# the Go literal, byte for byte: "\u05c8" is its UTF-8 bytes, "\a" and "\b" are 0x07, 0x08
LEGACY = (
    b"\x9f'\xc8\xfc\xea\x8aX\xc4g\xd8\xe47\xdb\xf2\xd8YU\xf9\xb4\xbd\x91/N\xf9g\xd7\x88\xa0\xcb"
    b"\x07y}\xac\n?\n\x08E`\\\xa8Z\xc8V+J\xe1"
)


def test_the_apiservers_recorded_gcm_ciphertext_decrypts() -> None:
    assert _aesgcm(b"snorlax_awesomes", LEGACY, "bamboo") == b"pandas are the best"
    assert _aesgcm(b"snorlax_awesomes", LEGACY, "other-key") is None  # AAD = key


def config(tmp_path: Path, cbc: bytes, gcm: bytes) -> Path:
    path = tmp_path / "enc.yaml"
    path.write_text(
        f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aescbc:
      keys:
      - name: key1
        secret: {base64.b64encode(cbc).decode()}
  - identity: {{}}
- resources: [configmaps]
  providers:
  - aesgcm:
      keys:
      - name: gkey
        secret: {base64.b64encode(gcm).decode()}
"""
    )
    return path


def test_cbc_and_gcm_values_decrypt_with_the_config(tmp_path: Path) -> None:
    cbc, gcm = os.urandom(32), os.urandom(32)
    keys = load_keys(config(tmp_path, cbc, gcm))
    plain = b"k8s\x00" + b"secret object bytes"
    iv = os.urandom(16)
    pad = 16 - len(plain) % 16
    enc = Cipher(algorithms.AES(cbc), modes.CBC(iv)).encryptor()
    body = enc.update(plain + bytes([pad]) * pad) + enc.finalize()
    assert keys.decrypt(b"k8s:enc:aescbc:v1:key1:" + iv + body, "/registry/secrets/d/s") == plain
    nonce = os.urandom(12)
    sealed = AESGCM(gcm).encrypt(nonce, plain, b"/registry/configmaps/d/c")
    value = b"k8s:enc:aesgcm:v1:gkey:" + nonce + sealed
    assert keys.decrypt(value, "/registry/configmaps/d/c") == plain
    with pytest.raises(SnapshotError, match="does not decrypt it"):
        keys.decrypt(value, "/registry/configmaps/d/moved")  # another key: the AAD differs
    with pytest.raises(SnapshotError, match="does not have"):
        keys.decrypt(b"k8s:enc:aescbc:v1:key9:" + iv + body, "/registry/secrets/d/s")
    with pytest.raises(SnapshotError, match="secretbox, which kubecare does not decrypt"):
        keys.decrypt(b"k8s:enc:secretbox:v1:k:" + os.urandom(40), "/registry/secrets/d/s")


def test_a_bad_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_keys(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Pod\n")
    with pytest.raises(UsageError, match="not an EncryptionConfiguration"):
        load_keys(bad)
