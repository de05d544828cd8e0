"""``bundle keys new | sign | verify``: Ed25519 key pairs and detached signatures in minisign's
formats (docs/OPERATOR.md, "Keys"). Thin: it reads files and passphrases, calls keys/, prints."""

from __future__ import annotations

import re
from pathlib import Path

import click

from bundler.cli.options import EXISTING_FILE
from bundler.cli.passphrase import load_secret_key, obtain_passphrase, passphrase_file_option
from keys.errors import Failed
from keys.files import create_exclusive, write_atomic
from keys.printable import echo
from keys.secret_key import KDF_COSTS, SecretKey
from keys.signing import sign_digest
from keys.verify_files import load_public_key, prehash_file, verify_detached

_KEY_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


@click.group("keys")
def keys_group() -> None:
    """Ed25519 key pairs and detached signatures in minisign's formats."""


@keys_group.command("new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where NAME.key and NAME.pub are created.")
@click.option("--no-passphrase", is_flag=True, help="Store the secret key unencrypted (test keys only).")
@passphrase_file_option
@click.option("--kdf-cost", type=click.Choice(list(KDF_COSTS)), default="moderate", show_default=True,
              help="Argon2id cost for the passphrase (moderate: about 1 s and 256 MiB).")
def keys_new(name: str, directory: Path, no_passphrase: bool, passphrase_file: Path | None, kdf_cost: str) -> None:
    """Create the key pair DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub (minisign format)."""
    if not _KEY_FILE_NAME.fullmatch(name):
        raise click.UsageError(f"key name {name!r}: use 1-64 letters, digits or ._@+-, starting with a "
                               "letter or digit (it becomes the key's label in trust roots)")
    if no_passphrase and passphrase_file:
        raise click.UsageError("--no-passphrase and --passphrase-file contradict each other")
    secret_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (secret_path, public_path):
        if path.exists() or path.is_symlink():
            raise Failed("already exists; key files are never overwritten", where=path,
                         hint="choose another name or --dir")
    passphrase = None if no_passphrase else obtain_passphrase(
        passphrase_file, purpose=f"the new key {name}", confirm=True)
    secret = SecretKey.generate()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_exclusive(secret_path, secret.to_bytes(passphrase, cost=kdf_cost), mode=0o600)
    try:
        create_exclusive(public_path, secret.public_key.to_bytes(), mode=0o644)
    except BaseException:
        secret_path.unlink(missing_ok=True)  # never leave half a key pair behind
        raise
    protection = "unencrypted" if passphrase is None else f"encrypted, argon2id {kdf_cost}"
    click.echo(f"created {secret_path} ({protection}) and {public_path}, key id {secret.id}")


@keys_group.command("sign")
@click.argument("file", type=EXISTING_FILE)
@click.option("--key", "key_path", type=EXISTING_FILE, required=True, help="Secret key (.key).")
@passphrase_file_option
@click.option("--trusted-comment", help="Signed comment [default: file:NAME].")
def keys_sign(file: Path, key_path: Path, passphrase_file: Path | None, trusted_comment: str | None) -> None:
    """Write FILE.minisig, which `minisign -V -p KEY.pub -m FILE` accepts."""
    secret = load_secret_key(key_path, passphrase_file)
    comment = trusted_comment if trusted_comment is not None else f"file:{file.name}"
    if "\n" in comment or "\r" in comment or len(comment.encode()) > 1024:
        raise click.UsageError("--trusted-comment must be one line of at most 1024 bytes")
    digest = prehash_file(file)
    out = file.with_name(file.name + ".minisig")
    write_atomic(out, sign_digest(secret, digest, comment).to_bytes())
    click.echo(f"wrote {out} (key {secret.id})")


@keys_group.command("verify")
@click.argument("file", type=EXISTING_FILE)
@click.option("--pub", "pub_path", type=EXISTING_FILE, required=True, help="The signer's public key (.pub).")
@click.option("--signature", "signature_path", type=EXISTING_FILE,
              help="The signature file [default: FILE.minisig].")
def keys_verify(file: Path, pub_path: Path, signature_path: Path | None) -> None:
    """Check a detached minisign signature of FILE. Exit 0 if good, 3 if not."""
    public_key = load_public_key(pub_path)
    signature = verify_detached(file, public_key, signature_path or file.with_name(file.name + ".minisig"))
    # Printable: a path need not be UTF-8, and the trusted comment is the signer's text - it may hold anything.
    echo(f"{file}: good signature by key {public_key.id}")
    echo(f"trusted comment: {signature.trusted_comment}")
