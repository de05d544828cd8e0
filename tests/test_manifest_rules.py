"""The manifest parser's rules: a signed manifest still cannot escape, collide or lie (table-driven).

Each case starts from a valid manifest document and breaks one rule; the parser must refuse it
with MalformedManifest naming the rule. Signatures are checked before parsing, so these cases
model an insider or a compromised build machine with valid signing keys.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from agent.format.manifest import (MAX_CHUNKS, MAX_ENTRIES, MAX_MANIFEST_BYTES, Base, Component, MalformedManifest,
                                   Manifest, StoredObject, Volume)
from agent.format.tree import Chunk, Entry, tree_digest
from keys import strict_json

DATA = b"stored object bytes"
OBJECT = hashlib.sha256(DATA).hexdigest()
CONTENT = hashlib.sha256(b"the file").hexdigest()


def _entries(game: bool) -> tuple[Entry, ...]:
    owner = dict(uid=0, gid=0, mtime=0)
    entries = [
        Entry(path=".", type="dir", mode=0o755, **owner),
        Entry(path="bin", type="dir", mode=0o755, **owner),
        Entry(path="bin/tool", type="file", mode=0o755, size=8, sha256=CONTENT, chunks=(Chunk(OBJECT, 8),), **owner),
        Entry(path="bin/tool2", type="hardlink", target="bin/tool"),
        Entry(path="link", type="symlink", target="bin/tool", **owner),
    ]
    return tuple(entries)


def valid_document(game: bool = False, delta: bool = False) -> dict:
    entries = _entries(game)
    component = Component(
        name="game/lucky" if game else "platform", version="1.0", sequence=2,
        policy="content" if game else "system", tree_digest=tree_digest(entries), entries=entries,
        base=Base(sequence=1, version="0.9", tree_digest="sha256:" + "0" * 64) if delta else None)
    manifest = Manifest(product="demo", hardware=("cab-a",), components=(component,),
                        objects=(StoredObject(id=OBJECT, offset=0, size=len(DATA), encoding="zstd"),),
                        volumes=(Volume(name=f"{OBJECT}.vol", size=len(DATA), sha256=OBJECT),))
    return json.loads(manifest.to_bytes())


def _redigest(document: dict) -> dict:
    """Recompute tree digests after a mutation, so the case tests its own rule, not the digest."""
    for component in document["components"]:
        entries = []
        for raw in component["entries"]:
            entries.append(Entry(path=raw["path"], type=raw["type"],
                                 mode=int(raw["mode"], 8) if "mode" in raw else None, uid=raw.get("uid"),
                                 gid=raw.get("gid"), size=raw.get("size"), sha256=raw.get("sha256"),
                                 target=raw.get("target")))
        component["tree_digest"] = tree_digest(entries)
    return document


def entry(document: dict, path: str) -> dict:
    return next(e for e in document["components"][0]["entries"] if e["path"] == path)


def add(document: dict, *entries: dict) -> None:
    listing = document["components"][0]["entries"]
    listing.extend(entries)
    listing.sort(key=lambda e: (e["path"] != ".", e["path"].encode()))


MEMBER = hashlib.sha256(b"the file").hexdigest()  # raw: the file's own bytes, in a block


def blocked(document: dict) -> dict:
    """The file's chunk stored raw in a block (the block's frame is the stored object's bytes)."""
    document["objects"] = [{**document["objects"][0], "encoding": "block"},
                           {"id": MEMBER, "offset": 0, "size": 8, "encoding": "raw", "block": OBJECT}]
    entry(document, "bin/tool")["chunks"][0]["object"] = MEMBER
    document["codecs"] = ["block", "raw"]
    return document


def test_a_block_and_its_member_parse_and_the_member_bears_the_block_s_stored_bytes():
    manifest = Manifest.from_bytes(json.dumps(blocked(valid_document())).encode())
    assert manifest.codecs == ("block", "raw")
    assert manifest.object_index()[MEMBER].block == OBJECT
    assert manifest.stored_costs() == {OBJECT: 0, MEMBER: len(DATA)}


def _second_block(document: dict) -> None:
    document["objects"].append({"id": "e" * 64, "offset": len(DATA), "size": 1, "encoding": "block"})
    document["volumes"][0]["size"] += 1


BLOCK_CASES = {
    "member of an unlisted block": (lambda d: d["objects"][1].update(block="e" * 64), "not a block listed before it"),
    "member listed before its block": (lambda d: d["objects"].reverse(), "not a block listed before it"),
    "member of an object that is not a block": (lambda d: d["objects"][0].update(encoding="zstd"),
                                                "not a block listed before it"),
    "block inside a block": (lambda d: d["objects"][1].update(encoding="block"), "inside another block"),
    "member not where the last one ended": (lambda d: d["objects"][1].update(offset=1), "of its block, expected 0"),
    "block over its limit": (lambda d: d["objects"][1].update(size=(16 << 20) + 1), "holds more than 16777216"),
    "block with no members": (_second_block, "a block has no members"),
    "chunk naming a block": (lambda d: entry(d, "bin/tool")["chunks"][0].update(object=OBJECT),
                             "as a chunk's object"),
    "member with a block that is not an id": (lambda d: d["objects"][1].update(block="../x"), "object block"),
}


@pytest.mark.parametrize("case", BLOCK_CASES)
def test_block_rule(case):
    mutate, message = BLOCK_CASES[case]
    document = blocked(valid_document())
    mutate(document)
    with pytest.raises(MalformedManifest) as raised:
        Manifest.from_bytes(json.dumps(document).encode())
    assert message in str(raised.value), str(raised.value)


FILE = {"type": "file", "mode": "0644", "uid": 0, "gid": 0, "mtime": 0, "size": 0,
        "sha256": hashlib.sha256(b"").hexdigest()}
LINK = {"type": "symlink", "uid": 0, "gid": 0, "mtime": 0}

CASES = {
    "dot-dot component": (False, lambda d: add(d, {**FILE, "path": "bin/../../etc/passwd"}), "'..' component"),
    "absolute path": (False, lambda d: add(d, {**FILE, "path": "/etc/passwd"}), "is absolute"),
    "NUL in a name": (False, lambda d: add(d, {**FILE, "path": "bin/a\0b"}), "NUL"),
    "empty component": (False, lambda d: add(d, {**FILE, "path": "bin//x"}), "empty"),
    "overlong name": (False, lambda d: add(d, {**FILE, "path": "bin/" + "x" * 256}), "longer than 255"),
    "overlong path": (False, lambda d: add(d, {**FILE, "path": "/".join(["abcdefgh"] * 600)}), "longer than 4096"),
    "deep nesting": (False, lambda d: add(d, {**FILE, "path": "/".join(["d"] * 200)}), "deeper than 128"),
    "duplicate path": (False, lambda d: add(d, {**FILE, "path": "bin/tool"}), "out of order or listed twice"),
    "out of order": (False, lambda d: d["components"][0]["entries"].reverse(), "first entry must be the root"),
    "write through a symlink": (False, lambda d: add(d, {**FILE, "path": "link/x"}), "is not a directory"),
    "parent missing": (False, lambda d: add(d, {**FILE, "path": "nodir/x"}), "is not a directory"),
    "hard link to a directory": (False, lambda d: add(d, {"path": "bin/h", "type": "hardlink", "target": "bin"}),
                                 "must point to a file"),
    "hard link outside": (False, lambda d: add(d, {"path": "bin/h", "type": "hardlink", "target": "../etc/x"}),
                          "'..' component"),
    "unicode normalisation twins": (False, lambda d: add(d, {**FILE, "path": "caf\u00e9"}, {**FILE, "path": "cafe\u0301"}),
                                    "Unicode normalisation"),
    "case twins in a game": (True, lambda d: add(d, {**FILE, "path": "Link"}), "case folding"),
    "setuid in a game": (True, lambda d: entry(d, "bin/tool").update(mode="4755"), "setuid"),
    "foreign owner in a game": (True, lambda d: entry(d, "bin/tool").update(uid=1000), "owned by 0:0"),
    "absolute symlink in a game": (True, lambda d: entry(d, "link").update(target="/etc/shadow"), "is absolute"),
    "symlink out of a game": (True, lambda d: entry(d, "link").update(target="../../x"), "outside its component"),
    "symlink chain out of a game": (True, lambda d: add(d, {**LINK, "path": "bin/up", "target": ".."},
                                                        {**LINK, "path": "bin/esc", "target": "up/../x"}),
                                    "outside its component"),
    "symlink loop in a game": (True, lambda d: add(d, {**LINK, "path": "l1", "target": "l2"},
                                                   {**LINK, "path": "l2", "target": "l1/x"}), "symlink loop"),
    "game with system policy": (True, lambda d: d["components"][0].update(policy="system"), "policy 'content'"),
    "platform with content policy": (False, lambda d: d["components"][0].update(policy="content"),
                                     "policy 'system'"),
    "bad mode": (False, lambda d: entry(d, "bin/tool").update(mode="755"), "octal string"),
    "unknown entry field": (False, lambda d: entry(d, "bin/tool").update(setuid=True), "unknown field"),
    "chunks do not add up": (False, lambda d: entry(d, "bin/tool").update(size=9), "do not add up"),
    "missing object": (False, lambda d: entry(d, "bin/tool")["chunks"][0].update(object="f" * 64), "not stored"),
    "patch in a full update": (False, lambda d: (d["objects"][0].update(encoding="zstd-patch"),
                                                 entry(d, "bin/tool")["chunks"][0].update(
                                                     prefix={"path": "x", "offset": 0, "length": 1})),
                               "full update"),
    "base copy in a full update": (False, lambda d: (entry(d, "bin/tool").pop("chunks"),
                                                     entry(d, "bin/tool").update(base="bin/tool")), "full update"),
    "objects overlap": (False, lambda d: d["objects"][0].update(offset=1), "expected 0"),
    "payload larger than objects": (False, lambda d: d["volumes"][0].update(size=999), "objects cover"),
    "volume not named by its hash": (False, lambda d: d["volumes"][0].update(name="a" * 64 + ".vol"),
                                     "must be '<its sha256>.vol'"),
    "huge chunk (decompression bomb)": (False, lambda d: entry(d, "bin/tool")["chunks"][0].update(size=1 << 40),
                                        "chunk size must be"),
    "trust root as manifest": (False, lambda d: d.update(type="trust-root"), "document type"),
    "future format": (False, lambda d: d.update(format=4), "format version 4 is not supported (this tool reads 2 and 3)"),
    "format 1 (no codecs list)": (False, lambda d: (d.update(format=1), d.pop("codecs")), "format version 1"),
    "codecs list missing": (False, lambda d: d.pop("codecs"), "codecs"),
    "codecs list omits a used codec": (False, lambda d: d.update(codecs=[]),
                                       "the bundle uses codec 'zstd', which its codecs list does not name"),
    "codecs list names an unused codec": (False, lambda d: d.update(codecs=["raw", "zstd"]),
                                          "codecs lists 'raw', which nothing in the bundle uses"),
    "codecs list unsorted": (False, lambda d: d.update(codecs=["zstd", "raw"]), "sorted and unique"),
    "codecs list repeats a codec": (False, lambda d: d.update(codecs=["zstd", "zstd"]), "sorted and unique"),
    "codec name not a name": (False, lambda d: d.update(codecs=["zstd\nrm -rf"]), "codecs must be names"),
    "codecs list not a list": (False, lambda d: d.update(codecs="zstd"), "codecs"),
    "object of a transform's name": (False, lambda d: (d["objects"][0].update(encoding="gzip-recipe"),
                                                       d.update(codecs=["gzip-recipe"])),
                                     "object encoding must be one of"),
    "float version": (False, lambda d: d["components"][0].update(sequence=2.5), "non-integer"),
    "boolean sequence": (False, lambda d: d["components"][0].update(sequence=True), "must be int"),
    "no hardware": (False, lambda d: d.update(hardware=[]), "hardware lists no model"),
}


@pytest.mark.parametrize("case", CASES)
def test_manifest_rule(case):
    game, mutate, message = CASES[case]
    document = valid_document(game)
    Manifest.from_bytes(json.dumps(document).encode())  # the starting point is valid
    mutate(document)
    if case not in ("out of order",):
        try:
            _redigest(document)
        except (KeyError, ValueError, TypeError):
            pass
    with pytest.raises(MalformedManifest) as raised:
        Manifest.from_bytes(json.dumps(document).encode())
    assert message in str(raised.value), str(raised.value)


def test_tree_digest_must_match_the_listing():
    document = valid_document()
    entry(document, "bin/tool")["mode"] = "0777"
    with pytest.raises(MalformedManifest, match="tree_digest does not match its entries"):
        Manifest.from_bytes(json.dumps(document).encode())


def test_round_trip_is_exact():
    for game in (False, True):
        raw = json.dumps(valid_document(game), sort_keys=True, indent=2, ensure_ascii=False).encode() + b"\n"
        assert Manifest.from_bytes(raw).to_bytes() == raw


def test_stored_manifest_bomb_is_refused_before_decompressing():
    import zstandard
    bomb = zstandard.ZstdCompressor(level=19).compress(b"{" + b" " * (80 << 20) + b"}")
    assert len(bomb) < 100_000
    with pytest.raises(MalformedManifest, match="would decompress to"):
        Manifest.from_stored(bomb)
    with pytest.raises(MalformedManifest, match="not a valid zstd frame"):
        Manifest.from_stored(b"not zstd at all")


# --- memory (T-EXHAUST; docs/FORMAT.md, "Limits") ---------------------------------------------------
# The limits bound the agent's memory, so they are checked before what they count is built.


def _with_game(document: dict) -> dict:
    game = valid_document(game=True)["components"][0]
    document["components"].append(game)
    return document


@pytest.mark.parametrize("field, item", [("entries", {}), ("removed", "x")])
def test_entries_and_removed_paths_are_counted_over_all_components_before_any_is_built(field, item):
    document = _with_game(valid_document(delta=True))
    document["components"][1]["base"] = document["components"][0]["base"]
    for component in document["components"]:
        component[field] = [item] * (MAX_ENTRIES // 2 + 1)  # each within the limit, not their sum
    with pytest.raises(MalformedManifest, match=f"more than {MAX_ENTRIES} {field}"):
        Manifest.from_bytes(json.dumps(document).encode())


def _in_chunks(count: int) -> dict:
    document = valid_document()
    entry(document, "bin/tool").update(size=count, chunks=[{"object": OBJECT, "size": 1}] * count)
    return _redigest(document)


def test_a_file_of_max_chunks_is_read_and_one_more_is_refused():
    # The file's entry is longer than strict_json.WINDOW: it is read by hand, its chunks one by one.
    assert len(json.dumps(_in_chunks(MAX_CHUNKS))) > strict_json.WINDOW
    manifest = Manifest.from_bytes(json.dumps(_in_chunks(MAX_CHUNKS)).encode())
    assert manifest.components[0].entries[2].chunks == (Chunk(OBJECT, 1),) * MAX_CHUNKS
    with pytest.raises(MalformedManifest, match=f"more than {MAX_CHUNKS} chunks"):
        Manifest.from_bytes(json.dumps(_in_chunks(MAX_CHUNKS + 1)).encode())


@pytest.mark.parametrize("character, width", [("\u0101", 2), ("\U0001F3B0", 4)])
def test_the_text_is_bounded_as_held_in_memory(character, width):
    """One character beyond U+00FF makes CPython hold every character in 2 bytes, beyond U+FFFF in 4."""
    document = valid_document()
    add(document, {**FILE, "path": character})
    text = json.dumps(_redigest(document), ensure_ascii=False)
    Manifest.from_bytes((text + " " * (MAX_MANIFEST_BYTES // width - len(text))).encode())
    with pytest.raises(MalformedManifest, match=f"{MAX_MANIFEST_BYTES // width + 1} characters of {width} bytes "
                                                 f"in memory, more than the {MAX_MANIFEST_BYTES}-byte limit"):
        Manifest.from_bytes((text + " " * (MAX_MANIFEST_BYTES // width + 1 - len(text))).encode())


@pytest.mark.parametrize("where", ["top level", "an entry"])
def test_values_read_whole_are_counted(where):
    """``[[], [], ...]`` costs ~19 bytes per byte as lists. Outside the large arrays it is refused once
    it holds MAX_VALUES values; an entry too long for the json module's window is read by hand, and
    refused the same way."""
    document = valid_document()
    (document if where == "top level" else entry(document, "bin/tool"))["padding"] = [[]] * strict_json.WINDOW
    with pytest.raises(MalformedManifest, match=f"more than {strict_json.MAX_VALUES} values"):
        Manifest.from_bytes(json.dumps(document).encode())


LAZY = frozenset({("a",), ("b", "*", "c")})
JSON_TEXTS = [
    '{"a": [1, {"x": [2, [3]]}, "s\\u00e9\\ud83c\\udfb0", null, true, false, -0, []], "b": [{"c": [{}, [[]]]}, 7]}',
    ' \t\n{ "a" : [ ] , "b" : [ { "c" : [ ] } ] , "z" : { "a" : [ 1 ] } }\r\n',
    '{"b": [{"c": "not an array"}], "a": {"not": "an array"}}',
]
BAD_TEXTS = ['{"a": [1,]}', '{"a": [1 2]}', '{"a": [1], }', '{"a" [1]}', '{"a": [1]} x', '{"a": [1.5]}',
             '{"a": [1], "a": [2]}', '{"b": [{"c": [{"k": 1, "k": 2}]}]}', '\ufeff{}', '{"a": [NaN]}', '[]',
             '{"a": [', '{"a": ["\x01"]}', '{"a": [' + "1" * 21 + "]}"]


def _whole(value):
    if isinstance(value, (list, strict_json.LazyArray)):
        return [_whole(item) for item in value]
    return {key: _whole(item) for key, item in value.items()} if isinstance(value, dict) else value


@pytest.mark.parametrize("text", JSON_TEXTS)
def test_lazy_arrays_read_the_same_values_as_the_json_module(text):
    assert _whole(strict_json.parse(text, lazy=LAZY)) == json.loads(text)


def test_lazy_arrays_are_left_in_the_text():
    document = strict_json.parse(JSON_TEXTS[0], lazy=LAZY)
    assert isinstance(document["a"], strict_json.LazyArray) and len(document["a"]) == 8
    assert isinstance(document["b"], list) and isinstance(document["b"][0]["c"], strict_json.LazyArray)
    assert list(document["a"]) == list(document["a"]) == json.loads(JSON_TEXTS[0])["a"]  # read again each time


@pytest.mark.parametrize("text", BAD_TEXTS)
def test_lazy_reading_refuses_what_the_json_module_reading_refuses_with_the_same_message(text):
    with pytest.raises(strict_json.JSONShapeError) as whole:
        _whole(strict_json.parse(text))
    with pytest.raises(strict_json.JSONShapeError) as lazy:
        _whole(strict_json.parse(text, lazy=LAZY))
    assert str(lazy.value) == str(whole.value)


# --- format 2 and 3: the prefix's base-file hash ---------------------------------------------------

DELTA_VECTOR = Path(__file__).parent / "vectors/delta-manifest.json"


def _prefixes(document: dict) -> list[dict]:
    return [c["prefix"] for e in document["components"][0]["entries"] for c in e.get("chunks", ()) if "prefix" in c]


def test_a_format_3_prefix_carries_no_base_file_hash():
    document = json.loads(DELTA_VECTOR.read_bytes())
    _prefixes(document)[0]["sha256"] = "0" * 64
    with pytest.raises(MalformedManifest, match="a prefix carries no sha256 in format 3"):
        Manifest.from_bytes(json.dumps(document).encode())


def test_a_format_2_prefix_names_its_base_files_hash():
    document = json.loads(DELTA_VECTOR.read_bytes())
    document["format"] = 2
    with pytest.raises(MalformedManifest, match="a prefix needs a sha256 in format 2"):
        Manifest.from_bytes(json.dumps(document).encode())
    for number, prefix in enumerate(_prefixes(document)):
        prefix["sha256"] = f"{number:064x}"
    manifest = Manifest.from_bytes(json.dumps(document).encode())
    parsed = [c.prefix.sha256 for e in manifest.components[0].entries for c in e.chunks if c.prefix]
    assert parsed == [f"{number:064x}" for number in range(len(parsed))] and len(parsed) > 3
