"""``bundle token make | sign``: technician tokens - signed permission for one machine (or all) to
do what the unattended path may not (docs/TRUST.md, "Technician tokens"). The format and its
checks are agent/format/token.py, shared with the device."""

from __future__ import annotations

import hashlib
from pathlib import Path

import click

from agent.cli.output import json_option, print_json
from agent.format.token import (ACTIONS, ALL_SERIALS, MAX_TOKEN_BYTES, TechnicianToken, id_of_file_name, new_id,
                                signature_comment, signer_report)
from bundler.cli.options import EXISTING_FILE, root_chain_option
from bundler.cli.passphrase import load_secret_key, load_secret_keys, passphrase_file_option, passphrase_files_option
from keys.detached import load_root_chain, load_signatures, signature_path
from keys.errors import Failed, Refused
from keys.files import create_exclusive, read_capped, write_atomic
from keys.rotation import accept_chain
from keys.secret_key import SecretKey
from keys.trust_root import MAX_ROOT_BYTES, TrustRoot
from keys.signing import sign
from keys.threshold import ThresholdResult


def _downgrades(values: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    result = []
    for value in values:
        name, sep, sequence = value.partition("=")
        if not sep or not sequence.isdigit():
            raise click.UsageError(f"--downgrade takes COMPONENT=SEQUENCE (one sequence), not {value!r}")
        result.append((name, int(sequence)))
    return tuple(result)


def _trust_root_sha256(path: Path | None) -> str | None:
    """The SHA-256 of the new root file's exact bytes - what the device compares with the root on
    the stick. The file must be a trust root: a token never names garbage. Raises MalformedTrustRoot."""
    if path is None:
        return None
    raw = read_capped(path, MAX_ROOT_BYTES, what="trust root")
    TrustRoot.from_bytes(raw, where=path)
    return hashlib.sha256(raw).hexdigest()


def _sign(path: Path, raw: bytes, token: TechnicianToken, key: SecretKey) -> Path:
    out = signature_path(path, key.id)
    write_atomic(out, sign(key, raw, signature_comment(token)).to_bytes())
    return out


def _signers(path: Path, raw: bytes, root_paths: tuple[Path, ...]) -> ThresholdResult | None:
    if not root_paths:
        return None
    return signer_report(raw, load_signatures(path), accept_chain(load_root_chain(root_paths)))


def _describe(token: TechnicianToken) -> str:
    serials = "every machine" if token.serials == (ALL_SERIALS,) else "serial " + ", ".join(token.serials)
    allows = ", ".join(token.actions)
    if token.downgrade:
        allows += " (" + ", ".join(f"{c} to sequence {s}" for c, s in token.downgrade) + ")"
    if token.trust_root:
        allows += f" (to the trust root with SHA-256 {token.trust_root})"
    return f"token {token.id} for {token.product}, {serials}: allows {allows}"


@click.group("token")
def token_group() -> None:
    """Technician tokens: signed permission for what the unattended path may not do."""


@token_group.command("make")
@click.option("--product", required=True, help="The product the token is for (as in the machines' configuration).")
@click.option("--serial", "serials", multiple=True, help="A machine's serial (repeat for several machines).")
@click.option("--all-serials", is_flag=True, help="Every machine of the product (instead of --serial).")
@click.option("--allow", "actions", multiple=True, required=True, type=click.Choice(ACTIONS),
              help="An action the token allows (repeat).")
@click.option("--downgrade", "downgrades", multiple=True, metavar="COMPONENT=SEQUENCE",
              help="With --allow downgrade: the exact older sequence COMPONENT may be taken back to (repeat per "
                   "component).")
@click.option("--trust-root", "trust_root_path", type=EXISTING_FILE, metavar="NEW_ROOT.json",
              help="With --allow replace-trust-root: the new trust root (signed or not: the token names the SHA-256 "
                   "of its exact bytes, so put exactly this file, with its signatures, on the stick).")
@click.option("--reason", default="", help="Why, for the audit log (one line, at most 200 characters).")
@click.option("--key", "key_paths", type=EXISTING_FILE, multiple=True, required=True,
              help="A release signer's secret key (repeat to co-sign; `bundle token sign` adds more later).")
@passphrase_files_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="The folder to write <id>.json and its signatures to (created if missing); copy its "
                   "content to STICK/<product>/tokens/.")
@root_chain_option("A trust root: report the signers against its release-signer threshold.")
@json_option
def token_make(product, serials, all_serials, actions, downgrades, trust_root_path, reason, key_paths,
               passphrase_files, out, root_paths, as_json):
    """Make a technician token with a fresh id, signed by each --key."""
    if bool(serials) == all_serials:
        raise click.UsageError("give the machines' serials with --serial, or --all-serials for every machine")
    if ("downgrade" in actions) != bool(downgrades):
        raise click.UsageError("--allow downgrade needs --downgrade COMPONENT=SEQUENCE (the exact sequence allowed), "
                               "and --downgrade needs --allow downgrade")
    if ("replace-trust-root" in actions) != (trust_root_path is not None):
        raise click.UsageError("--allow replace-trust-root needs --trust-root NEW_ROOT.json (the one root allowed), "
                               "and --trust-root needs --allow replace-trust-root")
    trust_root = _trust_root_sha256(trust_root_path)
    try:
        token = TechnicianToken(id=new_id(), product=product, serials=(ALL_SERIALS,) if all_serials else serials,
                                actions=tuple(dict.fromkeys(actions)), downgrade=_downgrades(downgrades),
                                reason=reason, trust_root=trust_root)
    except ValueError as error:
        raise Refused(f"cannot make the token: {error}", hint="see `bundle token make --help`") from None
    keys = load_secret_keys(key_paths, passphrase_files)  # before anything is written: a wrong passphrase costs nothing
    raw = token.to_bytes()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Failed(f"cannot create the folder: {error.strerror}", where=out) from None
    path = out / token.file_name
    create_exclusive(path, raw, mode=0o644)
    written = [_sign(path, raw, token, key) for key in keys]
    result = _signers(path, raw, root_paths)
    if as_json:
        print_json({"token": str(path), **token.to_json(), "signatures": [str(p) for p in written],
                    "key_ids": [k.id for k in keys], "signers": result.to_json() if result else None})
        return
    click.echo(f"created {path}: {_describe(token)}")
    for signature in written:
        click.echo(f"wrote {signature}")
    if result is not None:
        click.echo(f"{path}: {result.describe()}")


@token_group.command("sign")
@click.argument("token_path", metavar="TOKEN.json", type=EXISTING_FILE)
@click.option("--key", "key_path", type=EXISTING_FILE, required=True, help="The co-signer's secret key.")
@passphrase_file_option
@root_chain_option("A trust root: report the signers against its release-signer threshold.")
@json_option
def token_sign(token_path, key_path, passphrase_file, root_paths, as_json):
    """Add a release signer's co-signature to TOKEN.json (k-of-n, like `bundle sign`)."""
    raw = read_capped(token_path, MAX_TOKEN_BYTES, what="token")
    token = TechnicianToken.from_bytes(raw, where=token_path)  # never sign garbage
    if id_of_file_name(token_path.name) != token.id:
        # The device reads only <id>.json: a renamed copy would be signed and never found.
        raise Refused(f"the file name does not match the token's id {token.id}", where=token_path,
                      hint=f"keep the name bundle token make gave it: {token.file_name}")
    key = load_secret_key(key_path, passphrase_file)
    out = _sign(token_path, raw, token, key)
    result = _signers(token_path, raw, root_paths)
    if as_json:
        print_json({"signature": str(out), "key_id": key.id, "signers": result.to_json() if result else None})
        return
    click.echo(f"wrote {out}")
    if result is not None:
        click.echo(f"{token_path}: {result.describe()}")
