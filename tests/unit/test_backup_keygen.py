"""`kubecare backup keygen` (issue 19, item 12): an age identity without age-keygen."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kubecare.backup.secrets import decryptor, encryptor, identities, recipients
from kubecare.cli.app import main


def test_the_key_file_is_private_and_decrypts_what_its_recipient_encrypts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "backup-key.txt"
    assert main(["backup", "keygen", "-o", str(key)]) == 0
    recipient = capsys.readouterr().out.strip()
    assert recipient.startswith("age1") and stat.S_IMODE(key.stat().st_mode) == 0o600
    lines = key.read_text().splitlines()  # age-keygen's layout
    assert lines[0].startswith("# created: ") and lines[1] == f"# public key: {recipient}"
    assert lines[2].startswith("AGE-SECRET-KEY-1") and len(lines) == 3
    sealed = encryptor(recipients([recipient]))(b"a Secret's JSON")
    assert decryptor(identities(key))(sealed, "secret") == b"a Secret's JSON"


def test_an_existing_key_file_is_never_replaced_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "key.txt"
    key.write_text("AGE-SECRET-KEY-1 the only copy\n")
    with pytest.raises(SystemExit) as exit_:
        main(["backup", "keygen"])  # -o is required: no secret on a terminal by default
    assert exit_.value.code == 2
    assert main(["backup", "keygen", "-o", str(key)]) == 2
    assert "exists" in capsys.readouterr().err
    assert key.read_text() == "AGE-SECRET-KEY-1 the only copy\n"
    assert main(["backup", "keygen", "-o", str(key), "--overwrite"]) == 0
    assert key.read_text().startswith("# created: ")
