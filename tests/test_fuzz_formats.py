"""Hostile input for the bundle formats: any input gives a result or our documented error, nothing else.

T-PARSER in docs/THREAT-MODEL.md, STYLE.md 15: the device parses everything it reads from a
stick, so each parser of untrusted bytes gets random and near-valid input here, in every run:

* the manifest - its JSON (byte edits of a valid manifest, edits of its JSON tree, random
  documents of the right shape) and its stored zstd form: ``MalformedManifest``, or
  ``UnsupportedCodec`` when its codecs list names one this agent lacks;
* the stick layout on real directories (random names, junk names, symlinks, FIFOs, sockets,
  device nodes, random COMPLETE markers) and the files it names: ``StickLayoutError``,
  ``Failed`` or another ``UpdateError`` of the readers - and never a read that blocks;
* the delta decoder (every encoding, random and damaged frames, with and without a prefix):
  ``CorruptObject``;
* gzip recipes (``None`` or ``ValueError``) and the path rules (``PathError``).

Where it is cheap, results are also checked: a decoded chunk has exactly the requested size, a
resolved path never leaves its component, a manifest that parses re-serialises to one that
parses equal, a stick listing is exactly what a model of the tree predicts. Trust roots, keys
and signatures are covered in tests/test_parsers_property.py.

The runs are derandomized so CI sees the same inputs every time; ``make fuzz`` (atheris,
tests/fuzz/fuzz_formats.py) explores for longer.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import hashlib
import json
import os
import re
import signal
import socket
import stat
import struct
import tempfile
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings, strategies as st

from agent.format import bundle_dir, codec, gzip_recipe, paths, stick
from agent.medium import read_bundle
from agent.format.manifest import (DOCUMENT_TYPE, ENCODINGS, FORMAT, Base, Component, MalformedManifest, Manifest,
                                   StoredObject, Volume, signature_comment)
from agent import medium
from agent.format.tree import EMPTY_SHA256, Chunk, Entry, GzipRecipe, Prefix, tree_digest
from keys import detached
from keys.detached import load_root_candidate
from keys.errors import Failed, UpdateError
from keys.secret_key import SecretKey
from keys.signing import sign
from tests.sim.strategies import edited

fuzz = settings(deadline=None, derandomize=True, database=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a valid manifest that uses every feature of the format -------------------------------------------------


def valid_manifest() -> Manifest:
    """A platform delta (base copies, patches, a gzip recipe, setuid, owners, removals, targets,
    a downgrade permission) and a full game (hard link, symlinks inside it)."""
    raw, packed, patch = _sha(b"raw object"), _sha(b"zstd object"), _sha(b"patch object")
    objects = (StoredObject(raw, 0, 8, "raw"), StoredObject(packed, 8, 20, "zstd"),
               StoredObject(patch, 28, 10, "zstd-patch"))
    volume = _sha(b"volume")
    root = dict(uid=0, gid=0, mtime=1_700_000_000)
    platform_entries = (
        Entry(path=".", type="dir", mode=0o755, **root),
        Entry(path="bin", type="dir", mode=0o755, **root),
        Entry(path="bin/su", type="file", mode=0o4755, size=8, sha256=_sha(b"su"), chunks=(Chunk(raw, 8),), **root),
        Entry(path="bin/su2", type="hardlink", target="bin/su"),
        Entry(path="doc.gz", type="file", mode=0o644, size=40, sha256=_sha(b"doc.gz"), chunks=(Chunk(packed, 100),),
              gzip=GzipRecipe(header=b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03", level=9, size=100,
                              sha256=_sha(b"doc")), **root),
        Entry(path="empty", type="file", mode=0o600, size=0, sha256=EMPTY_SHA256, **root),
        Entry(path="etc", type="dir", mode=0o755, **root),
        Entry(path="etc/conf", type="file", mode=0o644, size=5, sha256=_sha(b"conf"), base_path="etc/conf.orig",
              **root),
        Entry(path="lib.so", type="file", mode=0o755, size=50, sha256=_sha(b"lib"),
              chunks=(Chunk(patch, 50, Prefix("lib.so", 0, 64)),), **root),
        Entry(path="man.txt", type="file", mode=0o644, size=50, sha256=_sha(b"man"),
              chunks=(Chunk(patch, 50, Prefix("man.gz", 10, 100, gunzip=True)),), **root),
        Entry(path="run", type="symlink", target="/var/run", **root),
        Entry(path="var", type="dir", mode=0o700, uid=1000, gid=1000, mtime=-5),
    )
    game_entries = (
        Entry(path=".", type="dir", mode=0o755, **root),
        Entry(path="a", type="file", mode=0o644, size=8, sha256=_sha(b"a"), chunks=(Chunk(raw, 8),), **root),
        Entry(path="b", type="hardlink", target="a"),
        Entry(path="c", type="symlink", target="a", **root),
        Entry(path="d", type="dir", mode=0o755, **root),
        Entry(path="d/up", type="symlink", target="../c", **root),
    )
    platform = Component(name="platform", version="1.1", sequence=2, policy="system",
                         tree_digest=tree_digest(platform_entries), entries=platform_entries,
                         base=Base(sequence=1, version="1.0", tree_digest="sha256:" + "1" * 64),
                         targets=("SN-1", "SN-2"), downgrade_from=(5,), removed=("old", "old/file"))
    game = Component(name="game/lucky", version="2.0", sequence=3, policy="content",
                     tree_digest=tree_digest(game_entries), entries=game_entries)
    return Manifest(product="demo", hardware=("cab-a", "cab-b"), components=(platform, game), objects=objects,
                    volumes=(Volume(name=f"{volume}.vol", size=38, sha256=volume),))


VALID = valid_manifest()
VALID_BYTES = VALID.to_bytes()
VALID_STORED = VALID.to_stored()


def _parse(data: bytes, *, stored: bool = False) -> Manifest | None:
    """The manifest, or None when it is refused with MalformedManifest or UnsupportedCodec (an edit
    may name a codec this agent lacks); anything else propagates."""
    try:
        manifest = Manifest.from_stored(data) if stored else Manifest.from_bytes(data)
    except (MalformedManifest, codec.UnsupportedCodec):
        return None
    # What parses re-serialises canonically to bytes that parse to the same manifest.
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest
    return manifest


def test_the_seed_manifest_is_valid():
    assert _parse(VALID_BYTES) == VALID
    assert _parse(VALID_STORED, stored=True) == VALID


# --- byte-level edits and random bytes ----------------------------------------------------------------------


@settings(fuzz, max_examples=600)
@given(edited(VALID_BYTES) | st.binary(max_size=400))
def test_manifest_json_bytes(data):
    _parse(data)


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
frames = st.binary(max_size=300) | st.binary(max_size=300).map(lambda b: ZSTD_MAGIC + b)


@settings(fuzz, max_examples=600)
@given(edited(VALID_STORED) | frames)
def test_stored_manifest_bytes(data):
    _parse(data, stored=True)


# --- JSON-level edits: reach the rules behind the JSON syntax -----------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(1 << 70), 1 << 70)
    | st.text(st.characters(exclude_categories=()), max_size=12)
    | st.sampled_from(["", ".", "..", "/", "a/../b", "/etc/passwd", "0755", "raw", "zstd", "zstd-patch", "xz",
                       "gzip-recipe", "file", "dir", "symlink", "hardlink", "platform", "game/x", "content", "system",
                       "A\u0301", "sha256:" + "0" * 64, "f" * 64, "1f8b0800000000000003", 1.5, float("nan")]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def _nodes(value, path=()):
    """Every position in a JSON tree, as key paths."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _nodes(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nodes(item, (*path, index))


def _redigest(document) -> None:
    """Recompute tree digests where the entries still allow it, so edits get past the digest check."""
    with contextlib.suppress(Exception):
        for component in document["components"]:
            entries = [Entry(path=e.get("path"), type=e.get("type"),
                             mode=int(e["mode"], 8) if isinstance(e.get("mode"), str) else None,
                             uid=e.get("uid"), gid=e.get("gid"), size=e.get("size"), sha256=e.get("sha256"),
                             target=e.get("target")) for e in component["entries"]]
            component["tree_digest"] = tree_digest(entries)


@st.composite
def edited_documents(draw):
    document = json.loads(VALID_BYTES)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(list(_nodes(document))[1:]))
        *parent_path, key = where
        parent = document
        for step in parent_path:
            parent = parent[step]
        kind = draw(st.sampled_from(["replace", "replace", "delete", "add", "copy", "number", "string"]))
        if kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "delete":
            del parent[key]
        elif kind == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["x", "base", "chunks", "gzip", "prefix", "target", "removed"]))] = \
                draw(json_values)
        elif kind == "copy" and isinstance(parent, list):
            parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(parent[key]))
        elif kind == "number" and isinstance(parent[key], int):
            parent[key] = draw(st.sampled_from([-1, 0, 1, (1 << 63) - 1, 1 << 63, 1 << 64, 64 << 20]))
        elif kind == "string" and isinstance(parent[key], str):
            at = draw(st.integers(0, len(parent[key])))
            inserted = draw(st.sampled_from(["/", "/..", "\0", "\ud800", "A", "\u0301", "x" * 256]))
            parent[key] = parent[key][:at] + inserted + parent[key][at:]
    if draw(st.booleans()):
        _redigest(document)
    return json.dumps(document, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@settings(fuzz, max_examples=1000)
@given(edited_documents())
def test_manifest_json_edits(data):
    _parse(data)


# --- random documents of the manifest's shape ---------------------------------------------------------------


def mostly(good):
    """Usually a plausible value, sometimes any JSON: deep rules are reached, shallow ones still tried."""
    return st.sampled_from([True] * 7 + [False]).flatmap(lambda plausible: good if plausible else json_values)


hexes = mostly(st.sampled_from(["0" * 64, "1" * 64, _sha(b"x"), "A" * 64, "0" * 63]))
small_ints = mostly(st.sampled_from([0, 1, 8, 20, 38, 100, -1, 1 << 63]))
names = mostly(st.sampled_from([".", "a", "a/b", "b", "A", "../x", "/x", "a/", "", "d/up"]))


def _optional(**fields):
    return st.fixed_dictionaries({}, optional=fields)


entries_json = st.fixed_dictionaries(
    {"path": names, "type": mostly(st.sampled_from(["dir", "file", "symlink", "hardlink"]))},
    optional={"mode": mostly(st.sampled_from(["0755", "0644", "4755", "755"])),
              "uid": small_ints, "gid": small_ints, "mtime": small_ints, "size": small_ints, "sha256": hexes,
              "target": names, "base": names,
              "chunks": st.lists(st.fixed_dictionaries({"object": hexes, "size": small_ints},
                                                       optional={"prefix": _optional(path=names, sha256=hexes,
                                                                                     offset=small_ints,
                                                                                     length=small_ints,
                                                                                     gunzip=st.booleans())}),
                                 max_size=3),
              "gzip": _optional(header=mostly(st.just("1f8b0800000000000003")), level=small_ints, size=small_ints,
                                sha256=hexes, block_ends=st.lists(small_ints, max_size=3), mem_level=small_ints)})
documents = st.fixed_dictionaries({
    "type": mostly(st.just(DOCUMENT_TYPE)),
    "format": mostly(st.just(FORMAT)),
    "codecs": mostly(st.sampled_from([[], ["raw"], ["zstd"], ["zstd-patch"], ["gzip-recipe", "zstd"],
                                      ["raw", "zstd", "zstd-patch"], ["gzip-recipe", "raw", "zstd", "zstd-patch"],
                                      ["block", "raw"], ["block", "bsdiff", "zstd"]])),
    "product": mostly(st.just("demo")),
    "hardware": mostly(st.just(["cab-a"])),
    "components": st.lists(st.fixed_dictionaries(
        {"name": mostly(st.sampled_from(["platform", "game/a", "game/A"])),
         "version": mostly(st.just("1")), "sequence": small_ints,
         "policy": mostly(st.sampled_from(["system", "content"])), "tree_digest": st.just(""),
         "entries": st.lists(entries_json, max_size=5)},
        optional={"base": _optional(sequence=small_ints, version=mostly(st.just("0")),
                                    tree_digest=mostly(st.just("sha256:" + "0" * 64))),
                  "targets": mostly(st.just(["SN-1"])), "downgrade_from": mostly(st.just([1])),
                  "removed": mostly(st.just(["gone"]))}), max_size=2),
    "objects": st.lists(st.fixed_dictionaries({"id": hexes, "offset": small_ints, "size": small_ints,
                                               "encoding": st.sampled_from(["raw", "zstd", "zstd-patch", "block",
                                                                            "bsdiff"])},
                                              optional={"block": hexes}),
                        max_size=3),
    "volumes": st.lists(st.fixed_dictionaries({"name": mostly(st.just("0" * 64 + ".vol")), "size": small_ints,
                                               "sha256": hexes}), max_size=2),
})


@settings(fuzz, max_examples=500)
@given(documents)
def test_manifest_random_documents(document):
    _redigest(document)
    data = json.dumps(document).encode()
    parsed = _parse(data)
    # The stored form is the same document: it must give the same answer.
    assert _parse(codec.compress(data, 1), stored=True) == parsed


def test_manifest_with_an_overlong_integer_is_refused():
    """Regression: CPython refuses int literals of more than 4300 digits with a bare ValueError."""
    with pytest.raises(MalformedManifest):
        Manifest.from_bytes(b'{"format": ' + b"1" * 5000 + b"}")


# --- the delta decoder (T-BOMB: never more or less than the signed size) ------------------------------------

prefixes = st.none() | st.binary(max_size=64)


def _decode(encoding: str, stored: bytes, size: int, prefix) -> bytes | bytearray | None:
    try:
        data = codec.decode(encoding, stored, size, prefix)
    except codec.CorruptObject:
        return None
    assert isinstance(data, (bytes, bytearray)) and len(data) == size  # never more or less than the manifest promises
    return data


@settings(fuzz, max_examples=600)
@given(st.sampled_from(ENCODINGS), frames, st.integers(1, 4096), prefixes)
def test_decoder_on_random_objects(encoding, stored, size, prefix):
    _decode(encoding, stored, size, prefix)
    try:
        declared = codec.declared_size(stored)
    except codec.CorruptObject:
        return
    assert isinstance(declared, int) and declared >= 0


contents = st.one_of(st.binary(min_size=1, max_size=600),
                     st.tuples(st.binary(min_size=1, max_size=16), st.integers(1, 200)).map(lambda p: p[0] * p[1]))


@st.composite
def damaged_frames(draw):
    data = draw(contents)
    prefix = draw(st.none() | st.just(data[::-1] + data[:40]) | st.binary(min_size=1, max_size=200))
    stored = codec.compress(data, draw(st.integers(1, 5)), prefix)
    return data, prefix, stored, draw(st.just(stored) | edited(stored, 3))


@settings(fuzz, max_examples=600)
@given(damaged_frames(), st.sampled_from([0, 0, 1, -1, 1000]), st.booleans())
def test_decoder_on_damaged_frames(frame, size_change, other_prefix):
    data, prefix, stored, damaged = frame
    encoding = "zstd-patch" if prefix is not None else "zstd"
    size = max(1, len(data) + size_change)
    used_prefix = (prefix[:-1] + b"?" if other_prefix else prefix) if prefix is not None else None
    decoded = _decode(encoding, damaged, size, used_prefix)
    if damaged == stored and size == len(data) and used_prefix == prefix:
        assert decoded == data  # the unchanged frame decodes to exactly what was compressed


# --- gzip recipes -------------------------------------------------------------------------------------------


@st.composite
def gzip_members(draw, content=st.binary(max_size=300)):
    """A gzip member deflated as gzip -n and zlib do (memLevel 8), with random optional header fields."""
    data = draw(content)
    level = draw(st.integers(1, 9))
    flags = draw(st.integers(0, 31))
    header = bytearray(b"\x1f\x8b\x08" + bytes([flags]) + draw(st.binary(min_size=6, max_size=6)))
    if flags & 4:
        extra = draw(st.binary(max_size=20))
        header += struct.pack("<H", len(extra)) + extra
    for flag in (8, 16):
        if flags & flag:
            header += draw(st.binary(max_size=20)).replace(b"\0", b"") + b"\0"
    if flags & 2:
        header += struct.pack("<H", zlib.crc32(header) & 0xFFFF)
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
    body = deflater.compress(data) + deflater.flush()
    return bytes(header) + body + struct.pack("<II", zlib.crc32(data), len(data)), data


def _rebuilt(recipe: GzipRecipe, content: bytes) -> bytes:
    out = bytearray()
    rebuilder = (gzip_recipe.Rebuilder if recipe.shape is None else gzip_recipe.ShapedRebuilder)(recipe, out.extend)
    rebuilder.feed(content)
    rebuilder.finish()
    return bytes(out)


def _check_recipe(data: bytes, max_content: int):
    found = gzip_recipe.find_recipe(data, max_content)
    if found is not None:
        recipe, content = found
        assert len(content) <= max_content and recipe.size == len(content) and recipe.sha256 == _sha(content)
        gzip_recipe.check_header(recipe.header)
        assert _rebuilt(recipe, content) == data  # a recipe always rebuilds the file bit for bit
    return found


@settings(fuzz, max_examples=500)
@given(st.binary(max_size=400) | gzip_members().map(lambda m: m[0]).flatmap(lambda d: st.just(d) | edited(d)),
       st.integers(0, 400))
def test_gzip_recipe_on_hostile_bytes(data, max_content):
    check_gzip_recipe_on_any_bytes(data, max_content)


def check_gzip_recipe_on_any_bytes(data: bytes, max_content: int) -> None:
    """The recipe finder's and the header parser's invariants (also the atheris target's)."""
    _check_recipe(data, max_content)
    length = gzip_recipe.header_length(data)
    assert length is None or 10 <= length <= min(len(data), gzip_recipe.MAX_HEADER_BYTES)
    try:
        gzip_recipe.check_header(data)
    except ValueError:
        pass
    else:
        assert length == len(data)


@settings(fuzz, max_examples=300)
@given(gzip_members())
def test_gzip_recipe_is_found_for_zlib_output(member):
    data, content = member
    assert _check_recipe(data, len(content)) is not None


def _reader(data: bytes, cuts: list[int]):
    """``read_block`` for gunzip_prefix: ``data`` in blocks ending at ``cuts``, then b""."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    blocks = [data[a:b] for a, b in zip([0, *points], points) if b > a]
    return lambda: blocks.pop(0) if blocks else b""


@settings(fuzz, max_examples=500)
@given(st.binary(max_size=300) | gzip_members().map(lambda m: m[0]).flatmap(edited),
       st.lists(st.integers(0, 400), max_size=5), st.integers(-1, 600))
def test_gunzip_prefix_on_hostile_bytes(data, cuts, end):
    try:
        content = gzip_recipe.gunzip_prefix(_reader(data, cuts), end)
    except ValueError:
        return
    assert len(content) <= max(end, 0)


@settings(fuzz, max_examples=300)
@given(st.lists(gzip_members(st.binary(min_size=1, max_size=60)), min_size=1, max_size=3),
       st.lists(st.integers(0, 400), max_size=4), st.integers(0, 300))
def test_gunzip_prefix_reads_every_member(members, cuts, end):
    """Whatever the block boundaries, the content is that of all members (as gzip(1) reads it)."""
    data = b"".join(m for m, _ in members)
    assert gzip_recipe.gunzip_prefix(_reader(data, cuts), end) == gzip.decompress(data)[:end]


@settings(fuzz, max_examples=300)
@given(st.lists(gzip_members(st.binary(min_size=1, max_size=60)), min_size=1, max_size=3),
       st.lists(st.integers(0, 400), max_size=4), st.integers(0, 300), st.integers(0, 300))
def test_gunzip_range_is_the_slice_of_the_content(members, cuts, start, length):
    data = b"".join(m for m, _ in members)
    assert gzip_recipe.gunzip_range(_reader(data, cuts), start, start + length) == \
        gzip.decompress(data)[start:start + length]


def test_gunzip_range_holds_only_the_range():
    """A region far into a large member: what comes before it is inflated and dropped, so the
    memory is the region's, not the content's up to its end."""
    data = gzip.compress(bytes(64 << 20), 1, mtime=0)
    blocks = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
    tracemalloc.start()
    try:
        region = gzip_recipe.gunzip_range(lambda: blocks.pop(0) if blocks else b"", 60 << 20, (60 << 20) + 4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert region == bytes(4096) and peak < 8 << 20, peak


def test_gunzip_prefix_reads_a_member_that_starts_a_block():
    """Regression: a second member that begins exactly at a block boundary was silently dropped."""
    first, second = gzip.compress(b"first ", mtime=0), gzip.compress(b"second", mtime=0)
    assert gzip_recipe.gunzip_prefix(_reader(first + second, [len(first)]), 100) == b"first second"


# --- path rules (T-PATH, T-LINK-ESCAPE) ---------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=40)
path_parts = st.sampled_from(["a", "b", "c", "..", ".", "", "x" * 256, "caf\u00e9", "\0"])
path_like = st.lists(path_parts, max_size=6).map("/".join) | st.lists(path_parts, max_size=6).map(
    lambda p: "/" + "/".join(p)) | any_text


@settings(fuzz, max_examples=500)
@given(path_like | st.just("/".join(["d"] * 129)) | st.just("/".join(["abcdefgh"] * 500)))
def test_check_path(path):
    try:
        paths.check_path(path)
    except paths.PathError:
        return
    if path != paths.ROOT:
        parts = path.split("/")
        assert not path.startswith("/") and "\0" not in path and len(parts) <= paths.MAX_DEPTH
        assert len(path.encode()) <= paths.MAX_PATH_BYTES
        assert all(p not in ("", ".", "..") and len(p.encode()) <= paths.MAX_NAME_BYTES for p in parts)
    paths.collision_key(path, fold_case=True)


@settings(fuzz, max_examples=300)
@given(any_text, path_like, st.booleans())
def test_check_link_target(path, target, inside):
    try:
        paths.check_link_target(path, target, must_stay_inside=inside)
    except paths.PathError:
        return
    assert target and "\0" not in target and not (inside and target.startswith("/"))


link_names = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map("/".join)
link_targets = st.lists(st.sampled_from(["a", "b", "c", "..", ".", ""]), min_size=1, max_size=5).map("/".join)


@settings(fuzz, max_examples=1000)
@given(st.dictionaries(link_names, link_targets | link_targets.map(lambda t: "/" + t), max_size=6),
       link_targets | path_like)
def test_resolve_within(symlinks, path):
    try:
        resolved = paths.resolve_within(path, symlinks)
    except paths.PathError:
        return
    assert isinstance(resolved, str)
    if resolved != paths.ROOT:
        parts = resolved.split("/")
        assert not resolved.startswith("/") and all(p not in ("", ".", "..") for p in parts)  # never escapes
        # Fully resolved: no prefix of the result is itself a symlink.
        assert not any("/".join(parts[:n]) in symlinks for n in range(1, len(parts) + 1))


# --- the stick layout, on real directories (T-MEDIUM, T-SYMLINK-READ, T-INCOMPLETE) -------------------------

PRODUCT = "demo"


def _can_make_device_nodes() -> bool:
    with tempfile.TemporaryDirectory() as directory:
        try:
            os.mknod(os.path.join(directory, "null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except (OSError, AttributeError):
            return False
    return True


# A FIFO must not hang the reader; a device node (where we may make one) must not be read as a marker.
KINDS = ["dir", "file", "symlink", "symlink-dir", "fifo", "socket"] + (["device"] if _can_make_device_nodes() else [])
folder_kinds = st.sampled_from(["dir"] * 12 + ["absent"] + KINDS[1:])
entry_kinds = st.sampled_from(["dir", "file", "file", "file"] + KINDS[1:])
junk = st.sampled_from(["._x", ".DS_Store", "Thumbs.DB", "System Volume Information", ".Trash-1000", "desktop.ini",
                        "$RECYCLE.BIN", "._0123456789abcdef", "._root-1.json"])
random_names = (st.text(st.characters(exclude_characters="/\0", exclude_categories=("Cs",)), min_size=1, max_size=16)
                | st.binary(min_size=1, max_size=12).map(lambda b: os.fsdecode(b.replace(b"/", b"").replace(b"\0", b"")
                                                                            or b"x"))
                ).filter(lambda n: n not in (".", ".."))
# Random names that happen to be valid are not "random" for the model (docs/STICK.md names).
ROOT_NAME, BUNDLE_ID = re.compile(r"root-[1-9][0-9]{0,8}\.json"), re.compile(r"[0-9a-f]{16}")
bundle_ids = st.sampled_from(["0123456789abcdef", "fedcba9876543210", "00000000000000ff"])
root_versions = st.integers(1, 999_999_999)


@st.composite
def markers(draw, folder: str):
    """COMPLETE marker contents, tagged True when a device must accept them for ``folder``."""
    tail = draw(st.text("0123456789abcdef", min_size=64 - len(folder), max_size=64 - len(folder)))
    good = f"{folder}{tail}\n".encode("utf-8", "surrogateescape") if len(folder) <= 64 else b""
    variant = draw(st.sampled_from(["good", "good", "crlf", "bare", "upper", "extra", "other", "random"]))
    content = {"good": good, "crlf": good[:-1] + b"\r\n", "bare": good[:-1], "upper": good.upper(),
               "extra": good + b"x", "other": (f"{'9' * 16}{tail}\n").encode(),
               "random": draw(st.binary(max_size=80))}[variant]
    return content, bool(good) and content == good


@st.composite
def stick_trees(draw):
    """A stick as a model: {relative path: (kind, file bytes)} plus the answers a device must give."""
    product = draw(st.sampled_from([PRODUCT] * 6 + ["demo.", "de:mo", "", "x" * 129, "Thumbs.db", None]))
    product = product if product is not None else draw(random_names)
    tree: dict[str, tuple[str, bytes]] = {}
    roots: set[int] = set()
    bundles: dict[str, str] = {}
    base = product
    product_kind, trust_kind, bundles_kind = draw(folder_kinds), draw(folder_kinds), draw(folder_kinds)
    tree[base] = (product_kind, b"")
    for junk_name in draw(st.lists(junk, max_size=2)):
        tree.setdefault(junk_name, (draw(entry_kinds), b"junk"))
    if product_kind == "dir":
        tree[f"{base}/trust"] = (trust_kind, b"")
        tree[f"{base}/bundles"] = (bundles_kind, b"")
    if product_kind == "dir" and trust_kind == "dir":
        for _ in range(draw(st.integers(0, 5))):
            choice = draw(st.sampled_from(["root", "root", "near", "junk", "random"]))
            version = draw(root_versions)
            name = {"root": f"root-{version}.json",
                    "near": draw(st.sampled_from([f"root-0{version}.json", "root-0.json", f"ROOT-{version}.json",
                                                  f"root-{version}.json.minisig", f"root-{version}.JSON",
                                                  "root-1234567890.json", f"root-{version}.json "])),
                    "junk": draw(junk), "random": draw(random_names.filter(lambda n: not ROOT_NAME.fullmatch(n)))
                    }[choice]
            if f"{base}/trust/{name}" in tree:
                continue
            kind = draw(entry_kinds)
            tree[f"{base}/trust/{name}"] = (kind, b"{}")
            if choice == "root" and kind == "file":
                roots.add(version)
    if product_kind == "dir" and bundles_kind == "dir":
        for _ in range(draw(st.integers(1, 4))):
            choice = draw(st.sampled_from(["id"] * 5 + ["near", "junk", "random"]))
            name = {"id": draw(bundle_ids),
                    "near": draw(st.sampled_from(["0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0"])),
                    "junk": draw(junk), "random": draw(random_names.filter(lambda n: not BUNDLE_ID.fullmatch(n)))
                    }[choice]
            folder = f"{base}/bundles/{name}"
            if folder in tree:
                continue
            kind = draw(st.sampled_from(["dir"] * 5 + KINDS[1:]))
            tree[folder] = (kind, b"")
            if kind != "dir":
                continue
            marker, accepted = draw(markers(name))
            marker_kind = draw(st.sampled_from(["file"] * 4 + KINDS))
            tree[f"{folder}/{stick.COMPLETE}"] = (marker_kind, marker)
            tree[f"{folder}/manifest.json.zst"] = ("file", draw(st.binary(max_size=20)))
            if choice == "id" and marker_kind == "file" and accepted:
                bundles[name] = marker[:64].decode()
    return product, tree, roots, bundles


def _make(path: Path, kind: str, data: bytes) -> bool:
    """Create one stick entry; False when this system cannot make that kind here."""
    if kind == "absent":
        return True
    if kind == "dir":
        path.mkdir()
    elif kind == "file":
        path.write_bytes(data)
    elif kind == "symlink":
        # Points at a regular file with the same content: only the link itself is wrong.
        target = path.with_name(path.name + ".target")
        target.write_bytes(data)
        path.symlink_to(target.name)
    elif kind == "symlink-dir":
        path.symlink_to(path.parent if data == b"" else "/")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    elif kind == "socket":
        if len(os.fsencode(path)) >= 100:
            return False
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(os.fsencode(path))
    return True


def _layout_answers(stick_path: Path, product: str):
    """(root versions, {bundle id: manifest sha256}) or the error type the stick gave."""
    answers = []
    for read in (lambda: [r.version for r in medium.root_files(stick_path, product)],
                 lambda: {b.id: b.manifest_sha256 for b in medium.complete_bundles(stick_path, product)}):
        try:
            answers.append(read())
        except (stick.StickLayoutError, Failed) as error:
            answers.append(type(error))
    return answers


def _expected(product_kind: str, folder_kind: str, listing):
    """What a device must read: a folder that is not a plain folder is an error; an absent one is empty."""
    if product_kind not in ("dir", "absent") or (product_kind == "dir" and folder_kind not in ("dir", "absent")):
        return stick.StickLayoutError
    return listing if product_kind == folder_kind == "dir" else type(listing)()


@settings(fuzz, max_examples=400)
@given(stick_trees())
def test_stick_layout(model):
    product, tree, roots, bundles = model
    with tempfile.TemporaryDirectory() as directory:
        stick_path = Path(directory).resolve()
        marker_sockets = False
        for relative in sorted(tree, key=lambda p: p.count("/")):
            kind, data = tree[relative]
            if "" in relative.split("/"):
                continue  # no such name (the product "" is refused before any file is touched)
            parent = (stick_path / relative).parent
            if os.path.realpath(parent) == str(parent) and parent.is_dir():  # never write through a symlink
                marker_sockets |= kind == "socket" and relative.endswith("/" + stick.COMPLETE)
                assume(_make(stick_path / relative, kind, data))
        found_roots, found_bundles = _layout_answers(stick_path, product)
    try:
        stick.product_folder(product)
    except stick.StickLayoutError:
        assert found_roots is found_bundles is stick.StickLayoutError
        return
    product_kind = tree[product][0]
    assert found_roots == _expected(product_kind, tree.get(f"{product}/trust", ("absent",))[0], sorted(roots))
    if marker_sockets and found_bundles is Failed:
        return  # open() of a socket fails (ENXIO): the stick is reported unreadable (Failed), not skipped
    assert found_bundles == _expected(product_kind, tree.get(f"{product}/bundles", ("absent",))[0], bundles)


def test_a_folder_named_complete_is_not_a_marker(tmp_path):
    """Regression: a directory named COMPLETE reached os.fdopen, which raises IsADirectoryError."""
    (tmp_path / PRODUCT / stick.BUNDLES / "0123456789abcdef" / stick.COMPLETE).mkdir(parents=True)
    assert medium.complete_bundles(tmp_path, PRODUCT) == []


# --- reading the files the layout names: signatures, roots, the manifest (T-MEDIUM) -------------------------


class Hung(Exception):
    """A read that blocks (not an OSError, so that no ``except OSError`` on the way can hide it)."""


@contextlib.contextmanager
def _no_hang(seconds: float = 1.0):
    """Fail instead of waiting forever (a FIFO opened for reading blocks until a writer appears)."""
    def expire(signum, frame):
        raise Hung(f"still reading the stick after {seconds} s: a read blocks")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_SIGNER = SecretKey(key_id=bytes(range(1, 9)), seed=bytes(32))
SIGNATURE = sign(_SIGNER, VALID_STORED, signature_comment("demo")).to_bytes()
STICK_FILES = {  # name in a bundle or trust folder -> what it holds when it is a regular file
    bundle_dir.MANIFEST: edited(VALID_STORED) | st.just(VALID_STORED),
    f"{bundle_dir.MANIFEST}.minisig": edited(SIGNATURE),
    f"{bundle_dir.MANIFEST}.{_SIGNER.id}.minisig": edited(SIGNATURE) | st.just(SIGNATURE),
    f"{bundle_dir.MANIFEST}.FEDCBA9876543210.minisig": st.binary(max_size=400),
    "root-1.json": st.binary(max_size=200),
    f"root-1.json.{_SIGNER.id}.minisig": edited(SIGNATURE),
}


def _read_folder(folder: Path) -> None:
    """What the agent reads from a bundle folder and a trust folder it has listed."""
    try:
        files = read_bundle(folder)
        Manifest.from_stored(files.manifest_bytes)
    except UpdateError:
        pass
    try:
        load_root_candidate(folder / "root-1.json")
    except UpdateError:
        pass


# No shrinking: each candidate that hangs costs the whole timeout (the regressions below are minimal).
@settings(fuzz, max_examples=200, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(st.fixed_dictionaries({}, optional={name: st.tuples(entry_kinds, content)
                                           for name, content in STICK_FILES.items()}))
def test_stick_files_are_read_safely(files):
    """Any kind of entry in the place of a listed file: a result or our error, never a hang."""
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory).resolve()
        for name, (kind, data) in files.items():
            assume(_make(folder / name, kind, data))
        with _no_hang():
            _read_folder(folder)


def test_a_fifo_in_place_of_a_signature_is_not_waited_on(tmp_path):
    """Regression: read_capped opened a FIFO named like a signature file and blocked forever."""
    (tmp_path / bundle_dir.MANIFEST).write_bytes(VALID_STORED)
    os.mkfifo(tmp_path / f"{bundle_dir.MANIFEST}.{_SIGNER.id}.minisig")
    with _no_hang(), pytest.raises(UpdateError):
        read_bundle(tmp_path)


def test_a_folder_in_place_of_a_signature_is_refused(tmp_path):
    """Regression: read_capped reached os.fdopen with a directory, which raises IsADirectoryError."""
    (tmp_path / bundle_dir.MANIFEST).write_bytes(VALID_STORED)
    (tmp_path / f"{bundle_dir.MANIFEST}.{_SIGNER.id}.minisig").mkdir()
    with pytest.raises(UpdateError):
        read_bundle(tmp_path)


@settings(fuzz, max_examples=300)
@given(st.binary(max_size=80) | markers("0123456789abcdef").map(lambda m: m[0]),
       st.sampled_from(["0123456789abcdef", "", "0" * 64, "0" * 65]) | any_text)
def test_marked_sha256(marker, folder):
    named = stick.marked_sha256(marker, folder)
    assert named is None or (len(named) == 64 and named.startswith(folder) and marker == named.encode() + b"\n")


@settings(fuzz, max_examples=300)
@given(any_text)
def test_product_folder_and_junk_names(product):
    stick.is_junk(product)
    try:
        assert stick.product_folder(product) == product
    except stick.StickLayoutError:
        return
    assert "/" not in product and product not in (".", "..") and not product.endswith(".")


# --- the fuzz target used by `make fuzz` still runs ---------------------------------------------------------


def test_atheris_target_runs_on_its_seeds():
    from tests.fuzz import fuzz_formats  # atheris itself is only needed to fuzz, not for this
    seeds = fuzz_formats.seeds()
    assert len(seeds) >= len(fuzz_formats.TARGETS)
    for data in seeds:
        fuzz_formats.one_input(data)


def test_a_bundle_folder_flooded_with_names_is_refused_at_the_cap(tmp_path):
    """A stick's bundle folder is listed before any signature is checked, and an ext4 stick can
    hold millions of names there: the listing stops at MAX_LISTED_ENTRIES instead of reading all."""
    (tmp_path / bundle_dir.MANIFEST).write_bytes(VALID_STORED)
    for number in range(detached.MAX_LISTED_ENTRIES):
        (tmp_path / f"junk-{number}").touch()
    with pytest.raises(UpdateError, match=f"more than {detached.MAX_LISTED_ENTRIES} entries beside"):
        read_bundle(tmp_path)
