"""The codecs of stored data, by name: the decoders this agent has (docs/FORMAT.md, "Codecs").

A manifest lists the codecs its bundle needs (``codecs``); the parser reads that list before
anything else and refuses a bundle that needs a codec missing here with UnsupportedCodec, naming
it, before a byte of payload is read. Two kinds share the one list of names:

* decoders (``raw``, ``zstd``, ``zstd-patch``, ``bsdiff``): how a stored object becomes a chunk's
  bytes, named by the object's ``encoding``; and ``block``, one zstd frame of several objects
  together (their *members*), which no chunk names directly;
* transforms (``gzip-recipe``; ``gzip-blocks`` or ``gzip-shape`` for a recipe with block ends
  or a shape): how a file is rebuilt from the content its chunks decode to, named by a field of
  the entry (``gzip``).

A new codec is one entry here and one encoder in bundler/encoders.py (docs/ARCHITECTURE.md).

Patches use libzstd's ``ZSTD_CCtx_refPrefix``/``ZSTD_DCtx_refPrefix`` - what ``zstd
--patch-from`` uses - reached through python-zstandard's cffi binding, because the library's
dictionary API is not an equivalent for large references (FIELD-NOTES: 118.6 MB against 1.5 MB
on a 256 MiB file). The prefix is referenced, not copied, so it can be an mmap of the base
file. Decoding is bounded by the signed sizes: a frame must declare exactly the chunk size the
manifest promises before a byte is decoded, and output goes into a buffer of that size
(T-BOMB in docs/THREAT-MODEL.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import zstandard
from zstandard import backend_cffi

from agent.format import bsdiff, elf_tables, gzip_recipe
from agent.format.tree import Entry
from keys.errors import Refused

_lib, _ffi = backend_cffi.lib, backend_cffi.ffi
# The encoder's window covers prefix + chunk, up to 128 MiB. Single-threaded level 19 loses long
# matches once prefix + chunk exceed ~48-64 MiB (measured here: 7 KB -> 400 KB on a 64 MiB
# prefix), so the bundler keeps them within 64 MiB (bundler/make.py PREFIX_BYTES + chunk size).
MAX_WINDOW_LOG = 27
# Largest output of one frame: bounds every decode buffer, whatever a manifest says.
MAX_DECODED_BYTES = 64 << 20
# Largest content of a block (its members end to end): a device holds one decoded block at a time.
MAX_BLOCK_BYTES = 16 << 20
CONTENTSIZE_UNKNOWN = (1 << 64) - 2  # ZSTD_CONTENTSIZE_UNKNOWN; ZSTD_CONTENTSIZE_ERROR is 2**64 - 1
DECODER_WINDOW_LOG_MAX = 28
LDM_HASH_LOG_MIN, LDM_HASH_LOG_MAX = 6, 20  # see ldm_hash_log; the first is ZSTD_LDM_HASHLOG_MIN
_new_uncleared = _ffi.new_allocator(should_clear_after_alloc=False)


class CorruptObject(Refused):
    """A stored object does not decode to what the manifest promises."""


class UnsupportedCodec(Refused):
    """A bundle needs a codec this agent does not have: a newer bundler made it."""


def _check(code: int, what: str) -> int:
    if _lib.ZSTD_isError(code):
        raise CorruptObject(f"{what}: {_ffi.string(_lib.ZSTD_getErrorName(code)).decode()}")
    return code


def _window_log(total: int) -> int:
    log = 10
    while (1 << log) < total and log < MAX_WINDOW_LOG:
        log += 1
    return log


def ldm_hash_log(level: int, size: int, prefix_size: int) -> int:
    """The long-distance matcher's hash table of a patch's encoder: 2**this entries of 8 bytes.

    libzstd 1.5.7 sizes it by strategy, one entry per 2**(7 - strategy // 3) bytes of window:
    32 MiB at level 19 with a 64 MiB window, which took bundle make past its memory goal. Here
    it is that, at most ``LDM_HASH_LOG_MAX`` (8 MiB: level 9's at 64 MiB), and set explicitly, so
    the bytes of a bundle do not move with the defaults of the libzstd it was made with."""
    parameters = _lib.ZSTD_getCParams(level, size, prefix_size)
    window = _window_log(size + prefix_size)
    return max(LDM_HASH_LOG_MIN, min(window - (7 - parameters.strategy // 3), LDM_HASH_LOG_MAX))


def compression_parameters(level: int, size: int, prefix_size: int = 0, search: tuple[int, int] | None = None,
                           window_log: int | None = None) -> tuple[tuple[int, int], ...]:
    """``(parameter, value)`` of every frame the bundler makes: content size in the header, no
    checksum (objects are hashed), a window that covers prefix + data (or at most ``window_log``),
    and for a patch long-distance matching with the table of :func:`ldm_hash_log`. ``search`` is
    ``(searchLog, chainLog)`` in place of the level's, for a frame whose time matters more than
    its last bytes."""
    window = _window_log(size + prefix_size)
    if window_log is not None:
        window = min(window, window_log)
    patch = prefix_size > 0
    parameters = [(_lib.ZSTD_c_compressionLevel, level), (_lib.ZSTD_c_windowLog, window),
                  (_lib.ZSTD_c_enableLongDistanceMatching, 1 if patch else 0),
                  (_lib.ZSTD_c_contentSizeFlag, 1), (_lib.ZSTD_c_checksumFlag, 0), (_lib.ZSTD_c_nbWorkers, 0)]
    if patch:
        parameters.append((_lib.ZSTD_c_ldmHashLog, ldm_hash_log(level, size, prefix_size)))
    if search is not None:
        parameters += [(_lib.ZSTD_c_searchLog, search[0]), (_lib.ZSTD_c_chainLog, search[1])]
    return tuple(parameters)


def compression_context(level: int, size: int, prefix: bytes | memoryview | None = None,
                        search: tuple[int, int] | None = None, window_log: int | None = None):
    """A libzstd compression context set with :func:`compression_parameters` and referring to
    ``prefix``, and the cffi buffer of the prefix, which must stay alive as long as the context.
    Free the context with ``ZSTD_freeCCtx``."""
    cctx = _lib.ZSTD_createCCtx()
    if cctx == _ffi.NULL:
        raise MemoryError("libzstd could not allocate a compression context")
    try:
        for parameter, value in compression_parameters(level, size, len(prefix) if prefix is not None else 0,
                                                       search, window_log):
            _check(_lib.ZSTD_CCtx_setParameter(cctx, parameter, value), "zstd parameter")
        prefix_buffer = None
        if prefix is not None and len(prefix):
            prefix_buffer = _ffi.from_buffer(prefix)
            _check(_lib.ZSTD_CCtx_refPrefix(cctx, prefix_buffer, len(prefix)), "zstd prefix")
    except BaseException:
        _lib.ZSTD_freeCCtx(cctx)
        raise
    return cctx, prefix_buffer


def output_buffer(capacity: int):
    """An uninitialised buffer: a frame's bound is about its input's size, and pages a frame
    does not fill are never touched - a zero-filled one is all resident (bundler memory)."""
    return _new_uncleared("char[]", capacity)


def compress(data: bytes | memoryview, level: int, prefix: bytes | memoryview | None = None,
             search: tuple[int, int] | None = None, window_log: int | None = None) -> bytes:
    """One zstd frame of ``data`` (:func:`compression_parameters`).

    With ``prefix`` the frame may refer back into it and needs the same prefix to decode.
    """
    assert 0 < len(data) <= MAX_DECODED_BYTES
    cctx, prefix_buffer = compression_context(level, len(data), prefix, search, window_log)  # noqa: F841 (kept alive)
    try:
        source = _ffi.from_buffer(data)
        capacity = _lib.ZSTD_compressBound(len(data))
        out = output_buffer(capacity)
        written = _check(_lib.ZSTD_compress2(cctx, out, capacity, source, len(data)), "zstd compress")
        return _ffi.buffer(out, written)[:]
    finally:
        _lib.ZSTD_freeCCtx(cctx)


def declared_size(stored: bytes) -> int:
    """The content size the single zstd frame ``stored`` declares. Raises CorruptObject."""
    source = _ffi.from_buffer(stored)
    frame = _lib.ZSTD_findFrameCompressedSize(source, len(stored))
    _check(frame, "stored object is not a zstd frame")
    if frame != len(stored):
        raise CorruptObject("stored object is not exactly one zstd frame")
    # ZSTD_CONTENTSIZE_UNKNOWN/ERROR are values near 2**64: callers compare against a bound.
    return _lib.ZSTD_getFrameContentSize(source, len(stored))


def decompress(stored: bytes, size: int, prefix: bytes | memoryview | None = None) -> bytearray:
    """Decode one frame into exactly ``size`` bytes. Raises CorruptObject."""
    assert 0 < size <= MAX_DECODED_BYTES
    declared = declared_size(stored)
    if declared >= CONTENTSIZE_UNKNOWN:
        raise CorruptObject("stored object does not declare its content size")
    try:
        window = zstandard.get_frame_parameters(stored).window_size
    except zstandard.ZstdError as error:
        raise CorruptObject(f"stored object's zstd frame header is invalid: {error}") from None
    if window > 1 << DECODER_WINDOW_LOG_MAX:
        # One-shot decoding ignores ZSTD_d_windowLogMax, so the documented limit is checked here.
        raise CorruptObject(f"stored object's zstd window is {window} bytes (limit {1 << DECODER_WINDOW_LOG_MAX})")
    source = _ffi.from_buffer(stored)
    if declared != size:
        raise CorruptObject(f"stored object declares {declared} bytes, the manifest says {size}")
    dctx = _lib.ZSTD_createDCtx()
    assert dctx != _ffi.NULL
    try:
        _check(_lib.ZSTD_DCtx_setParameter(dctx, _lib.ZSTD_d_windowLogMax, DECODER_WINDOW_LOG_MAX),
               "zstd parameter")
        prefix_buffer = None  # referenced by the context until it is freed: keep it alive
        if prefix is not None and len(prefix):
            prefix_buffer = _ffi.from_buffer(prefix)
            _check(_lib.ZSTD_DCtx_refPrefix(dctx, prefix_buffer, len(prefix)), "zstd prefix")
        out = bytearray(size)  # decoded into in place: one buffer of the chunk's size, not two
        written = _check(_lib.ZSTD_decompressDCtx(dctx, _ffi.from_buffer(out), size, source, len(stored)),
                         "zstd decode")
        if written != size:
            raise CorruptObject(f"stored object decodes to {written} bytes, the manifest says {size}")
        return out
    finally:
        _lib.ZSTD_freeDCtx(dctx)


# --- the registry -----------------------------------------------------------------------------

Region = bytes | bytearray | memoryview  # the base region a patch refers to (a chunk's ``prefix``)


@dataclass(frozen=True)
class Decoder:
    """An object encoding: how a stored object becomes exactly ``size`` bytes of a chunk.

    ``decode(stored, size, region)`` raises CorruptObject. ``patch``: it decodes against a base
    region, so a chunk of such an object has a ``prefix``, and only such a chunk has one.
    ``verbatim``: the stored bytes are the chunk, so the object's size is its chunk's size.
    ``container``: a block: it decodes to its members' bytes, never to a chunk.
    """

    name: str
    decode: Callable[[bytes, int, Region | None], bytes | bytearray]
    patch: bool = False
    verbatim: bool = False
    container: bool = False


class Rebuilder(Protocol):
    """Writes a file from its content, fed piece by piece in file order."""

    def feed(self, content: bytes) -> None: ...

    def finish(self) -> None: ...


@dataclass(frozen=True)
class Transform:
    """A file-level codec: an entry's chunks decode to its content, and the file is rebuilt from it.

    ``used_by(entry)``: the entry needs this codec (to be rebuilt, or to read its base regions).
    ``rebuilder(entry, write)``: the entry's Rebuilder, or None if the entry is not rebuilt by it.
    ``base_content(read_block, start, end)``: bytes ``start`` to ``end`` of a base file's
    content, read block by block, for a patch region of that content (``prefix.gunzip``); raises
    ValueError.
    None for a transform whose content no region refers to.
    """

    name: str
    used_by: Callable[[Entry], bool]
    rebuilder: Callable[[Entry, Callable[[bytes], None]], Rebuilder | None]
    base_content: Callable[[Callable[[], bytes], int, int], bytes | bytearray] | None = None


def _raw(stored: bytes, size: int, region: Region | None) -> bytes:
    if len(stored) != size:
        raise CorruptObject(f"raw object has {len(stored)} bytes, the manifest says {size}")
    return stored


def _zstd(stored: bytes, size: int, region: Region | None) -> bytearray:
    return decompress(stored, size)


def _zstd_patch(stored: bytes, size: int, region: Region | None) -> bytearray:
    if region is None:
        raise CorruptObject("a patch object needs its base region")
    return decompress(stored, size, region)


def _gzip_used_by(entry: Entry) -> bool:
    return entry.gzip is not None or any(c.prefix is not None and c.prefix.gunzip for c in entry.chunks)


def _gzip_rebuilder(entry: Entry, write: Callable[[bytes], None]) -> Rebuilder | None:
    plain = entry.gzip is not None and entry.gzip.shape is None and entry.gzip.block_ends is None
    return gzip_recipe.Rebuilder(entry.gzip, write) if plain else None


def _blocks_used_by(entry: Entry) -> bool:
    return entry.gzip is not None and entry.gzip.block_ends is not None


def _blocks_rebuilder(entry: Entry, write: Callable[[bytes], None]) -> Rebuilder | None:
    return gzip_recipe.Rebuilder(entry.gzip, write) if _blocks_used_by(entry) else None


def _shape_used_by(entry: Entry) -> bool:
    return entry.gzip is not None and entry.gzip.shape is not None


def _shaped_rebuilder(entry: Entry, write: Callable[[bytes], None]) -> Rebuilder | None:
    return gzip_recipe.ShapedRebuilder(entry.gzip, write) if _shape_used_by(entry) else None


def _bsdiff(stored: bytes, size: int, region: Region | None) -> bytearray:
    if region is None:
        raise CorruptObject("a patch object needs its base region")
    try:
        return bsdiff.apply(region, stored, size)
    except bsdiff.PatchError as error:
        raise CorruptObject(str(error)) from None


RAW = Decoder("raw", _raw, verbatim=True)
ZSTD = Decoder("zstd", _zstd)
ZSTD_PATCH = Decoder("zstd-patch", _zstd_patch, patch=True)
BSDIFF = Decoder("bsdiff", _bsdiff, patch=True)  # agent/format/bsdiff.py
# Small objects compressed together: the kernel pair's 4,000 module patches take 16% less in
# 16 MiB blocks than one frame each, as similar changes share one context (docs/FORMAT.md, "Blocks").
BLOCK = Decoder("block", _zstd, container=True)
GZIP_RECIPE = Transform("gzip-recipe", used_by=_gzip_used_by, rebuilder=_gzip_rebuilder,
                        base_content=gzip_recipe.gunzip_range)
# A recipe with block ends (GNU gzip's files): zlib told to end a block where the original's end.
GZIP_BLOCKS = Transform("gzip-blocks", used_by=_blocks_used_by, rebuilder=_blocks_rebuilder)
# A recipe with a shape (what block ends miss): zlib's tokens re-coded in the original's blocks.
GZIP_SHAPE = Transform("gzip-shape", used_by=_shape_used_by, rebuilder=_shaped_rebuilder)


def _elf_used_by(entry: Entry) -> bool:
    return entry.elf_tables or any(c.prefix is not None and c.prefix.elf_tables for c in entry.chunks)


def _elf_rebuilder(entry: Entry, write: Callable[[bytes], None]) -> Rebuilder | None:
    return elf_tables.Rebuilder(entry.size, write) if entry.elf_tables else None


# An ELF file's relocation and symbol tables re-coded as differences (agent/format/elf_tables.py).
ELF_TABLES = Transform("elf-tables", used_by=_elf_used_by, rebuilder=_elf_rebuilder,
                       base_content=elf_tables.base_content)

DECODERS: dict[str, Decoder] = {d.name: d for d in (RAW, ZSTD, ZSTD_PATCH, BSDIFF, BLOCK)}
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (GZIP_RECIPE, GZIP_BLOCKS, GZIP_SHAPE, ELF_TABLES)}
# Every codec this agent has, sorted: what a manifest's ``codecs`` may name.
CODECS: tuple[str, ...] = tuple(sorted([*DECODERS, *TRANSFORMS]))
assert len(CODECS) == len(DECODERS) + len(TRANSFORMS), "a decoder and a transform share a name"


def require(names: Iterable[str]) -> None:
    """Raises UnsupportedCodec naming every codec of ``names`` this agent lacks."""
    missing = [name for name in names if name not in CODECS]
    if missing:
        needs = f"codec {missing[0]}" if len(missing) == 1 else "codecs " + ", ".join(missing)
        raise UnsupportedCodec(f"this bundle needs {needs}; this agent has {', '.join(CODECS)}",
                               hint="update the agent first, or use a bundle made for it (`bundle make --codecs` "
                                    "with the codecs it has, or a full bundle)")


def used_by(encodings: Iterable[str], entries: Iterable[Entry]) -> tuple[str, ...]:
    """The codecs stored objects of ``encodings`` and ``entries`` use, sorted."""
    names = set(encodings)
    pending = dict(TRANSFORMS)
    for entry in entries:
        for transform in [t for t in pending.values() if t.used_by(entry)]:
            names.add(transform.name)
            del pending[transform.name]
        if not pending:
            break
    return tuple(sorted(names))


def rebuilder(entry: Entry, write: Callable[[bytes], None]) -> Rebuilder | None:
    """The Rebuilder of the transform that rebuilds ``entry`` (the manifest allows one), or None."""
    for transform in TRANSFORMS.values():
        found = transform.rebuilder(entry, write)
        if found is not None:
            return found
    return None


def decode(encoding: str, stored: bytes, size: int, prefix: Region | None = None) -> bytes | bytearray:
    """Bytes of a chunk from its stored object, by the object's encoding. Raises CorruptObject."""
    decoder = DECODERS.get(encoding)
    if decoder is None:  # the manifest parser refuses unknown encodings: not reached from a bundle
        raise CorruptObject(f"stored object has encoding {encoding!r}, which this agent cannot decode")
    return decoder.decode(stored, size, prefix)
