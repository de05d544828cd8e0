"""``bundle make | sign | verify | inspect``: thin commands over bundler/ and agent/ (docs/OPERATOR.md, "Bundles")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from agent.cli.output import json_option, print_json
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import FORMAT, Manifest, signature_comment
from agent.format.stick import bundle_id
from agent.medium import read_bundle
from agent.verify import signer_report
from bundler.bundle_summary import render, summary
from bundler.cli import examine
from bundler.cli.options import EXISTING_DIR, EXISTING_FILE, ByteSize, root_chain_option
from bundler.cli.passphrase import load_secret_key, load_secret_keys, passphrase_file_option, passphrase_files_option
from bundler.make import DEFAULT_LEVEL, MakeOptions, make_bundle
from agent.cli.progress import ProgressDisplay
from bundler.release import load_release
from bundler.verify import check_bundle
from keys.detached import load_root_chain, load_signatures, signature_path
from keys.files import write_atomic
from keys.rotation import accept_chain
from keys.signing import sign


DROPPED_SHOWN = 20  # a build host's SELinux labels are on every file: the first few say enough


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
@passphrase_files_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="The bundle directory to create.")
@click.option("--volume-size", type=ByteSize(), default="2G", show_default=True,
              help="Largest volume file (at most 4 GiB - 1 for FAT32).")
@click.option("--level", type=click.IntRange(1, 22), default=DEFAULT_LEVEL, show_default=True,
              help="zstd level: higher is smaller and slower to make (never slower to apply).")
@click.option("--threads", type=click.IntRange(1, 64), default=MakeOptions().threads, show_default=True,
              help="Worker threads that compress and hash.")
@click.option("--target", "targets", multiple=True, metavar="COMPONENT=SERIAL[,SERIAL]",
              help="Only these serials may receive COMPONENT when they do not have it yet.")
@click.option("--allow-downgrade", "downgrades", multiple=True, metavar="COMPONENT=SEQUENCE[,SEQUENCE]",
              help="Signed permission to replace exactly these installed sequences with a lower one.")
@click.option("--format", "format_version", type=click.IntRange(2, FORMAT), default=FORMAT, show_default=True,
              help="Manifest format: 2 for machines whose agent reads only format 2 (docs/FORMAT.md, "
                   "\"Format version\"); such a bundle can carry the agent that reads the newer one.")
@click.option("--codecs", "codec_names", metavar="CODEC[,CODEC]",
              help="Use only these codecs: those the machines' agent has, as its refusal of a bundle lists them "
                   "(docs/FORMAT.md, \"Codecs\"). Default: every codec this bundler writes.")
@click.option("--drop-xattrs", is_flag=True,
              help="Make the bundle even though release files have extended attributes (ACLs, file capabilities, "
                   "SELinux labels), which bundles do not carry; lists the paths that lose them.")
@json_option
def make(release_path, base_path, full, key_paths, passphrase_files, out, volume_size, level, threads, targets,
         downgrades, format_version, codec_names, drop_xattrs, as_json):
    """Make a signed full or delta bundle from release descriptions."""
    release = load_release(release_path)
    base = load_release(base_path) if base_path else None
    keys = load_secret_keys(key_paths, passphrase_files)
    options = MakeOptions(full=full, level=level, volume_size=volume_size, threads=threads,
                          targets=_pairs(targets, "--target", str), downgrades=_pairs(downgrades, "--allow-downgrade", int),
                          format=format_version)
    if codec_names is not None:  # "a, b" as an agent prints its codecs, or "a,b"
        options = replace(options, codecs=frozenset(codec_names.replace(",", " ").split()))
    dropped = [] if drop_xattrs else None
    with ProgressDisplay("make") as progress:
        manifest = make_bundle(release, base, keys, out, options, progress, dropped)
    for component, path in (dropped or [])[:DROPPED_SHOWN]:
        click.echo(f"warning: {path!r} of component {component} is carried without its extended attributes "
                   "(--drop-xattrs)", err=True)
    if len(dropped or ()) > DROPPED_SHOWN:
        click.echo(f"warning: and {len(dropped) - DROPPED_SHOWN} more paths are carried without their extended "
                   "attributes (--drop-xattrs)", err=True)
    # The base release is at hand: a file rewritten at a path it has counts as changed, not added.
    base_paths = {name: examine.tree_paths(c.path) for name, c in base.components.items()} if base else None
    report = summary(manifest, None, [k.id for k in keys], bundle_id=bundle_id(read_bundle(out).manifest_bytes),
                     base_paths=base_paths)
    if as_json:
        print_json({"bundle": str(out), **report})
    else:
        click.echo(f"created {out}")
        click.echo("\n".join("  " + line for line in render(report)))


@click.command("sign")
@click.argument("bundle", type=EXISTING_DIR)
@click.option("--key", "key_path", type=EXISTING_FILE, required=True, help="The co-signer's secret key.")
@passphrase_file_option
@root_chain_option("A trust root: report the signers against its release-signer threshold.")
@json_option
def sign_bundle(bundle, key_path, passphrase_file, root_paths, as_json):
    """Add a release signer's co-signature to BUNDLE's manifest."""
    files = read_bundle(bundle)
    product = Manifest.from_stored(files.manifest_bytes, where=manifest_path(bundle)).product  # never sign garbage
    key = load_secret_key(key_path, passphrase_file)
    out = signature_path(manifest_path(bundle), key.id)
    write_atomic(out, sign(key, files.manifest_bytes, signature_comment(product)).to_bytes())
    result = None
    if root_paths:
        result = signer_report(files.manifest_bytes, load_signatures(manifest_path(bundle)), _trusted_root(root_paths))
    if as_json:
        print_json({"signature": str(out), "key_id": key.id, "signers": result.to_json() if result else None})
        return
    click.echo(f"wrote {out}")
    if result is not None:
        click.echo(f"{bundle}: {result.describe()}")


@click.command("verify")
@click.argument("bundle", metavar="BUNDLE|STICK", type=EXISTING_DIR)
@root_chain_option("The trust root to check the signatures against.", required=True)
@click.option("--base", "bases", multiple=True, metavar="COMPONENT=DIR",
              help="Apply COMPONENT's delta onto DIR in a temporary directory and check every file.")
@click.option("--apply", "apply", is_flag=True,
              help="Also build every full component in a temporary directory and check every file.")
@click.option("--work-dir", type=EXISTING_DIR, help="Where to apply [default: the system temp dir].")
@json_option
def verify(bundle, root_paths, bases, apply, work_dir, as_json):
    """Check BUNDLE, or every bundle on a STICK, as a device would: signatures, manifest, every
    stored byte; apply with --base. On a stick, its own trust-root rotations are followed."""
    base_dirs = examine.base_dirs(bases)
    root = _trusted_root(root_paths)
    with ProgressDisplay("verify") as progress:
        def run_check(path, used_root, manifest_sha256, strict_bases):
            return check_bundle(path, used_root, base_dirs, apply=apply, work_dir=work_dir, progress=progress,
                                manifest_sha256=manifest_sha256, strict_bases=strict_bases)
        examine.verify_at(bundle, root, run_check, as_json)


@click.command("inspect")
@click.argument("bundle", metavar="BUNDLE|STICK", type=EXISTING_DIR)
@root_chain_option("A trust root: show the signers against its release-signer threshold.")
@click.option("--base", "bases", multiple=True, metavar="COMPONENT=DIR",
              help="The tree COMPONENT replaces: tells files rewritten at an existing path (changed) from "
                   "new ones (added) where the manifest cannot.")
@json_option
def inspect(bundle, root_paths, bases, as_json):
    """Show what BUNDLE, or every bundle on a STICK, carries: its bundle ID (as the agent prints
    it), components, from/to versions, file changes, signers."""
    examine.inspect_at(bundle, _trusted_root(root_paths) if root_paths else None, examine.base_dirs(bases), as_json)
