"""Secret keys for the signing commands, and the passphrases that decrypt them.

A key's passphrase comes from its ``--passphrase-file``, else ``$BUNDLE_PASSPHRASE`` (only when
one key is used), else a prompt - never without a terminal. With several ``--key``, each key
has its own source: ``--passphrase-file`` is given once per ``--key``, in the same order
(docs/OPERATOR.md, "Keys").
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
    help=f"Read the key's passphrase from the first line of this file (else ${PASSPHRASE_VARIABLE}, "
         "else a prompt).")

passphrase_files_option = click.option(
    "--passphrase-file", "passphrase_files", type=EXISTING_FILE, multiple=True,
    help="The passphrase of the Nth --key is the first line of the Nth --passphrase-file: give one per "
         f"--key, in the same order (a key without a passphrase ignores its file). Without any: "
         f"${PASSPHRASE_VARIABLE} for a single key, else a prompt per key.")


def _passphrase_from_file(path: Path) -> bytes:
    line = read_capped(path, 4096, what="passphrase file").split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise PassphraseUnavailable("the passphrase file's first line is empty", where=path)
    return line


def obtain_passphrase(passphrase_file: Path | None, *, purpose: str, confirm: bool,
                      use_environment: bool = True) -> bytes:
    """--passphrase-file, then $BUNDLE_PASSPHRASE, then an interactive prompt (never without a tty).
    Raises PassphraseUnavailable, Failed."""
    if passphrase_file is not None:
        return _passphrase_from_file(passphrase_file)
    if use_environment and os.environb.get(PASSPHRASE_VARIABLE.encode()):
        return os.environb[PASSPHRASE_VARIABLE.encode()]  # its bytes as set: never decoded, so never echoed
    if not sys.stdin.isatty():
        raise PassphraseUnavailable(
            f"{purpose} needs a passphrase and there is no terminal to ask for one",
            hint="use --passphrase-file FILE" + (f" or set {PASSPHRASE_VARIABLE}" if use_environment else
                                                  f" for each --key ({PASSPHRASE_VARIABLE} serves a single key)")
                 + (", or --no-passphrase for an unencrypted key" if confirm else ""))
    try:
        text = click.prompt(f"Passphrase for {purpose}", hide_input=True, confirmation_prompt=confirm)
    except UnicodeDecodeError:  # the terminal sent bytes its encoding does not have: never shown
        raise PassphraseUnavailable("the passphrase typed is not text in this terminal's encoding",
                                    hint="type it in the terminal's encoding, or use --passphrase-file FILE") from None
    if not text:
        raise PassphraseUnavailable("an empty passphrase is not allowed")
    return text.encode("utf-8", "surrogateescape")


def read_secret_key_file(path: Path) -> SecretKeyFile:
    """Raises MalformedKey, Failed, Refused."""
    return SecretKeyFile.from_bytes(read_capped(path, MAX_SECRET_KEY_FILE_BYTES, what="secret key"), where=path)


def load_secret_key(path: Path, passphrase_file: Path | None, *, use_environment: bool = True) -> SecretKey:
    """The secret key in ``path``, decrypted. Raises MalformedKey, WrongPassphrase, PassphraseUnavailable, Failed."""
    key_file = read_secret_key_file(path)
    passphrase = None
    if key_file.encrypted:
        passphrase = obtain_passphrase(passphrase_file, purpose=f"secret key {path}", confirm=False,
                                       use_environment=use_environment)
    return key_file.decrypt(passphrase, where=path)


def load_secret_keys(paths: tuple[Path, ...], passphrase_files: tuple[Path, ...]) -> list[SecretKey]:
    """Each ``--key`` decrypted with its own passphrase source: the Nth file is the Nth key's.
    Raises click.UsageError (the counts differ), and what :func:`load_secret_key` raises."""
    if passphrase_files and len(passphrase_files) != len(paths):
        raise click.UsageError(
            f"{len(paths)} --key but {len(passphrase_files)} --passphrase-file: give one --passphrase-file "
            "per --key, in the same order (each key has its own passphrase)")
    files = passphrase_files or (None,) * len(paths)
    # One shared environment variable cannot be the passphrase of several keys held by several people.
    return [load_secret_key(path, file, use_environment=len(paths) == 1) for path, file in zip(paths, files)]
