"""Secrets in a backup are encrypted client-side with age (pyrage): each Secret is its own age
file (``<name>.json.age``), readable by any of the recipients' identities — with kubecare or with
``age -d -i key.txt``.

Recipients are age public keys (``age1...``) or SSH public keys (``ssh-ed25519 ...``); identities
are age identity files (``AGE-SECRET-KEY-1...`` lines, ``#`` comments), as ``age-keygen`` writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError

#: Used when no --encrypt-to / --recipients-file is given and the file exists.
DEFAULT_RECIPIENTS_FILE = Path("~/.config/kubecare/backup-recipients.txt")


def recipients(texts: Sequence[str]) -> list[Any]:
    import pyrage

    out = []
    for text in texts:
        text = text.strip()
        try:
            if text.startswith(("ssh-", "ecdsa-")):
                out.append(pyrage.ssh.Recipient.from_str(text))
            else:
                out.append(pyrage.x25519.Recipient.from_str(text))
        except pyrage.RecipientError as e:
            raise UsageError(
                f"{text[:40]!r} is not an age recipient ({e}); give an age public key "
                "(age1..., from age-keygen -y KEYFILE) or an SSH public key"
            ) from None
    return out


def read_recipients_file(path: Path) -> list[str]:
    """age's recipients-file format: one recipient per line, ``#`` comments, blank lines."""
    try:
        text = path.expanduser().read_text()
    except OSError as e:
        raise UsageError(f"cannot read recipients file {path}: {e.strerror}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def default_recipients() -> list[str]:
    path = Path(os.environ.get("KUBECARE_BACKUP_RECIPIENTS_FILE", str(DEFAULT_RECIPIENTS_FILE)))
    return read_recipients_file(path) if path.expanduser().is_file() else []


def encryptor(parsed: list[Any]) -> Callable[[bytes], bytes]:
    import pyrage

    def encrypt(data: bytes) -> bytes:
        return bytes(pyrage.encrypt(data, parsed))

    return encrypt


def identities(path: Path) -> list[Any]:
    """The identities of an age identity file, or an SSH private key (refused if others can
    read it)."""
    import pyrage

    try:
        st = path.stat()
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"cannot read identity file {path}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise UsageError(
            f"identity file {path} is readable by others (mode {st.st_mode & 0o777:o}); "
            f"run: chmod 600 {path}"
        )
    if "BEGIN OPENSSH PRIVATE KEY" in text:  # an SSH key (a recipient may be its public key)
        try:
            return [pyrage.ssh.Identity.from_buffer(text.encode())]
        except pyrage.IdentityError as e:
            raise UsageError(f"{path}: cannot use this SSH key ({e}); an unencrypted ed25519 "
                             "or RSA key is needed") from None  # fmt: skip
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise UsageError(
                f"{path} has a line that is not an age identity (AGE-SECRET-KEY-1...); "
                "give the file age-keygen wrote"
            ) from None
    if not out:
        raise UsageError(f"{path} holds no age identity (AGE-SECRET-KEY-1... lines)")
    return out


def new_identity(now: str) -> tuple[str, str]:
    """A fresh age identity as ``age-keygen`` writes its file (``# created``, ``# public key``,
    the ``AGE-SECRET-KEY-1...`` line), and its recipient (``age1...``)."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    text = f"# created: {now}\n# public key: {recipient}\n{identity}\n"
    return text, recipient


def decryptor(parsed: list[Any]) -> Callable[[bytes, str], bytes]:
    import pyrage

    from .archive import ArchiveError

    def decrypt(data: bytes, what: str) -> bytes:
        try:
            return bytes(pyrage.decrypt(data, parsed))
        except pyrage.DecryptError as e:
            raise ArchiveError(
                f"{what}: cannot decrypt ({e}); is --identity the key of one of the backup's "
                "recipients?"
            ) from None

    return decrypt
