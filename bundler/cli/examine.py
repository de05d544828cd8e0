"""``bundle verify`` and ``bundle inspect`` over a bundle folder or a whole stick (docs/OPERATOR.md,
"Checking bundles and sticks"): every bundle found is checked and reported with the bundle ID the
agent prints (its folder name on a stick); on a stick, one bad bundle does not hide the others,
and the command fails at the end if any was bad.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from agent.cli.errors import print_error
from agent.cli.output import print_json
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from agent.format.stick import bundle_id
from agent.medium import read_bundle, root_files
from agent.scan import scan_tree
from agent.verify import signer_report
from bundler.bundle_summary import render, summary
from bundler.find_bundles import FoundBundle, find_bundles
from keys.detached import load_root_candidate
from keys.errors import Failed, Refused, UpdateError
from keys.printable import echo
from keys.rotation import VerifiedRoot, walk_chain


def base_dirs(values: tuple[str, ...]) -> dict[str, Path]:
    """``--base COMPONENT=DIR`` values. Raises click.UsageError."""
    found = {}
    for value in values:
        name, sep, directory = value.partition("=")
        if not sep or not Path(directory).is_dir():
            raise click.UsageError(f"--base takes COMPONENT=DIR with an existing DIR, not {value!r}")
        found[name] = Path(directory)
    return found


def tree_paths(directory: Path) -> frozenset[str]:
    """Every path of a tree, for telling a changed file from an added one. Raises Failed."""
    try:
        return frozenset(e.path for e in scan_tree(directory, with_hashes=False))
    except OSError as error:
        raise Failed(f"cannot read the base tree: {error.strerror}", where=directory) from None


def root_for(root: VerifiedRoot | None, stick: Path, found: FoundBundle) -> VerifiedRoot | None:
    """The trust root a device holding ``root`` would use for a bundle of this stick: walked along
    the stick's own rotations (``<product>/trust/``), as the agent does. Raises RotationRefused..."""
    if root is None or found.product_folder is None:
        return root
    return walk_chain(root, [load_root_candidate(r.path) for r in root_files(stick, found.product_folder)])


def _each(path: Path, as_json: bool, check: Callable[[FoundBundle], tuple[dict, list[str]]]) -> None:
    """Run ``check`` (JSON data and text lines of one bundle) on every bundle at ``path`` and print.
    On a stick, each bad bundle is reported as found and the command fails at the end: Refused if
    any bundle was refused, else Failed. Raises what ``check`` raises for a bundle folder."""
    found = find_bundles(path)
    if not found.is_stick:
        data, lines = check(found.bundles[0])
        if as_json:
            print_json({"bundle": str(found.bundles[0].path), **data})
        else:
            echo("\n".join(lines))
        return
    results, texts, errors = [], [], []
    for bundle in found.bundles:
        try:
            data, lines = check(bundle)
        except UpdateError as error:
            errors.append((bundle, error))
            print_error(error)  # each bad bundle is named; the others are still checked
            continue
        results.append({"bundle": str(bundle.path), **data})
        texts.append(lines)
    if not as_json:
        for lines in texts:
            echo("\n".join(lines))
        for folder in found.incomplete:
            echo(f"incomplete (devices ignore it): {folder}")
    if errors:
        named = "; ".join(f"{bundle.path.name}: {error.message}" for bundle, error in errors)
        refused = any(isinstance(error, Refused) for _, error in errors)
        raise (Refused if refused else Failed)(
            f"{len(errors)} of {len(found.bundles)} bundles on the stick could not be used ({named})",
            where=path, hint=_HINT)
    if not found.bundles:
        raise Refused("the stick holds no complete bundle, only incomplete ones (devices ignore them)",
                      where=path, hint=_HINT)
    if as_json:
        print_json({"stick": str(path), "bundles": results, "incomplete": [str(p) for p in found.incomplete]})


_HINT = "write the bundles to the stick again (bundle write), or remove the ones that are not needed"


def inspect_at(path: Path, root: VerifiedRoot | None, bases: dict[str, Path], as_json: bool) -> None:
    base_paths = {name: tree_paths(directory) for name, directory in bases.items()}

    def check(found: FoundBundle) -> tuple[dict, list[str]]:
        files = read_bundle(found.path, manifest_sha256=found.manifest_sha256)
        manifest = Manifest.from_stored(files.manifest_bytes, where=manifest_path(found.path))
        used_root = root_for(root, path, found)
        signers = signer_report(files.manifest_bytes, files.signatures, used_root) if used_root else None
        report = summary(manifest, signers, [s.key_id_text for s in files.signatures],
                         bundle_id=bundle_id(files.manifest_bytes), base_paths=base_paths)
        return report, render(report) + ([""] if found.product_folder else [])

    _each(path, as_json, check)


def verify_at(path: Path, root: VerifiedRoot, run_check: Callable, as_json: bool) -> None:
    """``run_check(bundle, root, manifest_sha256, strict_bases)`` is bundler.verify.check_bundle
    with the command's options bound."""

    def check(found: FoundBundle) -> tuple[dict, list[str]]:
        verified, outcome = run_check(found.path, root_for(root, path, found), found.manifest_sha256,
                                      found.product_folder is None)
        identity = bundle_id(verified.manifest_bytes)
        data = {"bundle_id": identity, "product": verified.manifest.product, "valid": True,
                "signatures": verified.signatures.to_json(), "components": outcome}
        lines = [f"{found.path}: valid bundle {identity} for {verified.manifest.product}, "
                 f"{verified.signatures.describe()}"]
        return data, lines + [f"  {name}: {text}" for name, text in outcome.items()]

    _each(path, as_json, check)
