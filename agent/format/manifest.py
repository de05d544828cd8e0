"""The bundle manifest (``manifest.json``): the one definition of its layout and rules.

Both the bundler (which writes it) and the agent (which trusts nothing it has not checked)
use this module; docs/FORMAT.md and docs/manifest.schema.json describe the same layout. The
parser is strict and bounded and checks every cross-reference, so that a manifest that parses
is internally consistent: every file's data is accounted for, every object lies inside the
payload, every path obeys the path rules and its component's content policy, and each
component's tree digest matches its listing. Signatures are checked over the exact bytes
*before* this parser runs (agent/verify.py). The list of codecs the bundle needs is read right
after the type and format version, so a bundle needing a codec this agent lacks is refused by
name (codec.UnsupportedCodec) before anything else is read, and checked against what the objects
and entries use once they are built, so the list cannot lie.

Memory is bounded by the limits below (T-EXHAUST): the large arrays are read from the text one
element at a time (strict_json.LazyArray) straight into slotted dataclasses, so no tree of
dicts for a whole listing ever exists, and the bytes, then the text, are dropped once read.
"""

from __future__ import annotations

import itertools
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from agent.format import codec, deflate, elf_tables, gzip_recipe, paths
from agent.format.tree import (DIR, EMPTY_SHA256, FILE, HARDLINK, SETUID_SETGID, SYMLINK, TYPES, Chunk, Entry,
                               GzipRecipe, Prefix, path_order, tree_digest)
from keys import strict_json
from keys.errors import Refused
from keys.strict_json import JSONShapeError, LazyArray, field

DOCUMENT_TYPE = "bundle-manifest"
# 2: the top-level list of codecs the bundle needs; 3: a prefix without its base file's SHA-256
# (docs/FORMAT.md, "Format version"). Format 2 is still read: sticks already in the field.
FORMAT = 3
READS = (2, 3)
# T-EXHAUST: the agent must stay under 256 MiB of RSS with any manifest these limits allow
# (docs/FORMAT.md, "Limits"; tests/test_manifest_memory.py). Parsed, a manifest costs up to
# ~3.5 bytes per byte of JSON, and an entry up to ~400 bytes however short; staging scans each
# staged entry for ~700 more (agent/scan.py). The largest one, staged, peaks at ~180 MiB. A real
# tree needs ~250 bytes of JSON per entry: 100,000 entries fit, 8 times a platform's 11,846.
MAX_MANIFEST_BYTES = 32 << 20  # decompressed; also its text's size in memory (strict_json.decode)
MAX_STORED_MANIFEST_BYTES = 16 << 20  # held for the whole install: what its signatures cover
MANIFEST_LEVEL = 19
# (searchLog, chainLog) of the manifest's frame in place of level 19's (7, 24): a listing's
# repeats (JSON keys, path prefixes) are among the first candidates. On a 5 MB platform listing,
# 1.6 s and 49 MiB instead of 3.0 s and 81 MiB, for 0.55% more bytes (bundle make's serial tail).
MANIFEST_SEARCH = (3, 23)
MAX_ENTRIES = 100_000  # in all components together; objects and removed paths likewise
MAX_CHUNKS = 65_536  # of one file (512 GiB in the bundler's 8 MiB chunks): an entry is read whole
# What one chunk may hold the device to, at most (T-EXHAUST): its base region, its stored
# object and its decoded bytes, 64 + 17 + 16 MiB, on top of the largest manifest's ~105 MiB while
# files are written (tests/test_manifest_memory.py). The bundler's own are 48 + 8.5 + 8 MiB.
MAX_CHUNK_BYTES = 16 << 20
MAX_STORED_OBJECT_BYTES = MAX_CHUNK_BYTES + (MAX_CHUNK_BYTES >> 4)  # a zstd frame may exceed its content
MAX_PREFIX_BYTES = 64 << 20
MAX_GUNZIP_END = 128 << 20  # how far the device gunzips a base file for a region (T-BOMB, T-WORK)
MAX_GZIP_CONTENT_BYTES = 64 << 20  # re-deflated as it is decoded: bounds the CPU, not memory
MAX_VOLUME_BYTES = (4 << 30) - 1  # FAT32's file size limit
MAX_VOLUMES = 10_000
MAX_IDS = 256  # hardware models, target serials, downgrade sequences
ENCODINGS = tuple(codec.DECODERS)  # what an object's ``encoding`` may name
MAX_CODECS = 64
POLICIES = ("system", "content")
COMPONENT_NAME = re.compile(r"platform|game/[a-z0-9][a-z0-9._-]{0,63}")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+:~@-]{0,127}")
CODEC_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TREE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_VOLUME_NAME = re.compile(r"[0-9a-f]{64}\.vol")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
# The arrays that can be large, read one element at a time (strict_json.LazyArray); the others
# are at most MAX_IDS long, or refused by strict_json.MAX_VALUES while being read.
_LAZY = frozenset({("components", "*", "entries"), ("components", "*", "entries", "*", "chunks"),
                   ("components", "*", "removed"), ("objects",), ("volumes",)})
# One int object per mode and one str per type, shared by every entry instead of one per entry.
_MODES = {f"{mode:04o}": mode for mode in range(0o10000)}
_KINDS = {kind: kind for kind in TYPES}
_ENCODINGS = {encoding: encoding for encoding in ENCODINGS}


class MalformedManifest(Refused):
    """The manifest is not valid: its layout, a rule, or a cross-reference is broken."""


@dataclass(frozen=True, slots=True)
class Base:
    """The exact installed component a delta applies to."""

    sequence: int
    version: str
    tree_digest: str


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    version: str
    sequence: int
    policy: str
    tree_digest: str
    entries: tuple[Entry, ...]
    base: Base | None = None  # None: a full update
    targets: tuple[str, ...] = ()  # serials allowed to receive it when not installed; () = any
    downgrade_from: tuple[int, ...] = ()  # exact installed sequences this may replace downwards
    removed: tuple[str, ...] = ()  # base paths the new tree no longer has (deltas; informational)

    @property
    def is_delta(self) -> bool:
        return self.base is not None


@dataclass(frozen=True, slots=True)
class StoredObject:
    """Bytes at ``offset`` in the payload (all volumes end to end), or in the content of the block
    ``block`` (the id of an object of encoding ``block``) for a member of one; ``id`` is their
    SHA-256."""

    id: str
    offset: int
    size: int
    encoding: str
    block: str | None = None


@dataclass(frozen=True, slots=True)
class Volume:
    name: str  # "<sha256>.vol": content-addressed
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class Manifest:
    product: str
    hardware: tuple[str, ...]
    components: tuple[Component, ...]
    objects: tuple[StoredObject, ...]
    volumes: tuple[Volume, ...]
    format: int = FORMAT  # 2 only for devices whose agent reads nothing newer: prefixes then carry sha256

    @property
    def payload_size(self) -> int:
        return sum(v.size for v in self.volumes)

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def object_index(self) -> dict[str, StoredObject]:
        return {o.id: o for o in self.objects}

    def stored_costs(self) -> dict[str, int]:
        """Payload bytes per object id: its size, or for a member of a block its share of the
        block's stored size (by its part of the block's content); 0 for a block itself."""
        content = block_sizes(self.objects)
        stored = {o.id: o.size for o in self.objects if o.id in content}
        return {o.id: 0 if o.id in content else
                o.size if o.block is None else o.size * stored[o.block] // content[o.block]
                for o in self.objects}

    @property
    def codecs(self) -> tuple[str, ...]:
        """The codecs its objects and entries use, sorted: the manifest's ``codecs`` list.

        Derived, never stored apart, so that a model cannot disagree with its own list; the parser
        checks that a document's list is exactly this.
        """
        return codec.used_by((o.encoding for o in self.objects),
                             (e for c in self.components for e in c.entries))

    # --- serialisation ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        return strict_json.dumps({
            "type": DOCUMENT_TYPE,
            "format": self.format,
            "codecs": list(self.codecs),
            "product": self.product,
            "hardware": list(self.hardware),
            "components": [_component_to_json(c) for c in self.components],
            "objects": [_object_to_json(o) for o in self.objects],
            "volumes": [{"name": v.name, "size": v.size, "sha256": v.sha256} for v in self.volumes],
        })

    def to_stored(self) -> bytes:
        """The file that is signed and shipped (:func:`store`)."""
        return store(self.to_bytes())

    @classmethod
    def from_stored(cls, stored: bytes, *, where=None) -> "Manifest":
        """Decompress (bounded: T-BOMB) and parse a stored manifest. Raises MalformedManifest,
        codec.UnsupportedCodec."""
        return _parse(lambda: stored_json(stored, where=where), where)

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "Manifest":
        """Parse and validate. Raises MalformedManifest naming the broken rule, codec.UnsupportedCodec."""
        return _parse(lambda: data, where)


def block_sizes(objects: Iterable[StoredObject]) -> dict[str, int]:
    """Content size of each block, by its id: its members' sizes added up."""
    sizes: dict[str, int] = {o.id: 0 for o in objects if o.encoding == codec.BLOCK.name}
    for stored in objects:
        if stored.block is not None and stored.block in sizes:
            sizes[stored.block] += stored.size
    return sizes


def _object_to_json(stored: StoredObject) -> dict[str, Any]:
    value = {"id": stored.id, "offset": stored.offset, "size": stored.size, "encoding": stored.encoding}
    if stored.block is not None:
        value["block"] = stored.block
    return value


def signature_comment(product: str) -> str:
    """The trusted comment of a release signer's signature over a manifest (docs/FORMAT.md):
    informational, for ``minisign -V``; the product a device checks is inside the signed bytes."""
    return f"{DOCUMENT_TYPE} product:{product}"


def store(manifest_json: bytes) -> bytes:
    """The file that is signed and shipped: the canonical JSON in one zstd frame.

    Compressed because a full listing (a SHA-256 for every file) of a real platform tree is
    ~3 MB of JSON but ~0.5 MB compressed - more than the delta itself otherwise.
    """
    return codec.compress(manifest_json, MANIFEST_LEVEL, search=MANIFEST_SEARCH)


def stored_json(stored: bytes, *, where=None) -> bytes:
    """The JSON of a stored manifest, bounded before a byte is decoded (T-BOMB). Raises
    MalformedManifest."""
    if len(stored) > MAX_STORED_MANIFEST_BYTES:
        raise MalformedManifest(f"stored manifest is larger than {MAX_STORED_MANIFEST_BYTES} bytes", where=where)
    try:
        size = codec.declared_size(stored)
        if size >= codec.CONTENTSIZE_UNKNOWN:
            raise MalformedManifest("stored manifest does not declare its content size", where=where)
        if not 0 < size <= MAX_MANIFEST_BYTES:
            raise MalformedManifest(f"manifest would decompress to {size} bytes (limit {MAX_MANIFEST_BYTES})",
                                    where=where)
        return codec.decompress(stored, size)
    except codec.CorruptObject as error:
        raise MalformedManifest(f"stored manifest is not a valid zstd frame: {error.message}", where=where) from None


def _parse(read: Callable[[], bytes], where) -> Manifest:
    """Parse the JSON bytes ``read`` returns. Raises MalformedManifest naming the broken rule,
    codec.UnsupportedCodec naming the codecs this agent lacks.

    Nothing here keeps the bytes or the document (T-EXHAUST): the bytes go once their text has
    been checked, the text once the dataclasses are built, before the cross-checks build indexes.
    """
    try:
        manifest, codecs = _from_document(strict_json.loads(read(), limit=MAX_MANIFEST_BYTES, lazy=_LAZY))
        _check_manifest(manifest, codecs)
        return manifest
    except (JSONShapeError, paths.PathError) as error:
        raise MalformedManifest(f"invalid manifest: {error}", where=where) from None
    except codec.UnsupportedCodec as error:
        raise codec.UnsupportedCodec(error.message, where=where, hint=error.hint) from None


def _from_document(document: dict[str, Any]) -> tuple[Manifest, tuple[str, ...]]:
    """The manifest and the codecs it lists. Raises JSONShapeError, PathError, UnsupportedCodec."""
    doc_type = field(document, "type", str, context="manifest")
    if doc_type != DOCUMENT_TYPE:  # T-TYPE: a trust root is never read as a manifest
        raise JSONShapeError(f"document type is {doc_type!r}, not {DOCUMENT_TYPE!r}")
    major = field(document, "format", int, context="manifest")
    if major not in READS:
        raise JSONShapeError(f"format version {major} is not supported (this tool reads "
                             f"{' and '.join(map(str, READS))})")
    # Before any other field: a newer bundle may carry fields only its new codec defines, and
    # "this bundle needs codec X" is the answer that tells the technician what to do.
    codecs = _codec_list(field(document, "codecs", list, context="manifest"))
    _no_other_fields(document, {"type", "format", "codecs", "product", "hardware", "components", "objects",
                                "volumes"}, "manifest")
    product = _label(field(document, "product", str, context="manifest"), "product")
    hardware = _labels(field(document, "hardware", list, context="manifest"), "hardware")
    components = _bounded(field(document, "components", list, context="manifest"), 64, "components")
    for name in ("entries", "removed"):  # T-EXHAUST: counted in all components before any is built
        total = sum(len(c[name]) for c in components
                    if isinstance(c, dict) and isinstance(c.get(name), (list, LazyArray)))
        if total > MAX_ENTRIES:
            raise JSONShapeError(f"more than {MAX_ENTRIES} {name}")
    objects = tuple(_object_from_json(o) for o in
                    _bounded(field(document, "objects", list, context="manifest"), MAX_ENTRIES, "objects"))
    # Read before the listings so that a chunk names its object with the object's own id string:
    # one string per object instead of one more per chunk (~110 bytes each).
    ids = {o.id: o.id for o in objects}
    manifest = Manifest(
        product=product, hardware=hardware, objects=objects,
        components=tuple(_component_from_json(c, ids) for c in components),
        volumes=tuple(_volume_from_json(v) for v in
                      _bounded(field(document, "volumes", list, context="manifest"), MAX_VOLUMES, "volumes")),
        format=major,
    )
    _check_prefix_hashes(manifest, major)
    return manifest, codecs


def _check_prefix_hashes(manifest: Manifest, major: int) -> None:
    """A format-2 prefix names its base file's SHA-256; a format-3 one does not."""
    for component in manifest.components:
        for entry in component.entries:
            for chunk in entry.chunks:
                if chunk.prefix is not None and (chunk.prefix.sha256 is None) != (major == 3):
                    rule = "carries no sha256 in format 3" if major == 3 else "needs a sha256 in format 2"
                    raise JSONShapeError(f"component {component.name}: {entry.path!r}: a prefix {rule}")


def _codec_list(values: list) -> tuple[str, ...]:
    """The ``codecs`` list: names, sorted and unique. Raises JSONShapeError, UnsupportedCodec."""
    _bounded(values, MAX_CODECS, "codecs")
    if not all(isinstance(v, str) and CODEC_NAME.fullmatch(v) for v in values):
        raise JSONShapeError("codecs must be names of 1-64 characters a-z 0-9 -")
    if values != sorted(set(values)):
        raise JSONShapeError("codecs must be sorted and unique")
    codec.require(values)
    return tuple(values)


# --- JSON <-> dataclasses ---------------------------------------------------------------------


def _bounded(values: list, limit: int, what: str) -> list:
    if len(values) > limit:
        raise JSONShapeError(f"more than {limit} {what}")
    return values


def _label(value: str, what: str) -> str:
    if not LABEL.fullmatch(value):
        raise JSONShapeError(f"{what} {value[:80]!r} must be 1-128 letters, digits or ._+:~@-")
    return value


def _labels(values: list, what: str) -> tuple[str, ...]:
    _bounded(values, MAX_IDS, what)
    result = tuple(_label(v, what) if isinstance(v, str) else _label("", what) for v in values)
    if len(set(result)) != len(result):
        raise JSONShapeError(f"{what} lists a value twice")
    return result


def _count(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 1 << 63:
        raise JSONShapeError(f"{what} must be a non-negative integer")
    return value


MAX_OWNER = 4294967294  # (uid_t)-1 means "leave unchanged" to chown(2)


def _owner(value: int, what: str) -> int:
    if not 0 <= value <= MAX_OWNER:
        raise JSONShapeError(f"{what} must be 0..{MAX_OWNER}")
    return value


def _sha256(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise JSONShapeError(f"{what} must be 64 lower-case hex digits")
    return value


def _mode_to_json(mode: int) -> str:
    return f"{mode:04o}"


def _component_to_json(component: Component) -> dict[str, Any]:
    result: dict[str, Any] = {
        "name": component.name, "version": component.version, "sequence": component.sequence,
        "policy": component.policy, "tree_digest": component.tree_digest,
        "entries": [_entry_to_json(e) for e in component.entries],
    }
    if component.base is not None:
        result["base"] = {"sequence": component.base.sequence, "version": component.base.version,
                          "tree_digest": component.base.tree_digest}
    if component.targets:
        result["targets"] = list(component.targets)
    if component.downgrade_from:
        result["downgrade_from"] = list(component.downgrade_from)
    if component.removed:
        result["removed"] = list(component.removed)
    return result


def _entry_to_json(entry: Entry) -> dict[str, Any]:
    result: dict[str, Any] = {"path": entry.path, "type": entry.type}
    if entry.type == HARDLINK:
        result["target"] = entry.target
        return result
    if entry.type != SYMLINK:
        result["mode"] = _mode_to_json(entry.mode)
    result.update(uid=entry.uid, gid=entry.gid, mtime=entry.mtime)
    if entry.type == SYMLINK:
        result["target"] = entry.target
    elif entry.type == FILE:
        result.update(size=entry.size, sha256=entry.sha256)
        if entry.base_path is not None:
            result["base"] = entry.base_path
        elif entry.chunks:
            result["chunks"] = [_chunk_to_json(c) for c in entry.chunks]
        if entry.elf_tables:
            result["elf_tables"] = True
        if entry.gzip is not None:
            result["gzip"] = {"header": entry.gzip.header.hex(), "level": entry.gzip.level,
                              "size": entry.gzip.size, "sha256": entry.gzip.sha256}
            if entry.gzip.shape is not None:
                result["gzip"]["shape"] = entry.gzip.shape.hex()
            if entry.gzip.block_ends is not None:
                result["gzip"].update(block_ends=list(entry.gzip.block_ends), mem_level=entry.gzip.mem_level)
    return result


def _chunk_to_json(chunk: Chunk) -> dict[str, Any]:
    result: dict[str, Any] = {"object": chunk.object, "size": chunk.size}
    if chunk.prefix is not None:
        p = chunk.prefix
        result["prefix"] = {"path": p.path, "offset": p.offset, "length": p.length}
        if p.sha256 is not None:  # format 2 only (_check_prefix_hashes)
            result["prefix"]["sha256"] = p.sha256
        if p.gunzip:
            result["prefix"]["gunzip"] = True
        if p.elf_tables:
            result["prefix"]["elf_tables"] = True
    return result


def _component_from_json(value: Any, ids: dict[str, str]) -> Component:
    if not isinstance(value, dict):
        raise JSONShapeError("each component must be an object")
    name = field(value, "name", str, context="component")
    if not COMPONENT_NAME.fullmatch(name):
        raise JSONShapeError(f"component name {name[:80]!r} must be 'platform' or 'game/<id>'")
    context = f"component {name}"
    _no_other_fields(value, {"name", "version", "sequence", "policy", "tree_digest", "entries", "base", "targets",
                             "downgrade_from", "removed"}, context)
    policy = field(value, "policy", str, context=context)
    if policy not in POLICIES:
        raise JSONShapeError(f"{context}: policy must be one of {POLICIES}")
    digest = field(value, "tree_digest", str, context=context)
    if not _TREE_DIGEST.fullmatch(digest):
        raise JSONShapeError(f"{context}: tree_digest must be 'sha256:' and 64 hex digits")
    base = None
    if "base" in value:
        raw_base = field(value, "base", dict, context=context)
        _no_other_fields(raw_base, {"sequence", "version", "tree_digest"}, f"{context} base")
        base_digest = field(raw_base, "tree_digest", str, context=f"{context} base")
        if not _TREE_DIGEST.fullmatch(base_digest):
            raise JSONShapeError(f"{context}: base tree_digest must be 'sha256:' and 64 hex digits")
        base = Base(sequence=_count(field(raw_base, "sequence", int, context=f"{context} base"), "sequence"),
                    version=_label(field(raw_base, "version", str, context=f"{context} base"), "version"),
                    tree_digest=base_digest)
    entries = _bounded(field(value, "entries", list, context=context), MAX_ENTRIES, "entries")
    downgrade_from = value.get("downgrade_from", [])
    if isinstance(downgrade_from, list) and len(set(map(repr, downgrade_from))) != len(downgrade_from):
        raise JSONShapeError(f"{context}: downgrade_from lists a sequence twice")
    return Component(
        name=name, policy=policy, tree_digest=digest, base=base,
        version=_label(field(value, "version", str, context=context), "version"),
        sequence=_count(field(value, "sequence", int, context=context), f"{context}: sequence"),
        entries=tuple(_entry_from_json(e, context, ids) for e in entries),
        targets=_labels(field(value, "targets", list, context=context) if "targets" in value else [],
                        f"{context} targets"),
        downgrade_from=tuple(_count(s, f"{context}: downgrade_from") for s in _bounded(
            field(value, "downgrade_from", list, context=context) if "downgrade_from" in value else [],
            MAX_IDS, "downgrade_from")),
        removed=tuple(_removed_path(p) for p in _bounded(
            field(value, "removed", list, context=context) if "removed" in value else [], MAX_ENTRIES, "removed")),
    )


def _removed_path(value: Any) -> str:
    if not isinstance(value, str):
        raise JSONShapeError("removed paths must be strings")
    paths.check_path(value)
    return value


def _entry_from_json(value: Any, context: str, ids: dict[str, str]) -> Entry:
    if not isinstance(value, dict):
        raise JSONShapeError(f"{context}: each entry must be an object")
    path = field(value, "path", str, context=f"{context} entry")
    paths.check_path(path)
    context = f"{context} entry {path[:200]!r}"
    kind = _KINDS.get(field(value, "type", str, context=context))
    if kind is None:
        raise JSONShapeError(f"{context}: type must be one of {TYPES}")
    allowed = {"path", "type"}
    if kind == HARDLINK:
        target = field(value, "target", str, context=context)
        paths.check_path(target)
        allowed.add("target")
        _no_other_fields(value, allowed, context)
        return Entry(path=path, type=kind, target=target)
    mode = None
    if kind != SYMLINK:
        mode = _MODES.get(field(value, "mode", str, context=context))
        if mode is None:
            raise JSONShapeError(f"{context}: mode must be an octal string like '0755'")
        allowed.add("mode")
    common = dict(path=path, type=kind, mode=mode,
                  uid=_owner(field(value, "uid", int, context=context), f"{context}: uid"),
                  gid=_owner(field(value, "gid", int, context=context), f"{context}: gid"),
                  mtime=field(value, "mtime", int, context=context))
    if abs(common["mtime"]) >= 1 << 62:
        raise JSONShapeError(f"{context}: mtime is out of range")
    allowed |= {"uid", "gid", "mtime"}
    if kind == DIR:
        _no_other_fields(value, allowed, context)
        return Entry(**common)
    if kind == SYMLINK:
        target = field(value, "target", str, context=context)
        paths.check_link_target(path, target, must_stay_inside=False)
        _no_other_fields(value, allowed | {"target"}, context)
        return Entry(**common, target=target)
    size = _count(field(value, "size", int, context=context), f"{context}: size")
    digest = _sha256(field(value, "sha256", str, context=context), f"{context}: sha256")
    allowed |= {"size", "sha256", "base", "chunks", "gzip", "elf_tables"}
    _no_other_fields(value, allowed, context)
    elf = _flag(value, "elf_tables", context)
    if "base" in value and "chunks" in value:
        raise JSONShapeError(f"{context}: a file comes from its base or from chunks, not both")
    gzip = None
    if "gzip" in value:
        gzip = _gzip_from_json(field(value, "gzip", dict, context=context), context)
    base_path = None
    chunks: tuple[Chunk, ...] = ()
    if "base" in value:
        base_path = field(value, "base", str, context=context)
        paths.check_path(base_path)
        if base_path == paths.ROOT:
            raise JSONShapeError(f"{context}: a base copy must name a file")
    elif "chunks" in value:
        raw_chunks = _bounded(field(value, "chunks", list, context=context), MAX_CHUNKS, "chunks")
        chunks = tuple(_chunk_from_json(c, context, ids) for c in raw_chunks)
    return Entry(**common, size=size, sha256=digest, base_path=base_path, chunks=chunks, gzip=gzip,
                 elf_tables=elf)


def _flag(value: dict, name: str, context: str) -> bool:
    """An optional field that is true when present (absent means false)."""
    if name not in value:
        return False
    if value[name] is not True:
        raise JSONShapeError(f"{context}: {name} must be true or absent")
    return True


def _gzip_from_json(value: dict, context: str) -> GzipRecipe:
    _no_other_fields(value, {"header", "level", "size", "sha256", "shape", "block_ends", "mem_level"},
                     f"{context} gzip")
    header = _hex_field(value, "header", gzip_recipe.check_header, context,
                        "gzip header must be the hex of one well-formed gzip header")
    level = field(value, "level", int, context=context)
    if not 1 <= level <= 9:
        raise JSONShapeError(f"{context}: gzip level must be 1..9")
    size = _count(field(value, "size", int, context=context), f"{context}: gzip size")
    if size > MAX_GZIP_CONTENT_BYTES:  # the content is rebuilt in one pass; keep it bounded
        raise JSONShapeError(f"{context}: gzip content larger than {MAX_GZIP_CONTENT_BYTES} bytes")
    shape = None
    if "shape" in value:
        shape = _hex_field(value, "shape", deflate.shape_from_bytes, context,
                           "gzip shape must be the hex of a deflate block shape")
        if size > gzip_recipe.MAX_SHAPED_CONTENT:  # gathered in memory and re-coded in Python
            raise JSONShapeError(f"{context}: gzip content with a shape larger than "
                                 f"{gzip_recipe.MAX_SHAPED_CONTENT} bytes")
    block_ends, mem_level = None, gzip_recipe.DEFAULT_MEM_LEVEL
    if "mem_level" in value and "block_ends" not in value:
        raise JSONShapeError(f"{context}: a gzip mem_level comes only with block_ends")
    if "block_ends" in value:
        if shape is not None:
            raise JSONShapeError(f"{context}: a gzip recipe has block ends or a shape, not both")
        ends = field(value, "block_ends", list, context=context)
        _bounded(ends, gzip_recipe.MAX_BLOCK_ENDS, f"gzip block ends ({context})")
        block_ends = tuple(_count(end, f"{context}: a gzip block end") for end in ends)
        try:
            gzip_recipe.check_block_ends(block_ends, size)
        except ValueError as error:
            raise JSONShapeError(f"{context}: gzip block_ends: {error}") from None
        mem_level = field(value, "mem_level", int, context=context)
        if mem_level not in gzip_recipe.BLOCKS_MEM_LEVELS:
            raise JSONShapeError(f"{context}: gzip mem_level must be one of "
                                 f"{', '.join(map(str, gzip_recipe.BLOCKS_MEM_LEVELS))}")
    return GzipRecipe(header=header, level=level, size=size,
                      sha256=_sha256(field(value, "sha256", str, context=context), f"{context}: gzip sha256"),
                      shape=shape, block_ends=block_ends, mem_level=mem_level)


def _hex_field(value: dict, name: str, check: Callable[[bytes], object], context: str, complaint: str) -> bytes:
    """The bytes of field ``name``, lower-case hex that ``check`` accepts (it raises ValueError)."""
    raw = field(value, name, str, context=context)
    try:
        if not _HEX.fullmatch(raw):
            raise ValueError("not lower-case hex")
        data = bytes.fromhex(raw)
        check(data)
    except ValueError as error:
        raise JSONShapeError(f"{context}: {complaint} ({error})") from None
    return data


def _no_other_fields(value: dict, allowed: set[str], context: str) -> None:
    # The manifest is exact everywhere: an unknown field could mean data this version would silently drop.
    unknown = set(value) - allowed
    if unknown:
        raise JSONShapeError(f"{context}: unknown field(s) {sorted(unknown)}")


def _chunk_from_json(value: Any, context: str, ids: dict[str, str]) -> Chunk:
    if not isinstance(value, dict):
        raise JSONShapeError(f"{context}: each chunk must be an object")
    _no_other_fields(value, {"object", "size", "prefix"}, f"{context} chunk")
    size = _count(field(value, "size", int, context=context), f"{context}: chunk size")
    if not 0 < size <= MAX_CHUNK_BYTES:
        raise JSONShapeError(f"{context}: chunk size must be 1..{MAX_CHUNK_BYTES}")
    prefix = None
    if "prefix" in value:
        raw = field(value, "prefix", dict, context=context)
        _no_other_fields(raw, {"path", "sha256", "offset", "length", "gunzip", "elf_tables"}, f"{context} prefix")
        gunzip = raw.get("gunzip", False)
        if gunzip is not True and gunzip is not False:
            raise JSONShapeError(f"{context}: prefix gunzip must be true or false")
        elf = _flag(raw, "elf_tables", f"{context} prefix")
        if gunzip and elf:
            raise JSONShapeError(f"{context}: a prefix is of gunzipped content or of re-coded ELF tables, not both")
        prefix_path = field(raw, "path", str, context=context)
        paths.check_path(prefix_path)
        if prefix_path == paths.ROOT:
            raise JSONShapeError(f"{context}: a prefix must name a file")
        sha256 = _sha256(field(raw, "sha256", str, context=context), "prefix sha256") if "sha256" in raw else None
        prefix = Prefix(path=prefix_path, sha256=sha256,
                        offset=_count(field(raw, "offset", int, context=context), "prefix offset"),
                        length=_count(field(raw, "length", int, context=context), "prefix length"),
                        gunzip=gunzip, elf_tables=elf)
        if not 0 < prefix.length <= MAX_PREFIX_BYTES:
            raise JSONShapeError(f"{context}: prefix length must be 1..{MAX_PREFIX_BYTES}")
        if prefix.gunzip and prefix.offset + prefix.length > MAX_GUNZIP_END:
            # The device gunzips the base up to offset + length: keep that bounded (T-BOMB).
            raise JSONShapeError(f"{context}: a gunzip prefix must end within {MAX_GUNZIP_END} bytes")
        if prefix.elf_tables and prefix.offset + prefix.length > elf_tables.MAX_ELF_BYTES:
            # The device re-codes the whole base file, held in memory.
            raise JSONShapeError(f"{context}: an elf_tables prefix must end within {elf_tables.MAX_ELF_BYTES} bytes")
    object_id = _sha256(field(value, "object", str, context=context), f"{context}: object")
    return Chunk(object=ids.get(object_id, object_id), size=size, prefix=prefix)


def _object_from_json(value: Any) -> StoredObject:
    if not isinstance(value, dict):
        raise JSONShapeError("each object must be an object")
    _no_other_fields(value, {"id", "offset", "size", "encoding", "block"}, "object")
    encoding = _ENCODINGS.get(field(value, "encoding", str, context="object"))
    if encoding is None:
        raise JSONShapeError(f"object encoding must be one of {ENCODINGS}")
    size = _count(field(value, "size", int, context="object"), "object size")
    if not 0 < size <= MAX_STORED_OBJECT_BYTES:
        raise JSONShapeError(f"object size must be 1..{MAX_STORED_OBJECT_BYTES}")
    block = value.get("block")
    return StoredObject(id=_sha256(field(value, "id", str, context="object"), "object id"),
                        offset=_count(field(value, "offset", int, context="object"), "object offset"),
                        size=size, encoding=encoding,
                        block=None if block is None else _sha256(field(value, "block", str, context="object"),
                                                                 "object block"))


def _volume_from_json(value: Any) -> Volume:
    if not isinstance(value, dict):
        raise JSONShapeError("each volume must be an object")
    _no_other_fields(value, {"name", "size", "sha256"}, "volume")
    name = field(value, "name", str, context="volume")
    digest = _sha256(field(value, "sha256", str, context="volume"), "volume sha256")
    if not _VOLUME_NAME.fullmatch(name) or name != f"{digest}.vol":
        raise JSONShapeError(f"volume name {name[:80]!r} must be '<its sha256>.vol'")
    size = _count(field(value, "size", int, context="volume"), "volume size")
    if not 0 < size <= MAX_VOLUME_BYTES:
        raise JSONShapeError(f"volume size must be 1..{MAX_VOLUME_BYTES}")
    return Volume(name=name, size=size, sha256=digest)


# --- cross-checks -----------------------------------------------------------------------------


def _check_manifest(manifest: Manifest, codecs: tuple[str, ...]) -> None:
    names = [c.name for c in manifest.components]
    if len(set(names)) != len(names):
        raise JSONShapeError("a component is listed twice")
    if not manifest.components:
        raise JSONShapeError("no components")
    if not manifest.hardware:
        raise JSONShapeError("hardware lists no model")
    objects = manifest.object_index()
    if len(objects) != len(manifest.objects):
        raise JSONShapeError("an object is listed twice")
    position = 0
    filled: dict[str, int] = {}  # content bytes of each block listed so far, by its id
    for stored in manifest.objects:  # T-OVERLAP: objects tile the payload exactly, in order,
        if stored.block is None:      # and the members of a block tile its content, in order
            if stored.offset != position:
                raise JSONShapeError(f"object {stored.id[:16]} is at offset {stored.offset}, expected {position}")
            position += stored.size
            if stored.encoding == codec.BLOCK.name:
                filled[stored.id] = 0
            continue
        if stored.block not in filled:
            raise JSONShapeError(f"object {stored.id[:16]} is in block {stored.block[:16]}, which is not a block "
                                 "listed before it")
        if stored.encoding == codec.BLOCK.name:
            raise JSONShapeError(f"block {stored.id[:16]} is inside another block")
        if stored.offset != filled[stored.block]:
            raise JSONShapeError(f"object {stored.id[:16]} is at offset {stored.offset} of its block, expected "
                                 f"{filled[stored.block]}")
        filled[stored.block] += stored.size
        if filled[stored.block] > codec.MAX_BLOCK_BYTES:
            raise JSONShapeError(f"block {stored.block[:16]} holds more than {codec.MAX_BLOCK_BYTES} bytes")
    if not all(filled.values()):
        raise JSONShapeError("a block has no members")
    if position != manifest.payload_size:
        raise JSONShapeError(f"objects cover {position} bytes but the volumes hold {manifest.payload_size}")
    if len({v.name for v in manifest.volumes}) != len(manifest.volumes):
        raise JSONShapeError("a volume is listed twice")
    total_entries = 0
    for component in manifest.components:
        total_entries += len(component.entries)
        if total_entries > MAX_ENTRIES:
            raise JSONShapeError(f"more than {MAX_ENTRIES} entries")
        check_component(component, objects)
    used = manifest.codecs
    for name in used:  # the list cannot lie: an agent decides on it before reading anything else
        if name not in codecs:
            raise JSONShapeError(f"the bundle uses codec {name!r}, which its codecs list does not name")
    for name in codecs:
        if name not in used:
            raise JSONShapeError(f"codecs lists {name!r}, which nothing in the bundle uses")


def check_component(component: Component, objects: dict[str, StoredObject]) -> None:
    """The rules for one component's listing. Raises JSONShapeError or paths.PathError."""
    context = f"component {component.name}"
    if component.name == "platform" and component.policy != "system":
        raise JSONShapeError("the platform component must have policy 'system'")
    if component.name != "platform" and component.policy != "content":
        raise JSONShapeError(f"{context}: games must have policy 'content'")
    content_only = component.policy == "content"
    entries = component.entries
    if not entries or entries[0].path != paths.ROOT or entries[0].type != DIR:
        raise JSONShapeError(f"{context}: the first entry must be the root directory '.'")
    by_path: dict[str, Entry] = {}
    # Paths whose collision key differs from the path, by key. Most paths are their own key; keeping
    # only the others halves this check's memory for a real tree (T-EXHAUST).
    folded: dict[str, str] = {}
    previous = None
    for entry in entries:
        order = path_order(entry.path)
        if previous is not None and order <= previous:
            raise JSONShapeError(f"{context}: entry {entry.path!r} is out of order or listed twice")
        previous = order
        key = paths.collision_key(entry.path, fold_case=content_only)
        earlier = folded.get(key)
        if earlier is None and key != entry.path and key in by_path \
                and paths.collision_key(key, fold_case=content_only) == key:
            earlier = key  # an earlier path that is its own key
        if earlier is not None:  # T-COLLIDE
            raise JSONShapeError(f"{context}: {entry.path!r} and {earlier!r} name the same file "
                                 "after Unicode normalisation" + (" or case folding" if content_only else ""))
        if key != entry.path:
            folded[key] = entry.path
        if entry.path != paths.ROOT:
            parent = by_path.get(paths.parent(entry.path))
            if parent is None or parent.type != DIR:  # T-SYMLINK-WRITE: never write through a link
                raise JSONShapeError(f"{context}: the parent of {entry.path!r} is not a directory of the listing")
        by_path[entry.path] = entry
        _check_entry(entry, component, objects, by_path, context)
    if content_only:
        symlinks = {e.path: e.target for e in entries if e.type == SYMLINK}
        budget = paths.ResolutionBudget()
        for path, target in symlinks.items():
            try:
                paths.resolve_within(posixpath.join(posixpath.dirname(path), target), symlinks, budget)
            except paths.PathError as error:  # T-LINK-ESCAPE
                raise JSONShapeError(f"{context}: symlink {path!r} -> {target!r}: {error}") from None
    if component.removed:
        if component.base is None:
            raise JSONShapeError(f"{context}: a full update removes nothing")
        if any(path_order(a) >= path_order(b) for a, b in itertools.pairwise(component.removed)):
            raise JSONShapeError(f"{context}: removed paths must be sorted and unique")
        if any(path in by_path for path in component.removed):
            raise JSONShapeError(f"{context}: a removed path is also in the new tree")
    computed = tree_digest(entries)
    if computed != component.tree_digest:
        raise JSONShapeError(f"{context}: tree_digest does not match its entries")


def _check_entry(entry: Entry, component: Component, objects: dict[str, StoredObject],
                 by_path: dict[str, Entry], context: str) -> None:
    content_only = component.policy == "content"
    if entry.type == HARDLINK:
        target = by_path.get(entry.target)
        if target is None or target.type != FILE:  # listed earlier, so links never dangle or chain
            raise JSONShapeError(f"{context}: hard link {entry.path!r} must point to a file listed before it")
        return
    if content_only:  # T-POLICY: games are content only
        if entry.mode is not None and entry.mode & SETUID_SETGID:
            raise JSONShapeError(f"{context}: {entry.path!r} has a setuid/setgid bit")
        # Another local process could replace a game's files, or swap one of its folders for a link
        # while a clone is staged: nothing of a game is writable by others, but a sticky folder.
        if entry.type == FILE and entry.mode & 0o002:
            raise JSONShapeError(f"{context}: {entry.path!r} is writable by every user (mode {entry.mode:04o})")
        if entry.type == DIR and entry.mode & 0o002 and not entry.mode & 0o1000:
            raise JSONShapeError(f"{context}: {entry.path!r} is a folder writable by every user without the sticky "
                                 f"bit (mode {entry.mode:04o})")
        if entry.uid != 0 or entry.gid != 0:
            raise JSONShapeError(f"{context}: {entry.path!r} has owner {entry.uid}:{entry.gid}; content is "
                                 "owned by 0:0")
        if entry.type == SYMLINK:
            paths.check_link_target(entry.path, entry.target, must_stay_inside=True)
    if entry.type != FILE:
        return
    if entry.base_path is not None and component.base is None:
        raise JSONShapeError(f"{context}: {entry.path!r} copies from a base, but this is a full update")
    if entry.size == 0:
        if (entry.chunks or entry.base_path is not None or entry.gzip is not None or entry.elf_tables
                or entry.sha256 != EMPTY_SHA256):
            raise JSONShapeError(f"{context}: empty file {entry.path!r} must carry no data")
        return
    if entry.gzip is not None and component.base is None:
        # Full bundles never depend on the device's zlib reproducing a deflate stream.
        raise JSONShapeError(f"{context}: {entry.path!r}: a gzip recipe is only allowed in a delta")
    if entry.gzip is not None and entry.base_path is not None:
        raise JSONShapeError(f"{context}: {entry.path!r}: a base copy takes no gzip recipe")
    if entry.elf_tables:
        if component.base is None:  # it shrinks patches only: a full bundle has none
            raise JSONShapeError(f"{context}: {entry.path!r}: re-coded ELF tables are only allowed in a delta")
        if entry.base_path is not None or entry.gzip is not None:
            raise JSONShapeError(f"{context}: {entry.path!r}: re-coded ELF tables come only with chunks and no "
                                 "gzip recipe")
        if entry.size > elf_tables.MAX_ELF_BYTES:  # held whole on the device (T-EXHAUST)
            raise JSONShapeError(f"{context}: {entry.path!r}: re-coded ELF tables only in files of at most "
                                 f"{elf_tables.MAX_ELF_BYTES} bytes")
    if entry.base_path is None:
        content_size = entry.gzip.size if entry.gzip is not None else entry.size
        if content_size and not entry.chunks:
            raise JSONShapeError(f"{context}: {entry.path!r} has {entry.size} bytes but no data")
        if sum(c.size for c in entry.chunks) != content_size:
            raise JSONShapeError(f"{context}: the chunks of {entry.path!r} do not add up to its size")
        for chunk in entry.chunks:
            stored = objects.get(chunk.object)
            if stored is None:
                raise JSONShapeError(f"{context}: {entry.path!r} uses object {chunk.object[:16]} which is not stored")
            decoder = codec.DECODERS[stored.encoding]
            if decoder.container:
                raise JSONShapeError(f"{context}: {entry.path!r} uses block {chunk.object[:16]} as a chunk's object")
            if decoder.verbatim and stored.size != chunk.size:
                raise JSONShapeError(f"{context}: {entry.path!r}: a {stored.encoding} object must be exactly its "
                                     "chunk's size")
            if decoder.patch != (chunk.prefix is not None):
                raise JSONShapeError(f"{context}: {entry.path!r}: a patch object needs a prefix, others none")
            if chunk.prefix is not None and component.base is None:
                raise JSONShapeError(f"{context}: {entry.path!r} patches a base, but this is a full update")

