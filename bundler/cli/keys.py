"""``bundle keys new | passphrase | sign | verify``: minisign key pairs and detached signatures
(docs/OPERATOR.md, "Keys"). Thin: it reads files and passphrases, calls keys/, prints."""

from __future__ import annotations

import re
from pathlib import Path

import click

from agent.cli.output import json_option, print_json, print_outcome
from bundler.cli.options import EXISTING_FILE
from bundler.cli.passphrase import load_secret_key, obtain_passphrase, passphrase_file_option, read_secret_key_file
from keys.errors import Failed
from keys.files import create_exclusive, write_atomic
from keys.printable import echo
from keys.secret_key import DEFAULT_COST, KDF_COSTS, SecretKey
from keys.signing import BadTrustedComment, file_comment, sign_digest, trusted_comment_bytes
from keys.verify_files import load_public_key, prehash_file, verify_detached

_KEY_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


@click.group("keys")
def keys_group() -> None:
    """minisign key pairs and detached signatures.

    Keys are minisign's own files: `minisign -S -s NAME.key` signs with a key made here, and a
    key made by `minisign -G` (encrypted or -W) signs bundles and trust roots.
    """


@keys_group.command("new")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Where NAME.key and NAME.pub are created.")
@click.option("--no-passphrase", is_flag=True, help="Store the secret key unencrypted (test keys only).")
@passphrase_file_option
@click.option("--kdf-cost", type=click.Choice(list(KDF_COSTS)), default=DEFAULT_COST, show_default=True,
              help="scrypt cost of the passphrase: sensitive is minisign's own (1 GiB, a few seconds); "
                   "interactive (16 MiB) is for test keys.")
@json_option
def keys_new(name: str, directory: Path, no_passphrase: bool, passphrase_file: Path | None, kdf_cost: str,
             as_json: bool) -> None:
    """Create the minisign key pair DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub."""
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
    protection = "unencrypted" if passphrase is None else f"encrypted, scrypt {kdf_cost}"
    print_outcome(as_json, f"created {secret_path} ({protection}) and {public_path}, key id {secret.id}",
                  files=[str(secret_path), str(public_path)], key_id=secret.id)


@keys_group.command("sign")
@click.argument("file", type=EXISTING_FILE)
@click.option("--key", "key_path", type=EXISTING_FILE, required=True,
              help="Secret key (.key), made by `bundle keys new` or `minisign -G`.")
@passphrase_file_option
@click.option("--trusted-comment", help="Signed comment [default: file:NAME].")
@json_option
def keys_sign(file: Path, key_path: Path, passphrase_file: Path | None, trusted_comment: str | None,
              as_json: bool) -> None:
    """Write FILE.minisig, which `minisign -V -p KEY.pub -m FILE` accepts."""
    secret = load_secret_key(key_path, passphrase_file)
    comment = trusted_comment if trusted_comment is not None else file_comment("file:", file.name)
    try:
        trusted_comment_bytes(comment)
    except BadTrustedComment as error:
        raise click.UsageError(f"--trusted-comment: {error.message}") from None
    digest = prehash_file(file)
    out = file.with_name(file.name + ".minisig")
    write_atomic(out, sign_digest(secret, digest, comment).to_bytes())
    print_outcome(as_json, f"wrote {out} (key {secret.id})", files=[str(out)], key_id=secret.id)


@keys_group.command("verify")
@click.argument("file", type=EXISTING_FILE)
@click.option("--pub", "pub_path", type=EXISTING_FILE, required=True, help="The signer's public key (.pub).")
@click.option("--signature", "signature_path", type=EXISTING_FILE,
              help="The signature file [default: FILE.minisig].")
@json_option
def keys_verify(file: Path, pub_path: Path, signature_path: Path | None, as_json: bool) -> None:
    """Check a detached minisign signature of FILE. Exit 0 if good, 3 if not."""
    public_key = load_public_key(pub_path)
    signature = verify_detached(file, public_key, signature_path or file.with_name(file.name + ".minisig"))
    if as_json:
        print_json({"file": str(file), "valid": True, "key_id": public_key.id,
                    "trusted_comment": signature.trusted_comment})
        return
    # Printable: a path need not be UTF-8, and the trusted comment is the signer's text - it may hold anything.
    echo(f"{file}: good signature by key {public_key.id}")
    echo(f"trusted comment: {signature.trusted_comment}")


@keys_group.command("passphrase")
@click.argument("key_path", metavar="KEY", type=EXISTING_FILE)
@click.option("--passphrase-file", type=EXISTING_FILE,
              help="The current passphrase (first line), else $BUNDLE_PASSPHRASE, else a prompt.")
@click.option("--new-passphrase-file", type=EXISTING_FILE,
              help="The new passphrase (first line) [default: ask twice on the terminal].")
@click.option("--no-passphrase", is_flag=True, help="Store the key unencrypted from now on (test keys only).")
@click.option("--kdf-cost", type=click.Choice(list(KDF_COSTS)), default=DEFAULT_COST, show_default=True,
              help="scrypt cost of the new passphrase.")
@json_option
def keys_passphrase(key_path: Path, passphrase_file: Path | None, new_passphrase_file: Path | None,
                    no_passphrase: bool, kdf_cost: str, as_json: bool) -> None:
    """Change, add or remove KEY's passphrase. The key and its id stay the same; the file is
    replaced atomically, in minisign's format (an older bundle key file is converted)."""
    if no_passphrase and new_passphrase_file:
        raise click.UsageError("--no-passphrase and --new-passphrase-file contradict each other")
    before = read_secret_key_file(key_path)
    secret = load_secret_key(key_path, passphrase_file)
    passphrase = None if no_passphrase else obtain_passphrase(
        new_passphrase_file, purpose=f"the new passphrase of {key_path}", confirm=True, use_environment=False)
    write_atomic(key_path, secret.to_bytes(passphrase, cost=kdf_cost), mode=0o600)
    protection = "unencrypted" if passphrase is None else f"encrypted, scrypt {kdf_cost}"
    converted = " (converted from the older bundle key format)" if before.format != "minisign" else ""
    print_outcome(as_json, f"rewrote {key_path} ({protection}), key id {secret.id}{converted}",
                  files=[str(key_path)], key_id=secret.id)
