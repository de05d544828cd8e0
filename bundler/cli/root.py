"""``bundle root new | sign | rotate | verify``: the trust root - root keys (who may change trust)
and release signers, with thresholds (docs/OPERATOR.md, "Trust root"; docs/TRUST.md)."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.output import json_option, print_json, print_outcome
from agent.cli.root import verify_root
from bundler.cli.options import EXISTING_FILE
from bundler.cli.passphrase import load_secret_key, passphrase_file_option
from keys.detached import load_signatures, signature_path
from keys.errors import Refused
from keys.files import create_exclusive, read_capped, write_atomic
from keys.minisign import prehash
from keys.signing import file_comment, sign_digest
from keys.threshold import check_threshold
from keys.trust_root import MAX_ROOT_BYTES, NamedKey, Role, TrustRoot
from keys.verify_files import load_public_key


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
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The trust root file to create (never overwritten).")
@click.option("--root-key", "root_keys", multiple=True, type=EXISTING_FILE, required=True,
              help="A root key's .pub (repeat). Keep root keys offline.")
@click.option("--root-threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct root keys every later version of the trust root needs.")
@click.option("--signer", "signers", multiple=True, type=EXISTING_FILE, required=True,
              help="A release signer's .pub (repeat).")
@click.option("--threshold", type=click.IntRange(min=1), default=1, show_default=True,
              help="Distinct release signers every bundle needs.")
@click.option("--version", "version", type=click.IntRange(min=1), default=1, show_default=True,
              help="The version: 1 for a new product; above the machines' version for a root that replaces "
                   "theirs when the root keys are lost (docs/TRUST.md, \"Replacing the trust root\").")
@json_option
def root_new(out: Path, root_keys: tuple[Path, ...], root_threshold: int, signers: tuple[Path, ...],
             threshold: int, version: int, as_json: bool) -> None:
    """Create a trust root, version 1 unless --version (unsigned: each root key holder then runs `root sign`)."""
    try:
        root = TrustRoot(version=version, root_keys=Role(tuple(map(_named_key, root_keys)), root_threshold),
                         release_signers=Role(tuple(map(_named_key, signers)), threshold))
    except ValueError as error:
        raise Refused(f"cannot make the trust root: {error}") from None
    create_exclusive(out, root.to_bytes(), mode=0o644)
    print_outcome(as_json, f"created {out}: version {version}, {root_threshold} of {len(root.root_keys.keys)} "
                           f"root keys, {threshold} of {len(root.release_signers.keys)} release signers; unsigned",
                  files=[str(out)], root_version=version)


@root_group.command("sign")
@click.argument("root_path", metavar="ROOT.json", type=EXISTING_FILE)
@click.option("--key", "key_path", type=EXISTING_FILE, required=True, help="A root key's secret key.")
@passphrase_file_option
@json_option
def root_sign(root_path: Path, key_path: Path, passphrase_file: Path | None, as_json: bool) -> None:
    """Add this key holder's signature to ROOT.json as ROOT.json.<KEY ID>.minisig."""
    raw, root = _load_root(root_path)
    secret = load_secret_key(key_path, passphrase_file)
    signature = sign_digest(secret, prehash(raw), file_comment(f"trust-root version:{root.version} file:",
                                                                root_path.name))
    out = signature_path(root_path, secret.id)
    write_atomic(out, signature.to_bytes())
    result = check_threshold(raw, load_signatures(root_path), root.root_keys,
                             role_name=f"root keys of version {root.version}", revoked=root.revoked_keys)
    is_root_key = root.root_keys.get(secret.id) is not None
    if as_json:
        print_json({"signature": str(out), "key_id": secret.id, "root_version": root.version,
                    "root_key": is_root_key, "signers": result.to_json()})
        return
    click.echo(f"wrote {out}")
    if not is_root_key:
        click.echo(f"note: key {secret.id} is not a root key of version {root.version}; its signature "
                   f"counts only towards accepting this root from version {root.version - 1}")
    click.echo(f"{root_path}: {result.describe()}")


@root_group.command("rotate")
@click.option("--from", "from_path", type=EXISTING_FILE, required=True, help="The current trust root.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The next version's file to create (never overwritten).")
@click.option("--add-root-key", multiple=True, type=EXISTING_FILE, help="A new root key's .pub (repeat).")
@click.option("--remove-root-key", multiple=True, help=".pub file, key id or key name.")
@click.option("--add-signer", multiple=True, type=EXISTING_FILE, help="A new release signer's .pub (repeat).")
@click.option("--remove-signer", multiple=True, help=".pub file, key id or key name.")
@click.option("--root-threshold", type=click.IntRange(min=1), help="[default: unchanged]")
@click.option("--threshold", type=click.IntRange(min=1), help="[default: unchanged]")
@json_option
def root_rotate(from_path: Path, out: Path, add_root_key, remove_root_key, add_signer, remove_signer,
                root_threshold: int | None, threshold: int | None, as_json: bool) -> None:
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
    lines = [f"created {out}: version {new.version}, unsigned; it needs {root.root_keys.threshold} "
             f"signature(s) from the root keys of version {root.version} and {new.root_keys.threshold} from its own"]
    lines += [f"  revokes {new.all_keys()[key_id].label()}" for key_id in sorted(revoked)]
    print_outcome(as_json, "\n".join(lines), files=[str(out)], root_version=new.version, revoked=sorted(revoked))


root_group.add_command(verify_root)
