"""``bundle keys ...`` and ``bundle root ...``: the vendor's key and trust-root commands.

Thin click layer: it reads files and passphrases, calls the trust layer, and prints.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import click

from keys.detached import load_signatures, signature_path
from keys.errors import Failed, PassphraseUnavailable, Refused
from keys.files import create_exclusive, read_capped, write_atomic
from keys.minisign import prehash, prehash_stream
from keys.secret_key import KDF_COSTS, MAX_SECRET_KEY_FILE_BYTES, SecretKey, SecretKeyFile
from keys.signing import sign_digest
from keys.threshold import check_threshold
from keys.trust_root import MAX_ROOT_BYTES, NamedKey, Role, TrustRoot
from keys.verify_cli import load_public_key, verify_file, verify_root

PASSPHRASE_VARIABLE = "BUNDLE_PASSPHRASE"
_KEY_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)

passphrase_file_option = click.option(
    "--passphrase-file", type=_existing_file,
    help=f"Read the passphrase from the first line of this file (else ${PASSPHRASE_VARIABLE}, else a prompt).")


# --- passphrases ----------------------------------------------------------------------------


def _passphrase_from_file(path: Path) -> bytes:
    line = read_capped(path, 4096, what="passphrase file").split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise PassphraseUnavailable("the passphrase file's first line is empty", where=path)
    return line


def obtain_passphrase(passphrase_file: Path | None, *, purpose: str, confirm: bool) -> bytes:
    """--passphrase-file, then $BUNDLE_PASSPHRASE, then an interactive prompt (never without a tty)."""
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
    key_file = SecretKeyFile.from_bytes(read_capped(path, MAX_SECRET_KEY_FILE_BYTES, what="secret key"),
                                        where=path)
    passphrase = None
    if key_file.encrypted:
        passphrase = obtain_passphrase(passphrase_file, purpose=f"key {key_file.id} ({path.name})", confirm=False)
    return key_file.decrypt(passphrase, where=path)


# --- bundle keys ----------------------------------------------------------------------------


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
@click.argument("file", type=_existing_file)
@click.option("--key", "key_path", type=_existing_file, required=True, help="Secret key (.key).")
@passphrase_file_option
@click.option("--trusted-comment", help="Signed comment [default: file:NAME].")
def keys_sign(file: Path, key_path: Path, passphrase_file: Path | None, trusted_comment: str | None) -> None:
    """Write FILE.minisig, which `minisign -V -p KEY.pub -m FILE` accepts."""
    secret = load_secret_key(key_path, passphrase_file)
    comment = trusted_comment if trusted_comment is not None else f"file:{file.name}"
    if "\n" in comment or "\r" in comment or len(comment.encode()) > 1024:
        raise click.UsageError("--trusted-comment must be one line of at most 1024 bytes")
    try:
        with open(file, "rb") as stream:
            digest = prehash_stream(stream)
    except OSError as error:
        raise Failed(f"cannot read: {error.strerror}", where=file) from None
    out = file.with_name(file.name + ".minisig")
    write_atomic(out, sign_digest(secret, digest, comment).to_bytes())
    click.echo(f"wrote {out} (key {secret.id})")


keys_group.add_command(verify_file)


# --- bundle root ----------------------------------------------------------------------------


def _named_key(pub_path: Path) -> NamedKey:
    """A public key labelled with its file name: ``keys/rel1.pub`` becomes ``rel1``."""
    try:
        return NamedKey(public_key=load_public_key(pub_path), name=pub_path.stem)
    except ValueError as error:
        raise Refused(str(error), where=pub_path, hint="rename the .pub file: its name is the key's label") from None


def _load_root(path: Path) -> tuple[bytes, TrustRoot]:
    raw = read_capped(path, MAX_ROOT_BYTES, what="trust root")
    return raw, TrustRoot.from_bytes(raw, where=path)


def _key_reference(root: TrustRoot, reference: str) -> str:
    """--remove-* accepts a .pub file, a key id, or a key's name in the root."""
    for key in root.all_keys().values():
        if reference in (key.id, key.name):
            return key.id
    path = Path(reference)
    if path.is_file():
        return load_public_key(path).id
    raise Refused(f"{reference!r} is neither a .pub file nor a key id or name in trust root version "
                  f"{root.version}")


@click.group("root")
def root_group() -> None:
    """The trust root: root keys (who may change trust) and release signers, with thresholds."""


@root_group.command("new")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--root-key", "root_keys", multiple=True, type=_existing_file, required=True,
              help="A root key's .pub (repeat). Keep root keys offline.")
@click.option("--root-threshold", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--signer", "signers", multiple=True, type=_existing_file, required=True,
              help="A release signer's .pub (repeat).")
@click.option("--threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct release signers every bundle needs.")
def root_new(out: Path, root_keys: tuple[Path, ...], root_threshold: int, signers: tuple[Path, ...],
             threshold: int) -> None:
    """Create version 1 of a trust root (unsigned: each root key holder then runs `root sign`)."""
    try:
        root = TrustRoot(version=1, root_keys=Role(tuple(map(_named_key, root_keys)), root_threshold),
                         release_signers=Role(tuple(map(_named_key, signers)), threshold))
    except ValueError as error:
        raise Refused(f"cannot make the trust root: {error}") from None
    create_exclusive(out, root.to_bytes(), mode=0o644)
    click.echo(f"created {out}: version 1, {root_threshold} of {len(root.root_keys.keys)} root keys, "
               f"{threshold} of {len(root.release_signers.keys)} release signers; unsigned")


@root_group.command("sign")
@click.argument("root_path", metavar="ROOT.json", type=_existing_file)
@click.option("--key", "key_path", type=_existing_file, required=True, help="A root key's secret key.")
@passphrase_file_option
def root_sign(root_path: Path, key_path: Path, passphrase_file: Path | None) -> None:
    """Add this key holder's signature as ROOT.json.<KEY ID>.minisig."""
    raw, root = _load_root(root_path)
    secret = load_secret_key(key_path, passphrase_file)
    signature = sign_digest(secret, prehash(raw), f"trust-root version:{root.version} file:{root_path.name}")
    out = signature_path(root_path, secret.id)
    write_atomic(out, signature.to_bytes())
    click.echo(f"wrote {out}")
    if root.root_keys.get(secret.id) is None:
        click.echo(f"note: key {secret.id} is not a root key of version {root.version}; its signature "
                   f"counts only towards accepting this root from version {root.version - 1}")
    result = check_threshold(raw, load_signatures(root_path), root.root_keys,
                             role_name=f"root keys of version {root.version}", revoked=root.revoked_keys)
    click.echo(f"{root_path}: {result.describe()}")


@root_group.command("rotate")
@click.option("--from", "from_path", type=_existing_file, required=True, help="The current trust root.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--add-root-key", multiple=True, type=_existing_file)
@click.option("--remove-root-key", multiple=True, help=".pub file, key id or key name.")
@click.option("--add-signer", multiple=True, type=_existing_file)
@click.option("--remove-signer", multiple=True, help=".pub file, key id or key name.")
@click.option("--root-threshold", type=click.IntRange(min=1), help="[default: unchanged]")
@click.option("--threshold", type=click.IntRange(min=1), help="[default: unchanged]")
def root_rotate(from_path: Path, out: Path, add_root_key, remove_root_key, add_signer, remove_signer,
                root_threshold: int | None, threshold: int | None) -> None:
    """Write the next version of the trust root. Removed keys are revoked for good.

    The new version must be signed by a threshold of the current root keys and a threshold of
    its own root keys before devices accept it.
    """
    _, root = _load_root(from_path)
    new = root.rotated(
        add_root_keys=[_named_key(p) for p in add_root_key],
        remove_root_keys=[_key_reference(root, r) for r in remove_root_key],
        add_signers=[_named_key(p) for p in add_signer],
        remove_signers=[_key_reference(root, r) for r in remove_signer],
        root_threshold=root_threshold, threshold=threshold)
    create_exclusive(out, new.to_bytes(), mode=0o644)
    revoked = {k.id for k in new.revoked_keys} - {k.id for k in root.revoked_keys}
    click.echo(f"created {out}: version {new.version}, unsigned; it needs {root.root_keys.threshold} "
               f"signature(s) from the root keys of version {root.version} and "
               f"{new.root_keys.threshold} from its own")
    for key_id in sorted(revoked):
        click.echo(f"  revokes {new.all_keys()[key_id].label()}")


root_group.add_command(verify_root)
