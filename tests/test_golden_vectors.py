"""Golden vectors (tests/vectors/): today's code still reads, verifies and writes yesterday's bytes.

The files are made only by tests/vectors/regenerate.py, from fixed keys and a fixed release, so a
format change shows as a diff in review (STYLE.md 15). Reading is checked with any libzstd (the
zstd format is stable); writing byte for byte only with the libzstd the vectors were made with,
because another libzstd may compress the same bytes differently.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent import medium
from agent.apply import apply_component
from agent.format import codec, stick
from agent.format.manifest import Manifest
from agent.medium import read_bundle
from agent.payload import Payload
from agent.verify import verify_bundle
from bundler.verify import check_bundle
from keys.detached import load_root_chain
from keys.minisign import Signature
from keys.rotation import accept_chain
from keys.trust_root import TrustRoot
from tests.vectors import regenerate

VECTORS = Path(regenerate.__file__).parent
STICK = VECTORS / "stick"
PRODUCT = regenerate.PRODUCT


def _bundle_folder() -> Path:
    [bundle] = medium.complete_bundles(STICK, PRODUCT)
    return bundle.path


def _trusted_root():
    return accept_chain(load_root_chain([r.path for r in medium.root_files(STICK, PRODUCT)]))


def test_the_stick_layout_is_read():
    assert [r.version for r in medium.root_files(STICK, PRODUCT)] == [1, 2]
    [bundle] = medium.complete_bundles(STICK, PRODUCT)
    manifest_bytes = (bundle.path / "manifest.json.zst").read_bytes()
    assert bundle.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert bundle.id == stick.bundle_id(manifest_bytes)


def test_documents_reserialise_to_the_same_bytes():
    """Parsers and serialisers agree with the stored bytes: canonical JSON, minisign files."""
    for path in sorted(STICK.rglob("*.minisig")):
        assert Signature.from_bytes(path.read_bytes()).to_bytes() == path.read_bytes(), path
    for root in medium.root_files(STICK, PRODUCT):
        assert TrustRoot.from_bytes(root.path.read_bytes()).to_bytes() == root.path.read_bytes()
    stored = (_bundle_folder() / "manifest.json.zst").read_bytes()
    document = (VECTORS / "manifest.json").read_bytes()
    assert codec.decompress(stored, codec.declared_size(stored)) == document
    assert Manifest.from_stored(stored).to_bytes() == document


def test_the_rotation_and_the_bundle_verify():
    trusted = _trusted_root()
    assert trusted.version == 2 and [k.name for k in trusted.root.revoked_keys] == ["root-a"]
    files = read_bundle(_bundle_folder())
    verified = verify_bundle(files.manifest_bytes, files.signatures, trusted)
    assert sorted(k.name for k in verified.signatures.signed) == ["rel1", "rel2"]
    assert [c.name for c in verified.manifest.components] == [regenerate.COMPONENT]


def test_the_bundle_applies_to_the_release_tree(tmp_path):
    """Decoding the stored objects gives back exactly the release the vectors were made from."""
    bundle = _bundle_folder()
    verified, outcome = check_bundle(bundle, _trusted_root(), {}, apply=True)
    assert outcome[regenerate.COMPONENT].startswith("applied")
    [component] = verified.manifest.components
    with Payload(bundle, verified.manifest) as payload:
        apply_component(component, payload, tmp_path / "tree", base=None, set_owner=False)
    for path, (kind, content, mode) in regenerate.RELEASE.items():
        target = tmp_path / "tree" / path
        if kind == "file":
            assert target.read_bytes() == content, path
        elif kind == "hardlink":
            assert target.samefile(tmp_path / "tree" / content), path
        elif kind == "symlink":
            assert str(target.readlink()) == content, path
        if mode is not None:
            assert target.stat().st_mode & 0o7777 == mode, path


def test_regenerating_gives_the_same_bytes(tmp_path):
    recorded = (VECTORS / "libzstd-version").read_text()
    if regenerate.libzstd_version() != recorded:
        pytest.skip(f"vectors were compressed by libzstd {recorded.strip()}, this is "
                    f"{regenerate.libzstd_version().strip()}: its output may differ without a format change")
    regenerate.build(tmp_path)
    changed = regenerate.differences(VECTORS, tmp_path)
    assert not changed, ("the bundler no longer writes the golden vectors: if the format change is intended, "
                         f"run tests/vectors/regenerate.py and review the diff; changed: {changed}")


@pytest.mark.parametrize("folder, format_version", [("delta", 3), ("delta-format-2", 2)])
def test_the_delta_verifies_and_takes_the_first_release_to_the_second(tmp_path, folder, format_version):
    """The delta vector uses every patch codec, a block and every transform; applied to the
    release the full vector holds, it gives exactly the next release. So does the same delta as
    the format-2 bundler made it (frozen: sticks of that format are in the field), whose
    prefixes name their base files' SHA-256."""
    delta = VECTORS / folder
    stored = (delta / "manifest.json.zst").read_bytes()
    assert json.loads(codec.decompress(stored, codec.declared_size(stored)))["format"] == format_version
    verified, outcome = check_bundle(delta, _trusted_root(), {}, apply=False)
    prefixes = [c.prefix for e in verified.manifest.components[0].entries for c in e.chunks if c.prefix]
    assert prefixes and all((p.sha256 is not None) == (format_version == 2) for p in prefixes)
    assert verified.manifest.codecs == ("block", "bsdiff", "elf-tables", "gzip-blocks", "gzip-recipe", "gzip-shape",
                                        "raw", "zstd-patch")
    regenerate._write_release(tmp_path / "first")
    [component] = verified.manifest.components
    with Payload(delta, verified.manifest) as payload:
        apply_component(component, payload, tmp_path / "tree", base=tmp_path / "first/vector", set_owner=False)
    for path, (kind, content, mode) in regenerate.RELEASE_2.items():
        target = tmp_path / "tree" / path
        if kind == "file":
            assert target.read_bytes() == content, path
        if mode is not None:
            assert target.stat().st_mode & 0o7777 == mode, path
