"""``bundle make | sign | verify | inspect``: thin commands over bundler/ and agent/ (docs/OPERATOR.md, "Bundles")."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest, signature_comment
from agent.medium import read_bundle
from agent.verify import signer_report
from bundler.bundle_summary import render, summary
from bundler.cli.options import EXISTING_DIR, EXISTING_FILE, ByteSize
from bundler.cli.passphrase import load_secret_key, passphrase_file_option
from bundler.make import DEFAULT_LEVEL, MakeOptions, make_bundle
from bundler.progress import StepProgress
from bundler.release import load_release
from bundler.verify import check_bundle
from keys.detached import load_root_chain, load_signatures, signature_path
from keys.files import write_atomic
from keys.rotation import accept_chain
from keys.signing import sign


def _pairs(values: tuple[str, ...], option: str, convert) -> dict:
    result = {}
    for value in values:
        name, sep, items = value.partition("=")
        if not sep or not items:
            raise click.UsageError(f"{option} takes COMPONENT=VALUE[,VALUE], not {value!r}")
        try:
            result[name] = tuple(convert(item) for item in items.split(","))
        except ValueError:
            raise click.UsageError(f"{option} {value!r}: bad value") from None
    return result


def _trusted_root(paths: tuple[Path, ...]):
    return accept_chain(load_root_chain(paths))


@click.command("make")
@click.option("--release", "release_path", type=EXISTING_FILE, required=True, help="The new release.toml.")
@click.option("--base", "base_path", type=EXISTING_FILE, help="The release machines have now (release.toml).")
@click.option("--full", is_flag=True, help="Carry every changed component whole, even with --base.")
@click.option("--key", "key_paths", type=EXISTING_FILE, multiple=True, required=True,
              help="A release signer's secret key (repeat to co-sign).")
@passphrase_file_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The bundle directory to create.")
@click.option("--volume-size", type=ByteSize(), default="2G", show_default=True,
              help="Largest volume file (at most 4 GiB - 1 for FAT32).")
@click.option("--level", type=click.IntRange(1, 22), default=DEFAULT_LEVEL, show_default=True,
              help="zstd level: higher is smaller and slower to make (never slower to apply).")
@click.option("--threads", type=click.IntRange(1, 64), default=MakeOptions().threads, show_default=True)
@click.option("--target", "targets", multiple=True, metavar="COMPONENT=SERIAL[,SERIAL]",
              help="Only these serials may receive COMPONENT when they do not have it yet.")
@click.option("--allow-downgrade", "downgrades", multiple=True, metavar="COMPONENT=SEQUENCE[,SEQUENCE]",
              help="Signed permission to replace exactly these installed sequences with a lower one.")
@click.option("--json", "as_json", is_flag=True)
def make(release_path, base_path, full, key_paths, passphrase_file, out, volume_size, level, threads, targets,
         downgrades, as_json):
    """Make a signed full or delta bundle from release descriptions."""
    release = load_release(release_path)
    base = load_release(base_path) if base_path else None
    keys = [load_secret_key(p, passphrase_file) for p in key_paths]
    options = MakeOptions(full=full, level=level, volume_size=volume_size, threads=threads,
                          targets=_pairs(targets, "--target", str), downgrades=_pairs(downgrades, "--allow-downgrade", int))
    with StepProgress() as progress:
        manifest = make_bundle(release, base, keys, out, options, progress)
    report = summary(manifest, None, [k.id for k in keys])
    if as_json:
        click.echo(json.dumps({"bundle": str(out), **report}, indent=2))
    else:
        click.echo(f"created {out}")
        click.echo("\n".join("  " + line for line in render(report)))


@click.command("sign")
@click.argument("bundle", type=EXISTING_DIR)
@click.option("--key", "key_path", type=EXISTING_FILE, required=True)
@passphrase_file_option
@click.option("--root", "root_paths", type=EXISTING_FILE, multiple=True,
              help="Trust root(s): report the signers against its threshold.")
def sign_bundle(bundle, key_path, passphrase_file, root_paths):
    """Add a release signer's co-signature to BUNDLE's manifest."""
    files = read_bundle(bundle)
    product = Manifest.from_stored(files.manifest_bytes, where=manifest_path(bundle)).product  # never sign garbage
    key = load_secret_key(key_path, passphrase_file)
    out = signature_path(manifest_path(bundle), key.id)
    write_atomic(out, sign(key, files.manifest_bytes, signature_comment(product)).to_bytes())
    click.echo(f"wrote {out}")
    if root_paths:
        result = signer_report(files.manifest_bytes, load_signatures(manifest_path(bundle)), _trusted_root(root_paths))
        click.echo(f"{bundle}: {result.describe()}")


@click.command("verify")
@click.argument("bundle", type=EXISTING_DIR)
@click.option("--root", "root_paths", type=EXISTING_FILE, multiple=True, required=True,
              help="The trust root; repeat with newer versions to check against a rotated root.")
@click.option("--base", "bases", multiple=True, metavar="COMPONENT=DIR",
              help="Apply COMPONENT's delta onto DIR in a temporary directory and check every file.")
@click.option("--apply", "apply", is_flag=True,
              help="Also build every full component in a temporary directory and check every file.")
@click.option("--work-dir", type=EXISTING_DIR, help="Where to apply [default: the system temp dir].")
@click.option("--json", "as_json", is_flag=True)
def verify(bundle, root_paths, bases, apply, work_dir, as_json):
    """Check BUNDLE as a device would: signatures, manifest, every stored byte; apply with --base."""
    base_dirs = {}
    for value in bases:
        name, sep, directory = value.partition("=")
        if not sep or not Path(directory).is_dir():
            raise click.UsageError(f"--base takes COMPONENT=DIR with an existing DIR, not {value!r}")
        base_dirs[name] = Path(directory)
    root = _trusted_root(root_paths)
    with StepProgress() as progress:
        verified, outcome = check_bundle(bundle, root, base_dirs, apply=apply, work_dir=work_dir,
                                         progress=progress)
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "valid": True, "signatures": verified.signatures.to_json(),
                               "components": outcome}, indent=2))
        return
    click.echo(f"{bundle}: valid bundle for {verified.manifest.product}, {verified.signatures.describe()}")
    for name, text in outcome.items():
        click.echo(f"  {name}: {text}")


@click.command("inspect")
@click.argument("bundle", type=EXISTING_DIR)
@click.option("--root", "root_paths", type=EXISTING_FILE, multiple=True,
              help="Trust root(s): show signers against its threshold.")
@click.option("--json", "as_json", is_flag=True)
def inspect(bundle, root_paths, as_json):
    """Show what BUNDLE carries: components, from/to versions, file changes, signers."""
    files = read_bundle(bundle)
    manifest = Manifest.from_stored(files.manifest_bytes, where=manifest_path(bundle))
    signers = signer_report(files.manifest_bytes, files.signatures, _trusted_root(root_paths)) if root_paths else None
    report = summary(manifest, signers, [s.key_id_text for s in files.signatures])
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), **report}, indent=2))
    else:
        click.echo("\n".join(render(report)))
