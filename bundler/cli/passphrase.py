"""Secret keys for the signing commands, and the passphrases that decrypt them.

A passphrase comes from ``--passphrase-file``, else ``$BUNDLE_PASSPHRASE``, else a prompt - never
without a terminal (docs/OPERATOR.md, "Keys").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bundler.cli.options import EXISTING_FILE
from keys.errors import PassphraseUnavailable
from keys.files import read_capped
from keys.secret_key import MAX_SECRET_KEY_FILE_BYTES, SecretKey, SecretKeyFile

PASSPHRASE_VARIABLE = "BUNDLE_PASSPHRASE"

passphrase_file_option = click.option(
    "--passphrase-file", type=EXISTING_FILE,
    help=f"Read the passphrase from the first line of this file (else ${PASSPHRASE_VARIABLE}, else a prompt).")


def _passphrase_from_file(path: Path) -> bytes:
    line = read_capped(path, 4096, what="passphrase file").split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise PassphraseUnavailable("the passphrase file's first line is empty", where=path)
    return line


def obtain_passphrase(passphrase_file: Path | None, *, purpose: str, confirm: bool) -> bytes:
    """--passphrase-file, then $BUNDLE_PASSPHRASE, then an interactive prompt (never without a tty).
    Raises PassphraseUnavailable, Failed."""
    if passphrase_file is not None:
        return _passphrase_from_file(passphrase_file)
    if os.environ.get(PASSPHRASE_VARIABLE):
        return os.environ[PASSPHRASE_VARIABLE].encode("utf-8")
    if not sys.stdin.isatty():
        raise PassphraseUnavailable(
            f"{purpose} needs a passphrase and there is no terminal to ask for one",
            hint=f"use --passphrase-file FILE or set {PASSPHRASE_VARIABLE}"
                 + (", or --no-passphrase for an unencrypted key" if confirm else ""))
    text = click.prompt(f"Passphrase for {purpose}", hide_input=True, confirmation_prompt=confirm)
    if not text:
        raise PassphraseUnavailable("an empty passphrase is not allowed")
    return text.encode("utf-8")


def load_secret_key(path: Path, passphrase_file: Path | None) -> SecretKey:
    """The secret key in ``path``, decrypted. Raises MalformedKey, WrongPassphrase, PassphraseUnavailable, Failed."""
    key_file = SecretKeyFile.from_bytes(read_capped(path, MAX_SECRET_KEY_FILE_BYTES, what="secret key"),
                                        where=path)
    passphrase = None
    if key_file.encrypted:
        passphrase = obtain_passphrase(passphrase_file, purpose=f"key {key_file.id} ({path.name})", confirm=False)
    return key_file.decrypt(passphrase, where=path)
