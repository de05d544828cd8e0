"""Codecs (docs/FORMAT.md, "Codecs"): one registry on each side under the same names, and the
signed list of the codecs a bundle needs, which lets a device refuse a bundle it cannot decode by
name - before it reads any other field of the manifest, and before any byte of payload.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from agent.format import codec, gzip_recipe
from agent.format.bundle_dir import MANIFEST, PAYLOAD, manifest_path
from agent.format.manifest import ENCODINGS, MalformedManifest, Manifest
from agent.format.tree import Entry
from agent.medium import complete_bundles, read_bundle, root_files
from agent.verify import verify_bundle
from bundler import encoders
from bundler.verify import check_bundle
from keys.detached import load_root_chain, signature_path
from keys.rotation import accept_chain
from keys.signing import sign
from tests.sim.elf import module
from tests.sim.releases import put, write_release
from tests.sim.stick import StickSim
from tests.test_bsdiff_codec import edited_executable
from tests.vectors import regenerate

HAS = "block, bsdiff, elf-tables, gzip-blocks, gzip-recipe, gzip-shape, raw, zstd, zstd-patch"
LACKS_XZ = f"this bundle needs codec xz; this agent has {HAS}"
VECTORS = Path(regenerate.__file__).parent


# --- the two registries -------------------------------------------------------------------------------------


def test_every_encoder_has_the_decoder_of_its_name_and_kind():
    assert set(encoders.ENCODERS) | {"block"} == set(codec.DECODERS)  # blocks: bundler/blocks.py
    assert set(encoders.TRANSFORMS) == set(codec.TRANSFORMS)
    assert encoders.NAMES == codec.CODECS == tuple(HAS.split(", "))
    for name, encoder in encoders.ENCODERS.items():
        assert encoder.patch == codec.DECODERS[name].patch, name
    assert ENCODINGS == tuple(codec.DECODERS)  # what an object's encoding may name


TEXT = b"".join(b"line %d of a text that compresses well\n" % i for i in range(500))
NOISE = random.Random(5).randbytes(20_000)
NEAR_NOISE = NOISE[:9_000] + b"changed" + NOISE[9_007:]  # a base region the chunk barely differs from


@pytest.mark.parametrize("data", [TEXT, NOISE], ids=["text", "noise"])
@pytest.mark.parametrize("name", sorted(encoders.ENCODERS))
def test_each_encoder_round_trips_through_its_decoder(name, data):
    region = NEAR_NOISE if encoders.ENCODERS[name].patch else None
    if name == "bsdiff":  # it only takes executables
        data = b"\x7fELF" + data[4:]
    stored = encoders.ENCODERS[name].encode(data, 3, region)
    assert codec.decode(name, stored, len(data), region) == data


def test_a_patch_needs_a_region_on_both_sides():
    assert encoders.ZSTD_PATCH.encode(TEXT, 3, None) is None
    stored = encoders.ZSTD_PATCH.encode(NOISE, 3, NEAR_NOISE)
    with pytest.raises(codec.CorruptObject, match="a patch object needs its base region"):
        codec.decode("zstd-patch", stored, len(NOISE), None)


@pytest.mark.parametrize("data, region, chosen", [(NOISE, None, "raw"), (TEXT, None, "zstd"),
                                                  (NOISE, NEAR_NOISE, "zstd-patch"), (b"x", None, "raw")])
def test_each_chunk_is_stored_as_the_smallest_ties_going_to_raw(data, region, chosen):
    assert encoders.smallest(data, 3, region)[0] == chosen


_HEX = random.Random(6)
WORDS = b" ".join(b"%x" % _HEX.getrandbits(12) for _ in range(300_000))  # ~1.2 MiB: five pieces


@pytest.mark.parametrize("level", [1, 3, 19])
def test_fed_piece_by_piece_the_frame_is_the_one_call_frame(level):
    """bundle make feeds libzstd STREAM_PIECE bytes at a time, to report progress and stop on an
    interrupt (bundler/encoders.py); the stored bytes must not change for that."""
    told = []
    assert len(WORDS) > 4 * encoders.STREAM_PIECE
    assert encoders.compress(WORDS, level, None, told.append) == codec.compress(WORDS, level)
    assert sum(told) == len(WORDS) and len(told) == -(-len(WORDS) // encoders.STREAM_PIECE)


def test_a_patch_is_made_in_one_call():
    """With a prefix, libzstd's long-distance matches depend on how the input is fed: a patch is
    the one-call frame, reported when done."""
    told, region = [], WORDS[:500_000] + b"changed" + WORDS[500_007:]
    assert encoders.compress(WORDS, 3, region, told.append) == codec.compress(WORDS, 3, region)
    assert told == [len(WORDS)]


def test_ranking_hears_of_each_byte_once_and_can_avoid_an_encoding():
    told = []
    ranked = encoders.ranked(NOISE, 3, NEAR_NOISE, told.append)
    assert [name for name, _ in ranked][0] == "zstd-patch" and sum(told) == len(NOISE)
    assert "zstd-patch" not in [name for name, _ in encoders.ranked(NOISE, 3, NEAR_NOISE, avoid=("zstd-patch",))]


def test_an_encoding_the_registry_lacks_does_not_decode():
    with pytest.raises(codec.CorruptObject, match="'xz', which this agent cannot decode"):
        codec.decode("xz", b"stored", 6)


def test_the_gzip_recipe_round_trips_through_its_transform(tmp_path):
    content = b"".join(b"changelog line %d\n" % i for i in range(3000))
    path = tmp_path / "changes.gz"
    path.write_bytes(gzip.compress(content, 9, mtime=0))  # what `gzip -9n` makes
    recipe, size = encoders.GZIP_RECIPE.recipe(path, path.stat().st_size)
    assert size == len(content) == encoders.GZIP_RECIPE.content_size(path)
    entry = Entry(path="changes.gz", type="file", mode=0o644, uid=0, gid=0, mtime=0, size=path.stat().st_size,
                  sha256=hashlib.sha256(path.read_bytes()).hexdigest(), gzip=recipe)
    rebuilt = bytearray()
    rebuilder = codec.rebuilder(entry, rebuilt.extend)
    for start in range(0, len(content), 10_000):
        rebuilder.feed(content[start:start + 10_000])
    rebuilder.finish()
    assert bytes(rebuilt) == path.read_bytes()
    chunks = iter([path.read_bytes()])
    assert codec.GZIP_RECIPE.base_content(lambda: next(chunks, b""), 0, 100) == content[:100]
    assert codec.used_by(["zstd"], [entry]) == ("gzip-recipe", "zstd")
    assert codec.rebuilder(replace(entry, gzip=None), rebuilt.extend) is None
    assert codec.used_by([], [replace(entry, gzip=None)]) == ()


def test_a_file_that_does_not_re_deflate_gets_no_recipe(tmp_path):
    path = tmp_path / "odd.gz"
    path.write_bytes(gzip.compress(TEXT, 9, mtime=0)[:-8] + b"\0" * 8)  # a wrong trailer
    assert encoders.GZIP_RECIPE.recipe(path, path.stat().st_size) is None


# --- the signed list in the manifest ------------------------------------------------------------------------


def vector_document() -> dict:
    """The golden vectors' manifest: a real one, made by `bundle make` (codecs block, raw and zstd)."""
    return json.loads((VECTORS / "manifest.json").read_bytes())


def needing_xz(document: dict) -> dict:
    """What a newer bundler with an ``xz`` codec would write."""
    document["codecs"] = sorted([*document["codecs"], "xz"])
    document["objects"][0]["encoding"] = "xz"
    return document


def test_the_vectors_list_the_codecs_they_use():
    document = vector_document()
    assert document["codecs"] == ["block", "raw", "zstd"] == sorted({o["encoding"] for o in document["objects"]})


OTHERWISE = {
    "nothing else": lambda d: None,
    "fields only the new codec defines": lambda d: (d.update(xz_filters=["x86"]), d["objects"][0].update(level=9)),
    "components that are not a list": lambda d: d.update(components="not read"),
    "no product": lambda d: d.pop("product"),
    "objects that do not tile the payload": lambda d: d["objects"][0].update(offset=77),
}


@pytest.mark.parametrize("otherwise", OTHERWISE.values(), ids=OTHERWISE.keys())
def test_a_manifest_needing_a_codec_this_agent_lacks_is_refused_by_name_before_anything_else(otherwise):
    document = needing_xz(vector_document())
    otherwise(document)
    data = json.dumps(document).encode()
    for parse in (lambda: Manifest.from_bytes(data, where="m.json"),
                  lambda: Manifest.from_stored(codec.compress(data, 3), where="m.json")):
        with pytest.raises(codec.UnsupportedCodec) as raised:
            parse()
        assert not isinstance(raised.value, MalformedManifest)  # the bundle is fine; this agent is old
        assert raised.value.message == LACKS_XZ
        assert str(raised.value) == f"m.json: {LACKS_XZ}"
        assert raised.value.hint == ("update the agent first, or use a bundle made for it (`bundle make --codecs` "
                                     "with the codecs it has, or a full bundle)")


def test_every_missing_codec_is_named():
    document = vector_document()
    document["codecs"] = ["brotli", "raw", "xz", "zstd"]
    with pytest.raises(codec.UnsupportedCodec, match=f"^this bundle needs codecs brotli, xz; this agent has {HAS}$"):
        Manifest.from_bytes(json.dumps(document).encode())


def test_the_type_and_format_version_are_checked_before_the_codecs():
    document = needing_xz(vector_document())
    document["format"] = 4
    with pytest.raises(MalformedManifest, match=r"format version 4 is not supported \(this tool reads 2 and 3\)"):
        Manifest.from_bytes(json.dumps(document).encode())


LIES = {
    "omits a codec an object uses": (lambda d: d.update(codecs=["block", "raw"]),
                                     "the bundle uses codec 'zstd', which its codecs list does not name"),
    "omits the block codec": (lambda d: d.update(codecs=["raw", "zstd"]),
                              "the bundle uses codec 'block', which its codecs list does not name"),
    "names a codec nothing uses": (lambda d: d.update(codecs=["block", "raw", "zstd", "zstd-patch"]),
                                   "codecs lists 'zstd-patch', which nothing in the bundle uses"),
    "names a transform nothing uses": (lambda d: d.update(codecs=["block", "gzip-recipe", "raw", "zstd"]),
                                       "codecs lists 'gzip-recipe', which nothing in the bundle uses"),
    "is empty": (lambda d: d.update(codecs=[]), "the bundle uses codec 'block', which its codecs list does not name"),
}


@pytest.mark.parametrize("lie, message", LIES.values(), ids=LIES.keys())
def test_the_list_cannot_lie(lie, message):
    document = vector_document()
    lie(document)
    with pytest.raises(MalformedManifest, match=message):
        Manifest.from_bytes(json.dumps(document).encode())


# --- bundles for machines whose agent lacks codecs (bundle make --codecs) ---------------------------------


OLDER_AGENT = ("raw", "zstd", "zstd-patch")


@pytest.fixture
def release_pair(tmp_path) -> tuple[Path, Path]:
    """Two releases whose delta uses every codec: an executable rebuilt (bsdiff), a kernel module
    (elf-tables), a gzip file (gzip-recipe), small text files changed (zstd-patch) and added (block)."""
    old_ls, new_ls = edited_executable()
    for name, ls, edits in (("r1", old_ls, 0), ("r2", new_ls, 1)):
        tree = tmp_path / name / "platform"
        put(tree, "usr/bin/ls", ls, 0o755)
        put(tree, "lib/modules/demo.ko", module(5, edits=edits))
        put(tree, "usr/share/doc/changelog.gz", gzip.compress(TEXT + b"release %d\n" % edits, mtime=0))
        for number in range(3):
            put(tree, f"etc/setting{number}.conf", f"setting {number} = {edits}\n" * 50)
        write_release(tmp_path / name, {"platform": (f"{edits + 1}.0", edits + 1)})
    put(tmp_path / "r2/platform", "etc/added.conf", TEXT)  # new content, small: stored in a block
    return tmp_path / "r1/release.toml", tmp_path / "r2/release.toml"


def test_a_delta_made_for_an_older_agent_uses_only_its_codecs_and_it_applies_it(release_pair, trust, tmp_path,
                                                                                 cli, monkeypatch):
    old, new = release_pair
    keys = ["--key", trust.key("rel1"), "--key", trust.key("rel2")]
    codecs = {}
    for label, only in (("every", ()), ("older", ("--codecs", ", ".join(OLDER_AGENT))),
                        ("bsdiff, no block", ("--codecs", ",".join([*OLDER_AGENT, "bsdiff"])))):
        made = cli("bundle", "make", "--release", new, "--base", old, *keys, "--out", tmp_path / label,
                   "--level", "3", *only, check=True)
        codecs[label] = Manifest.from_stored(manifest_path(tmp_path / label).read_bytes()).codecs
        assert f"format 3, needs codecs {', '.join(codecs[label])}\n" in made.stdout  # what the vendor sees
    assert {"block", "bsdiff", "elf-tables", "gzip-recipe"} <= set(codecs["every"])
    assert set(codecs["older"]) <= set(OLDER_AGENT)
    assert codecs["bsdiff, no block"] == codecs["older"]  # bsdiff patches are stored only in blocks
    monkeypatch.setattr(codec, "CODECS", OLDER_AGENT)  # the agent of the machines in the field
    root = accept_chain(load_root_chain([trust.root]))
    bases = {"platform": old.parent / "platform"}
    _, checked = check_bundle(tmp_path / "older", root, bases, work_dir=tmp_path)
    assert "platform" in checked
    with pytest.raises(codec.UnsupportedCodec, match="this bundle needs codecs block, bsdiff, elf-tables"):
        check_bundle(tmp_path / "every", root, bases, work_dir=tmp_path)


@pytest.mark.parametrize("codecs, message", [
    ("raw,zstd,xz", "--codecs names xz, which this bundler does not know; it knows block, bsdiff"),
    ("zstd,zstd-patch", "--codecs leaves out raw, which every agent has and a bundle may need"),
    ("raw", "--codecs leaves out zstd, which every agent has"),
])
def test_codecs_a_bundle_cannot_be_made_with_are_refused_before_any_work(release_pair, trust, tmp_path, cli,
                                                                        codecs, message):
    old, new = release_pair
    result = cli("bundle", "make", "--release", new, "--base", old, "--key", trust.key("rel1"),
                 "--out", tmp_path / "bundle", "--codecs", codecs)
    assert result.returncode == 3, result.stdout + result.stderr  # refused
    assert message in result.stderr
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["r1", "r2"]  # no partial output either


# --- a device and `bundle verify` refuse such a bundle before reading its payload -------------------------


def _trusted_root():
    return accept_chain(load_root_chain([r.path for r in root_files(VECTORS / "stick", regenerate.PRODUCT)]))


@pytest.fixture(params=["garbage volume", "missing volume"])
def bundle_needing_xz(tmp_path, request) -> Path:
    """The vectors' bundle as a newer bundler would sign it, needing xz, with its volume garbage or
    missing: reading the payload would fail another way."""
    [source] = complete_bundles(VECTORS / "stick", regenerate.PRODUCT)
    bundle = tmp_path / "bundle"
    shutil.copytree(source.path, bundle)
    stored = codec.compress(json.dumps(needing_xz(vector_document())).encode(), 3)
    (bundle / MANIFEST).write_bytes(stored)
    for name in ("rel1", "rel2"):  # a threshold of the vectors' release signers signs it
        key = regenerate.secret(name)
        signature_path(bundle / MANIFEST, key.id).write_bytes(sign(key, stored, "bundle-manifest").to_bytes())
    [volume] = (bundle / PAYLOAD).iterdir()
    if request.param == "missing volume":
        volume.unlink()
    else:
        volume.write_bytes(b"garbage" * 10)
    return bundle


def test_the_agent_refuses_the_bundle_by_name(bundle_needing_xz):
    files = read_bundle(bundle_needing_xz)
    with pytest.raises(codec.UnsupportedCodec, match=f": {LACKS_XZ}$"):
        verify_bundle(files.manifest_bytes, files.signatures, _trusted_root(), where=bundle_needing_xz / MANIFEST)


def test_bundle_verify_refuses_it_before_reading_the_payload(bundle_needing_xz, cli):
    with pytest.raises(codec.UnsupportedCodec, match=LACKS_XZ):
        check_bundle(bundle_needing_xz, _trusted_root(), {}, apply=True)
    roots = [r.path for r in root_files(VECTORS / "stick", regenerate.PRODUCT)]
    result = cli("bundle", "verify", bundle_needing_xz, *[a for r in roots for a in ("--root", r)], "--apply")
    assert result.returncode == 3, result.stdout + result.stderr  # examined and refused
    assert LACKS_XZ in result.stderr and "update the agent first" in result.stderr


def test_a_cabinet_refuses_a_stick_needing_a_codec_it_lacks_and_stays_as_it_was(world, cabinet, tmp_path):
    sim = StickSim(world)
    model = sim.add("d12")
    model.manifest_json, model.level = json.dumps(needing_xz(json.loads(model.manifest.to_bytes()))).encode(), 3
    model.volume_bytes = [b"garbage"] * len(model.volume_bytes)  # never read
    medium = sim.write(tmp_path / "stick")
    before = cabinet.snapshot()
    result = cabinet.agent("on-insert", medium)
    assert result.returncode == 3, result.stdout + result.stderr
    assert LACKS_XZ in result.stdout + result.stderr
    assert cabinet.snapshot() == before


def test_a_base_file_of_empty_gzip_members_is_read_in_bounded_work():
    """A signed bundle may name as a patch region 1 byte of content behind thousands of empty
    members: zlib copies what follows each member's end, so the input is fed in slices, and past
    MAX_MEMBERS members the file is refused."""
    empty = gzip.compress(b"", mtime=0)
    stream = empty * 10_000 + gzip.compress(b"x", mtime=0)
    blocks = iter([stream[i:i + (1 << 20)] for i in range(0, len(stream), 1 << 20)])
    assert gzip_recipe.gunzip_prefix(lambda: next(blocks, b""), 1) == b"x"
    flood = empty * (gzip_recipe.MAX_MEMBERS + 1)
    blocks = iter([flood[i:i + (1 << 20)] for i in range(0, len(flood), 1 << 20)])
    with pytest.raises(ValueError, match="more than 65536 members"):
        gzip_recipe.gunzip_prefix(lambda: next(blocks, b""), 1)


def test_a_gzip_magic_split_between_two_blocks_still_starts_a_member():
    stream = gzip.compress(b"first ", mtime=0) + gzip.compress(b"second", mtime=0)
    cut = len(gzip.compress(b"first ", mtime=0)) + 1  # the second member's \x1f ends the first block
    blocks = iter([stream[:cut], stream[cut:]])
    assert gzip_recipe.gunzip_prefix(lambda: next(blocks, b""), 12) == b"first second"
