"""gzip files that zlib alone does not reproduce, rebuilt from their content and the original's
block ends (zlib ends a block at each), or a block shape (agent/format/deflate.py), on files the
real GNU gzip makes (docs/FORMAT.md, "gzip recipe")."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from agent.format import codec, deflate, gzip_recipe
from agent.format.tree import Entry
from bundler import encoders
from tests.sim.releases import write_release

WORDS = [b"fix", b"security", b"update", b"CVE-2026-%d", b"upstream", b"release", b"(closes: #%d)", b"debian",
         b"patch", b"build", b"  *", b"\n", b"\n -- Maintainer <m@example.org>  Mon, 30 Nov 2026\n\n"]


def changelog(seed: int, size: int) -> bytes:
    """Text like a Debian changelog: large enough that GNU gzip ends its blocks elsewhere than zlib."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        word = rng.choice(WORDS)
        out += (word % rng.randrange(10000) if b"%d" in word else word) + b" "
    return bytes(out[:size])


def gnu_gzip(path: Path, content: bytes, level: int = 9) -> Path:
    path.write_bytes(subprocess.run(["gzip", f"-{level}n"], input=content, capture_output=True, check=True).stdout)
    return path


def rebuilt_through_the_registry(path: Path, recipe, content: bytes) -> bytes:
    entry = Entry(path=path.name, type="file", mode=0o644, uid=0, gid=0, mtime=0, size=path.stat().st_size,
                  sha256=hashlib.sha256(path.read_bytes()).hexdigest(), gzip=recipe)
    out = bytearray()
    rebuilder = codec.rebuilder(entry, out.extend)
    for start in range(0, len(content), 65536):
        rebuilder.feed(content[start:start + 65536])
    rebuilder.finish()
    return bytes(out)


def uses(recipe) -> tuple[str, ...]:
    entry = Entry(path="c.gz", type="file", mode=0o644, uid=0, gid=0, mtime=0, size=1, sha256="0" * 64, gzip=recipe)
    return codec.used_by(["zstd"], [entry])


def shaped(path: Path, content: bytes):
    """The recipe of a file with a shape in place of block ends (what the bundler falls back to)."""
    recipe, _ = encoders.GZIP_RECIPE.recipe(path, path.stat().st_size)
    data = path.read_bytes()
    level, shape = gzip_recipe.find_shape(content, data[gzip_recipe.header_length(data):-8])
    return replace(recipe, level=level, shape=shape, block_ends=None)


def test_a_file_gnu_gzip_made_is_rebuilt_bit_for_bit_from_its_content_and_block_ends(tmp_path):
    content = changelog(9, 900_000)  # Debian's gzip -9n: blocks of up to 32 Ki tokens
    path = gnu_gzip(tmp_path / "changelog.gz", content)
    recipe, size = encoders.GZIP_RECIPE.recipe(path, path.stat().st_size)
    assert size == len(content) and recipe.level == 9 and recipe.mem_level == 9 and recipe.shape is None
    assert recipe.block_ends, "zlib alone reproduces this file, in one block: the test would not test block ends"
    assert rebuilt_through_the_registry(path, recipe, content) == path.read_bytes()
    assert uses(recipe) == ("gzip-blocks", "gzip-recipe", "zstd")


@pytest.mark.parametrize("level", [9, 6])
def test_a_file_gnu_gzip_made_is_rebuilt_bit_for_bit_from_its_content_and_shape(tmp_path, level):
    content = changelog(level, 600_000)
    path = gnu_gzip(tmp_path / "changelog.gz", content, level)
    recipe = shaped(path, content)
    assert len(recipe.shape) < len(path.read_bytes()) // 100  # the shape is small beside the file
    assert rebuilt_through_the_registry(path, recipe, content) == path.read_bytes()
    assert uses(recipe) == ("gzip-recipe", "gzip-shape", "zstd")


def test_the_bundler_falls_back_to_a_shape_where_block_ends_miss(tmp_path):
    # gzip -6 with blocks of more than 16 Ki tokens: zlib's memory level 8 ends them early, and 9
    # hashes otherwise, which changes matches where the search for one is short (as at -6).
    content = changelog(6, 900_000)
    path = gnu_gzip(tmp_path / "changelog.gz", content, 6)
    recipe, _ = encoders.GZIP_RECIPE.recipe(path, path.stat().st_size)
    assert recipe.shape is not None and recipe.block_ends is None and recipe.level == 6
    assert rebuilt_through_the_registry(path, recipe, content) == path.read_bytes()


def test_wrong_block_ends_never_give_the_file(tmp_path):
    content = changelog(1, 900_000)
    path = gnu_gzip(tmp_path / "changelog.gz", content)
    recipe, _ = encoders.GZIP_RECIPE.recipe(path, path.stat().st_size)
    end = recipe.block_ends[0]
    for wrong in ((end - 1,), (end + 1,), (end // 2,), (end, end + 5000), (1, end), (end, len(content) - 1)):
        assert rebuilt_through_the_registry(path, replace(recipe, block_ends=wrong), content) != path.read_bytes()
    for wrong in (replace(recipe, level=6), replace(recipe, mem_level=8)):
        assert rebuilt_through_the_registry(path, wrong, content) != path.read_bytes()


def test_a_wrong_shape_never_gives_the_file(tmp_path):
    content = changelog(1, 300_000)
    path = gnu_gzip(tmp_path / "changelog.gz", content)
    recipe = shaped(path, content)
    shape = deflate.shape_from_bytes(recipe.shape)
    first = shape.blocks[0]
    wrongs = [replace(shape, blocks=(replace(first, count=first.count + 1),) + shape.blocks[1:]),
              replace(shape, blocks=(replace(first, count=first.count - 1),) + shape.blocks[1:]),
              replace(shape, tail=shape.tail + (ord("x"),))]
    if shape.tail:
        wrongs.append(replace(shape, tail=shape.tail[1:]))
    for wrong in wrongs:
        try:
            rebuilt = rebuilt_through_the_registry(path, replace(recipe, shape=deflate.shape_to_bytes(wrong)), content)
        except ValueError:
            continue
        assert rebuilt != path.read_bytes()


def test_what_zlib_reproduces_alone_carries_no_shape(tmp_path):
    content = changelog(2, 8_000)
    path = gnu_gzip(tmp_path / "small.gz", content)
    recipe, _ = encoders.GZIP_RECIPE.recipe(path, path.stat().st_size)
    assert recipe.shape is None and recipe.block_ends is None and recipe.level == 9


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_the_shape_parser_takes_any_bytes(data):
    try:
        shape = deflate.shape_from_bytes(data)
    except deflate.DeflateError:
        return
    assert deflate.shape_to_bytes(shape) == data  # a shape has one encoding


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_the_deflate_reader_takes_any_bytes(data):
    try:
        deflate.blocks_of(data)
        list(deflate.tokens(data))
    except deflate.DeflateError:
        pass


def test_a_delta_carries_a_changed_gnu_gzip_file_as_its_content_change(cli, trust, tmp_path):
    old, new = changelog(3, 400_000), changelog(4, 20_000) + changelog(3, 400_000)  # a new entry on top
    r1 = write_release(tmp_path / "r1", {"platform": ("1", 1)})
    gnu_gzip(tmp_path / "r1/platform/changelog.gz", old)
    r2 = write_release(tmp_path / "r2", {"platform": ("2", 2)})
    gzipped = gnu_gzip(tmp_path / "r2/platform/changelog.gz", new).stat().st_size
    assert gzip_recipe.find_recipe(gnu_gzip(tmp_path / "probe.gz", new).read_bytes(), 1 << 26)[0].block_ends is not None
    bundle = tmp_path / "delta"
    cli("bundle", "make", "--release", r2, "--base", r1, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
        "--out", bundle)
    manifest = json.loads(zstandard.ZstdDecompressor().decompress((bundle / "manifest.json.zst").read_bytes()))
    assert manifest["codecs"] == ["gzip-blocks", "gzip-recipe", "zstd-patch"]
    payload = sum(p.stat().st_size for p in (bundle / "payload").iterdir())
    # The new entry's 20 KB of text, compressed; the compressed file's bytes all changed.
    assert payload < gzipped // 10, (payload, gzipped)
    result = cli("bundle", "verify", bundle, "--root", trust.root, "--base", f"platform={tmp_path / 'r1/platform'}",
                 "--work-dir", tmp_path)
    assert "every file matches the manifest" in result.stdout
