"""docs/manifest.schema.json against real manifests from `bundle make`, and the tree digest's golden vector.

The schema is published for other implementations (docs/FORMAT.md); these tests keep it true:
every manifest the real bundler writes must validate, and every hand-broken manifest the schema
refuses must be refused by the real parser too.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest
import zstandard

from agent.format import manifest as manifest_format
from agent.format.manifest import Manifest, MalformedManifest
from agent.format.tree import DIR, EMPTY_SHA256, FILE, HARDLINK, SYMLINK, Chunk, Entry, GzipRecipe, tree_digest
from tests.sim.tools import run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / "manifest.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def schema_errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- real manifests -------------------------------------------------------------------------

TOOL = random.Random(7).randbytes(64 << 10)  # incompressible: only a patch makes it small


def _changelog(lines: int) -> bytes:
    # Python's gzip at level 9 with mtime 0 is what `gzip -9n` makes: re-deflated bit for bit.
    return gzip.compress(b"".join(b"changelog line %d\n" % i for i in range(lines)), 9, mtime=0)


def _write_release(root: Path, version: int) -> Path:
    """Release `version` (1 or 2) of a platform and games, covering every kind of entry."""
    platform = root / "platform"
    for directory in ("bin", "etc", "share"):
        (platform / directory).mkdir(parents=True)
    tool = TOOL if version == 1 else TOOL[:30000] + b"patched" + TOOL[30007:]
    (platform / "bin/tool").write_bytes(tool)
    (platform / "bin/tool").chmod(0o4755)  # setuid: allowed in the platform only
    os.link(platform / "bin/tool", platform / "bin/tool-again")
    (platform / "bin/t").symlink_to("tool")
    (platform / "etc/empty").write_bytes(b"")
    (platform / ("etc/motd" if version == 1 else "etc/issue")).write_bytes(b"welcome\n")  # renamed
    (platform / "share/changes.gz").write_bytes(_changelog(3000 + version))
    games = {"lucky": random.Random(version).randbytes(4096)}
    if version == 2:
        games["extra"] = b"new game\n"  # a new component: full, inside a delta bundle
    table = [f'product = "demo-cabinet"\nhardware = ["cab-a", "cab-b"]\n[components.platform]\n'
             f'path = "platform"\nversion = "13.{version}"\nsequence = {version}\n']
    for name, data in games.items():
        game = root / "games" / name
        game.mkdir(parents=True)
        (game / "data.bin").write_bytes(data)
        (game / "current").symlink_to("data.bin")
        table.append(f'[components."game/{name}"]\npath = "games/{name}"\nversion = "1.{version}"\n'
                     f'sequence = {version}\n')
    (root / "release.toml").write_text("".join(table))
    return root / "release.toml"


def _manifest_json(bundle: Path) -> dict:
    stored = (bundle / "manifest.json.zst").read_bytes()
    return json.loads(zstandard.ZstdDecompressor().decompress(stored))


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> dict[str, dict]:
    """The decompressed manifests of a full bundle of release 1 and a delta from 1 to 2, made by
    the real `bundle make` (run_cli is what the `cli` fixture returns)."""
    root = tmp_path_factory.mktemp("releases")
    keys = root / "keys"
    run_cli("bundle", "keys", "new", "rel1", "--dir", keys, "--no-passphrase", check=True)
    release_1 = _write_release(root / "r1", 1)
    release_2 = _write_release(root / "r2", 2)
    common = ("--key", keys / "rel1.key", "--level", "3")
    run_cli("bundle", "make", "--release", release_1, "--out", root / "full", *common, check=True)
    run_cli("bundle", "make", "--release", release_2, "--base", release_1, "--out", root / "delta", *common,
            check=True)
    return {"full": _manifest_json(root / "full"), "delta": _manifest_json(root / "delta")}


def component(document: dict, name: str) -> dict:
    return next(c for c in document["components"] if c["name"] == name)


def entry(document: dict, name: str, path: str) -> dict:
    return next(e for e in component(document, name)["entries"] if e["path"] == path)


@pytest.mark.parametrize("kind", ["full", "delta"])
def test_real_manifests_match_the_schema(validator, manifests, kind):
    assert schema_errors(validator, manifests[kind]) == []


def test_the_delta_exercises_every_shape(manifests):
    """Guards the test above: the manifests must contain what the schema has to describe."""
    delta = manifests["delta"]
    tool = entry(delta, "platform", "bin/tool")
    assert tool["mode"] == "4755" and tool["chunks"][0]["prefix"]["path"] == "bin/tool"
    assert entry(delta, "platform", "bin/tool-again") == {"path": "bin/tool-again", "type": "hardlink",
                                                          "target": "bin/tool"}
    assert entry(delta, "platform", "bin/t")["target"] == "tool"
    assert entry(delta, "platform", "etc/empty")["size"] == 0
    assert entry(delta, "platform", "etc/issue")["base"] == "etc/motd"
    assert component(delta, "platform")["removed"] == ["etc/motd"]
    changes = entry(delta, "platform", "share/changes.gz")
    assert changes["gzip"]["level"] == 9 and changes["chunks"][0]["prefix"]["gunzip"] is True
    assert {o["encoding"] for o in delta["objects"]} >= {"zstd-patch"}
    assert delta["codecs"] == ["gzip-recipe", "raw", "zstd-patch"]  # the new game is stored raw
    lucky = component(delta, "game/lucky")
    assert lucky["policy"] == "content" and "base" in lucky
    assert all(e.get("uid", 0) == 0 for e in lucky["entries"])
    assert "base" not in component(delta, "game/extra")


def test_full_bundles_carry_no_base_data_and_no_gzip_recipe(manifests):
    full = manifests["full"]
    entries = [e for c in full["components"] for e in c["entries"]]
    assert not any("base" in e or "gzip" in e for e in entries)
    assert not any("prefix" in chunk for e in entries for chunk in e.get("chunks", ()))
    assert {o["encoding"] for o in full["objects"]} <= {"block", "raw", "zstd"}
    assert full["codecs"] == sorted({o["encoding"] for o in full["objects"]})


# --- hand-broken manifests: the schema refuses them, and so does the parser ----------------------


def _set(path: str, key: str, value, name: str = "platform"):
    def mutate(document):
        entry(document, name, path)[key] = value
    return mutate


def _delete(path: str, key: str):
    def mutate(document):
        del entry(document, "platform", path)[key]
    return mutate


def _first_chunk(key: str, value):
    def mutate(document):
        entry(document, "platform", "bin/tool")["chunks"][0][key] = value
    return mutate


def _top(key: str, value=None, delete: bool = False):
    def mutate(document):
        if delete:
            del document[key]
        else:
            document[key] = value
    return mutate


def _drop_base(document):
    del component(document, "platform")["base"]  # a "full" component still copying from a base


def _drop_root(document):
    component(document, "platform")["entries"].pop(0)


def _platform_as_content(document):
    component(document, "platform")["policy"] = "content"


def _bad_volume_name(document):
    document["volumes"][0]["name"] = document["volumes"][0]["sha256"] + ".bin"


def _gzip_recipe(document) -> dict:
    return entry(document, "platform", "share/changes.gz")["gzip"]


def _gzip_on_empty_file(document):
    entry(document, "platform", "etc/empty")["gzip"] = {**_gzip_recipe(document), "size": 0, "sha256": EMPTY_SHA256}


def _gzip_header_in_upper_case(document):
    recipe = _gzip_recipe(document)
    recipe["header"] = recipe["header"].upper()  # at least "1F8B08": the parser used to take any hex
    assert recipe["header"] != recipe["header"].lower()


def _gzip_in_a_full_component(document):
    data = entry(document, "game/extra", "data.bin")  # a new game: full, inside the delta bundle
    assert "base" not in component(document, "game/extra")
    data["gzip"] = {**_gzip_recipe(document), "size": data["size"], "sha256": data["sha256"]}


def _gzip_blocks(**changes):
    """The recipe of share/changes.gz with block ends (and other ``changes``; None deletes a field)."""
    def mutate(document):
        document["codecs"] = sorted(document["codecs"] + ["gzip-blocks"])
        recipe = _gzip_recipe(document)
        recipe.update(block_ends=[recipe["size"] // 2], mem_level=9)
        recipe.update(changes)
        for name in [name for name, value in changes.items() if value is None]:
            del recipe[name]
    return mutate


def _prefix_of_the_root(document):
    entry(document, "platform", "bin/tool")["chunks"][0]["prefix"]["path"] = "."


def _prefix_with_a_base_hash(document):  # format 2's; format 3 leaves it out
    entry(document, "platform", "bin/tool")["chunks"][0]["prefix"]["sha256"] = "ab" * 32


def _downgrade_from_twice(document):
    component(document, "platform")["downgrade_from"] = [1, 1]


BROKEN = {
    "missing format": _top("format", delete=True),
    "format 1": _top("format", 1),
    "format 4": _top("format", 4),
    "missing codecs": _top("codecs", delete=True),
    "codec listed twice": _top("codecs", ["gzip-recipe", "raw", "raw", "zstd", "zstd-patch"]),
    "wrong document type": _top("type", "trust-root"),
    "no hardware": _top("hardware", []),
    "product is not a label": _top("product", "demo cabinet"),
    "missing file sha256": _delete("bin/tool", "sha256"),
    "missing dir mode": _delete("bin", "mode"),
    "sha256 in upper case": _set("bin/tool", "sha256", "AB" * 32),
    "sha256 too short": _set("bin/tool", "sha256", "ab" * 31),
    "unknown entry field": _set("bin/tool", "xattrs", {}),
    "unknown hardlink field": _set("bin/tool-again", "mode", "0755"),
    "mode on a symlink": _set("bin/t", "mode", "0777"),
    "mode of three digits": _set("bin", "mode", "755"),
    "mode not octal": _set("bin", "mode", "0855"),
    "mode as a number": _set("bin", "mode", 493),
    "negative uid": _set("bin", "uid", -1),
    "path with ..": _set("bin/t", "path", "bin/../t"),
    "absolute path": _set("bin/t", "path", "/bin/t"),
    "empty file with data": _set("etc/empty", "sha256", "00" * 32),
    "unknown chunk field": _first_chunk("encoding", "zstd"),
    "chunk of 0 bytes": _first_chunk("size", 0),
    "chunk object not a sha256": _first_chunk("object", "xyz"),
    "setuid bit in a game": _set("data.bin", "mode", "4755", name="game/lucky"),
    "owner in a game": _set("data.bin", "uid", 1000, name="game/lucky"),
    "absolute symlink in a game": _set("current", "target", "/etc/passwd", name="game/lucky"),
    "platform with content policy": _platform_as_content,
    "base copy in a full update": _drop_base,
    "first entry not the root": _drop_root,
    "volume name not <sha256>.vol": _bad_volume_name,
    "gzip recipe on an empty file": _gzip_on_empty_file,
    "gzip header in upper case": _gzip_header_in_upper_case,
    "gzip recipe in a full component": _gzip_in_a_full_component,
    "gzip block ends and a shape": _gzip_blocks(shape="01050000"),  # the shape of one empty fixed block
    "gzip block end at 0": _gzip_blocks(block_ends=[0]),
    "gzip block end a boolean": _gzip_blocks(block_ends=[True]),
    "gzip block ends without mem_level": _gzip_blocks(mem_level=None),
    "gzip mem_level without block ends": _gzip_blocks(block_ends=None),
    "gzip mem_level 7": _gzip_blocks(mem_level=7),
    "base copy of the root": _set("etc/issue", "base", "."),
    "prefix of the root": _prefix_of_the_root,
    "prefix with a base hash": _prefix_with_a_base_hash,
    "downgrade_from repeats a sequence": _downgrade_from_twice,
}


@pytest.mark.parametrize("mutate", BROKEN.values(), ids=BROKEN.keys())
def test_broken_manifests_are_refused_by_schema_and_parser(validator, manifests, mutate):
    document = copy.deepcopy(manifests["delta"])
    mutate(document)
    assert schema_errors(validator, document), "the schema accepted a broken manifest"
    with pytest.raises(MalformedManifest):
        Manifest.from_bytes(json.dumps(document).encode("utf-8"))


# Every object of a manifest, by where it sits in the delta.
PLACES = {
    "top level": lambda d: d,
    "component": lambda d: component(d, "platform"),
    "component base": lambda d: component(d, "platform")["base"],
    "entry": lambda d: entry(d, "platform", "bin/tool"),
    "chunk": lambda d: entry(d, "platform", "bin/tool")["chunks"][0],
    "prefix": lambda d: entry(d, "platform", "bin/tool")["chunks"][0]["prefix"],
    "gzip recipe": _gzip_recipe,
    "object": lambda d: d["objects"][0],
    "volume": lambda d: d["volumes"][0],
}


@pytest.mark.parametrize("place", PLACES.values(), ids=PLACES.keys())
def test_unknown_fields_are_refused_everywhere(validator, manifests, place):
    """FORMAT.md, "Format version": a manifest is exact everywhere, unlike a trust root."""
    document = copy.deepcopy(manifests["delta"])
    place(document)["note"] = "informational"
    assert schema_errors(validator, document), "the schema accepted an unknown field"
    with pytest.raises(MalformedManifest, match=r"unknown field\(s\) \['note'\]"):
        Manifest.from_bytes(json.dumps(document).encode("utf-8"))


# --- hand-broken manifests JSON Schema cannot refuse: the parser alone does ----------------------

GUNZIP_END = manifest_format.MAX_GUNZIP_END


def _gunzip_prefix_ending_at(end: int):
    def mutate(document):
        prefix = entry(document, "platform", "share/changes.gz")["chunks"][0]["prefix"]
        assert prefix["gunzip"] is True
        prefix["offset"] = end - prefix["length"]
    return mutate


def _raw_object_larger_than_its_chunk(document):
    """Split a raw object's chunk in two chunks of that object: sizes still add up, the tree
    digest and the tiling are untouched, but neither chunk is the raw object's size."""
    raw = {o["id"]: o["size"] for o in document["objects"] if o["encoding"] == "raw"}
    for listed in document["components"]:
        for item in listed["entries"]:
            chunks = item.get("chunks", [])
            for index, chunk in enumerate(chunks):
                if chunk["object"] in raw and chunk["size"] >= 2:
                    chunks[index:index + 1] = [{"object": chunk["object"], "size": 1},
                                               {"object": chunk["object"], "size": chunk["size"] - 1}]
                    return
    raise AssertionError("the delta has no raw object to break")


def _codecs(names: list[str]):
    def mutate(document):
        document["codecs"] = names
    return mutate


PARSER_ONLY = {
    "codecs list without a codec the bundle uses": (_codecs(["raw", "zstd-patch"]),
                                                    "the bundle uses codec 'gzip-recipe', which its codecs list "
                                                    "does not name"),
    "codecs unsorted": (_codecs(["zstd-patch", "zstd", "raw", "gzip-recipe"]), "codecs must be sorted and unique"),
    "gunzip prefix ending beyond 128 MiB": (_gunzip_prefix_ending_at(GUNZIP_END + 1),
                                            "a gunzip prefix must end within 134217728 bytes"),
    "raw object larger than its chunk": (_raw_object_larger_than_its_chunk,
                                         "a raw object must be exactly its chunk's size"),
    "gzip block ends out of order": (_gzip_blocks(block_ends=[40, 30]), "block ends must increase"),
    "gzip block end repeated": (_gzip_blocks(block_ends=[30, 30]), "block ends must increase"),
    "gzip block end at the content's end": (lambda d: _gzip_blocks(block_ends=[_gzip_recipe(d)["size"]])(d),
                                            "block ends must increase and lie inside the content"),
    "gzip block ends without their codec": (lambda d: (_gzip_blocks()(d), d["codecs"].remove("gzip-blocks")),
                                            "the bundle uses codec 'gzip-blocks', which its codecs list does not "
                                            "name"),
}


@pytest.mark.parametrize("mutate, message", PARSER_ONLY.values(), ids=PARSER_ONLY.keys())
def test_rules_beyond_the_schema_are_refused_by_the_parser(validator, manifests, mutate, message):
    """FORMAT.md, "What the schema cannot say": the schema passes these, the parser must not."""
    document = copy.deepcopy(manifests["delta"])
    mutate(document)
    assert schema_errors(validator, document) == []
    with pytest.raises(MalformedManifest, match=re.escape(message)):
        Manifest.from_bytes(json.dumps(document).encode("utf-8"))


def test_a_gzip_recipe_may_have_block_ends(validator, manifests):
    document = copy.deepcopy(manifests["delta"])
    _gzip_blocks(block_ends=[1, 2, 30])(document)
    assert schema_errors(validator, document) == []
    recipe = next(e.gzip for c in Manifest.from_bytes(json.dumps(document).encode("utf-8")).components
                  for e in c.entries if e.path == "share/changes.gz")
    assert (recipe.block_ends, recipe.mem_level) == ((1, 2, 30), 9)


def test_a_gunzip_prefix_may_end_at_128_mib(manifests):
    document = copy.deepcopy(manifests["delta"])
    _gunzip_prefix_ending_at(GUNZIP_END)(document)
    Manifest.from_bytes(json.dumps(document).encode("utf-8"))


def test_format_md_example_is_a_canonical_valid_manifest(validator):
    text = (DOCS / "FORMAT.md").read_text(encoding="utf-8")
    example = re.search(r"### Example\n.*?```json\n(.*?)```", text, re.S).group(1).encode("utf-8")
    document = json.loads(example)
    assert schema_errors(validator, document) == []
    assert Manifest.from_bytes(example).to_bytes() == example  # exactly what a writer emits


# --- the tree digest's golden vector ---------------------------------------------------------------

# docs/FORMAT.md, "Tree digest". The lines were written by hand from the spec (mode as an integer:
# 0o755 = 493, 0o4755 = 2541, 0o700 = 448, 0o640 = 416; null where a type has no field; `"` escaped,
# non-ASCII as UTF-8) and the digest computed outside Python, from a file holding these lines:
#     sha256sum lines.txt
# Regenerate only when the format changes - which must also raise manifest.FORMAT.
GOLDEN_ENTRIES = (
    Entry(path=".", type=DIR, mode=0o755, uid=0, gid=0, mtime=1790000000),
    Entry(path="bin", type=DIR, mode=0o755, uid=0, gid=0, mtime=1790000000),
    Entry(path="bin-old", type=SYMLINK, uid=0, gid=0, mtime=1790000000, target="bin"),
    Entry(path="bin/t", type=SYMLINK, uid=0, gid=0, mtime=1790000000, target="tool"),
    Entry(path="bin/tool", type=FILE, mode=0o4755, uid=0, gid=0, mtime=1790000000, size=6,
          sha256=hashlib.sha256(b"hello\n").hexdigest()),
    Entry(path="bin/tool2", type=HARDLINK, target="bin/tool"),
    Entry(path="etc", type=DIR, mode=0o700, uid=0, gid=0, mtime=1790000000),
    Entry(path='etc/caf\u00e9 "du coin"', type=FILE, mode=0o640, uid=1000, gid=1000, mtime=0, size=0,
          sha256=EMPTY_SHA256),
)
GOLDEN_LINES = (
    '[".","dir",493,0,0,null,null,null]',
    '["bin","dir",493,0,0,null,null,null]',
    '["bin-old","symlink",null,0,0,null,null,"bin"]',
    '["bin/t","symlink",null,0,0,null,null,"tool"]',
    '["bin/tool","file",2541,0,0,6,"5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03",null]',
    '["bin/tool2","hardlink",null,null,null,null,null,"bin/tool"]',
    '["etc","dir",448,0,0,null,null,null]',
    '["etc/caf\u00e9 \\"du coin\\"","file",416,1000,1000,0,'
    '"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",null]',
)
GOLDEN_DIGEST = "sha256:cb884580c36e09a1582a17825feba60f6fd22a3cc53202629a187102eb9b39b2"


def test_tree_digest_golden_vector():
    # A new golden vector belongs to a new format version; formats 2 (the codecs list) and 3 (no base
    # hash in a prefix) kept this one.
    assert manifest_format.FORMAT == 3
    assert [e.digest_line().decode("utf-8") for e in GOLDEN_ENTRIES] == list(GOLDEN_LINES)
    assert tree_digest(reversed(GOLDEN_ENTRIES)) == GOLDEN_DIGEST  # listing order, whatever the input order


def test_tree_digest_ignores_mtime_and_how_files_are_carried():
    chunk = Chunk(object="0" * 64, size=6)
    carried = [replace(e, mtime=12345) if e.type != HARDLINK else e for e in GOLDEN_ENTRIES]
    carried[4] = replace(carried[4], chunks=(chunk,), gzip=GzipRecipe(header=b"\x1f\x8b\x08" + bytes(7),
                                                                      level=9, size=6, sha256="0" * 64))
    assert tree_digest(carried) == GOLDEN_DIGEST
    assert tree_digest([replace(e, base_path=e.path) if e.type == FILE else e for e in GOLDEN_ENTRIES]) \
        == GOLDEN_DIGEST
    assert tree_digest([*GOLDEN_ENTRIES[:4], replace(GOLDEN_ENTRIES[4], mode=0o755), *GOLDEN_ENTRIES[5:]]) \
        != GOLDEN_DIGEST
