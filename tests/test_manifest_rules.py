"""The manifest parser's rules: a signed manifest still cannot escape, collide or lie (table-driven).

Each case starts from a valid manifest document and breaks one rule; the parser must refuse it
with MalformedManifest naming the rule. Signatures are checked before parsing, so these cases
model an insider or a compromised build machine with valid signing keys.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from agent.format.manifest import Base, Component, MalformedManifest, Manifest, StoredObject, Volume
from agent.format.tree import Chunk, Entry, tree_digest

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
                                                     prefix={"path": "x", "sha256": "0" * 64, "offset": 0,
                                                             "length": 1})), "full update"),
    "base copy in a full update": (False, lambda d: (entry(d, "bin/tool").pop("chunks"),
                                                     entry(d, "bin/tool").update(base="bin/tool")), "full update"),
    "objects overlap": (False, lambda d: d["objects"][0].update(offset=1), "expected 0"),
    "payload larger than objects": (False, lambda d: d["volumes"][0].update(size=999), "objects cover"),
    "volume not named by its hash": (False, lambda d: d["volumes"][0].update(name="a" * 64 + ".vol"),
                                     "must be '<its sha256>.vol'"),
    "huge chunk (decompression bomb)": (False, lambda d: entry(d, "bin/tool")["chunks"][0].update(size=1 << 40),
                                        "chunk size must be"),
    "trust root as manifest": (False, lambda d: d.update(type="trust-root"), "document type"),
    "future format": (False, lambda d: d.update(format=2), "format version 2"),
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
