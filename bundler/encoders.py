"""The codecs' encoders, by name: the bundler's half of the registry in agent/format/codec.py.

Every encoder here has the decoder of the same name there (tests/test_codecs.py), and a bundle's
manifest lists the codecs it used (docs/FORMAT.md, "Codecs"), so a device that lacks one refuses
the bundle by name before reading its payload. Two kinds, as on the device:

* object encoders (``raw``, ``zstd``, ``zstd-patch``, ``bsdiff``): each chunk is stored as the
  smallest of them (docs/FORMAT.md, "How files are carried");
* transforms (``gzip-recipe``, ``gzip-blocks``, ``gzip-shape``): a gzip file that re-deflates
  bit for bit is carried as its content and a recipe, in deltas only (docs/FORMAT.md, "gzip
  recipe").

A new codec is one encoder here, one decoder in agent/format/codec.py, and regenerated golden
vectors (docs/ARCHITECTURE.md, "Where a new thing goes").
"""

from __future__ import annotations

import bz2
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.format import bsdiff, codec, elf_tables, gzip_recipe
from agent.format.manifest import MAX_GUNZIP_END, MAX_GZIP_CONTENT_BYTES
from agent.format.tree import GzipRecipe
from bundler.vendor_only import vendor_module
from keys.errors import Failed


# Tells how many more input bytes an encoder has consumed; it may raise to stop the encoding
# (bundler/make.py stops its workers so on an interrupt).
Tick = Callable[[int], None]
# Input fed to libzstd per call: progress and a stop request are seen at least this often
# (0.1-0.3 s at level 19 here). The frame is the same as one call makes (tests/test_codecs.py).
STREAM_PIECE = 256 << 10
# bsdiff (agent/format/bsdiff.py) is tried on executables only, where suffix sorting beats
# zstd's match finder (a fifth smaller on the platform pair's); it costs 17 bytes of memory per
# region byte (memory_needed) and ~0.5 s per MB, so regions up to 6 MiB.
EXECUTABLE_MAGIC = (b"\x7fELF", b"MZ", b"\xcf\xfa\xed\xfe")  # ELF, PE, 64-bit Mach-O
BSDIFF_MAX_REGION = 6 << 20
# The second, quick patch every patch chunk gets, and what incompressible data is encoded at.
QUICK_PATCH_LEVEL = 9
# A big chunk's patch is made at the level asked too only where its quick one holds more than
# this share of it (_patch).
THOROUGH_SHARE = 64
# The probe for incompressible data: a level-1 frame keeping more than this share of the bytes.
PROBE_LEVEL = 1
INCOMPRESSIBLE_SHARE = 0.95
# Below this a chunk is encoded at the level asked whatever its data: it takes little time, and
# level 19 still finds a few more matches in a small incompressible file (a .gz) than level 9.
PROBE_FROM = 1 << 20
LDM_ENTRY_BYTES = 8  # sizeof(ldmEntry_t) in libzstd


@dataclass(frozen=True)
class Encoder:
    """An object encoding. ``encode(data, level, region, tick)`` is the stored object, or None where
    the encoding does not apply; ``patch``: it refers to a base region, which the chunk then names;
    ``compresses``: it feeds the data through libzstd, telling ``tick`` as it goes; ``in_block``:
    its stored bytes are uncompressed and go into a block (bundler/blocks.py), so it is ranked by
    the size of a level-9 frame of them alone, which its block's frame does not exceed in practice
    (level 19 took 2.5 CPU-seconds of the platform pair's make, was larger for two thirds of its
    bsdiff patches, and ranked them into a bundle 1.8 KB larger)."""

    name: str
    encode: Callable[[bytes, int, bytes | None, Tick | None], bytes | None]
    patch: bool = False
    compresses: bool = True
    in_block: bool = False


def compress(data: bytes, level: int, prefix: bytes | None = None, tick: Tick | None = None,
             window_log: int | None = None) -> bytes:
    """The frame ``agent.format.codec.compress`` makes, byte for byte; without a prefix it is fed
    to libzstd ``STREAM_PIECE`` bytes at a time so that ``tick`` hears of the progress (and may
    stop it). Same parameters, same frame (tests/test_codecs.py).

    A patch (``prefix``) is made in one call: with a prefix, long-distance matching is on, and
    libzstd finds its matches per call, so feeding pieces makes another (valid) frame - a d12
    chunk became 97 bytes instead of 252 - and bundles would differ from earlier bundlers'. Its
    ``tick`` comes when it is done; an interrupt does not wait for it (bundler/workers.py)."""
    if not 0 < len(data) <= codec.MAX_DECODED_BYTES:
        raise ValueError(f"a frame holds 1 to {codec.MAX_DECODED_BYTES} bytes, not {len(data)}")
    if prefix is not None or len(data) <= STREAM_PIECE:
        stored = codec.compress(data, level, prefix, window_log=window_log)
        if tick is not None:
            tick(len(data))
        return stored
    lib, ffi = codec._lib, codec._ffi
    cctx, _ = codec.compression_context(level, len(data), window_log=window_log)
    try:
        codec._check(lib.ZSTD_CCtx_setPledgedSrcSize(cctx, len(data)), "zstd size")
        # The data stays where it is while it is fed: libzstd reads it there instead of copying
        # it into a window buffer of its own (as large as the data). The frame is the same.
        codec._check(lib.ZSTD_CCtx_setParameter(cctx, lib.ZSTD_c_stableInBuffer, 1), "zstd parameter")
        capacity = lib.ZSTD_compressBound(len(data))
        out = codec.output_buffer(capacity)
        output = ffi.new("ZSTD_outBuffer *")
        output.dst, output.size, output.pos = out, capacity, 0
        source = ffi.from_buffer(data)
        piece = ffi.new("ZSTD_inBuffer *")
        piece.src, piece.size, piece.pos = source, 0, 0
        while piece.size < len(data):
            fed = piece.size
            piece.size = min(len(data), fed + STREAM_PIECE)
            last = piece.size == len(data)
            mode = lib.ZSTD_e_end if last else lib.ZSTD_e_continue
            while True:
                remaining = codec._check(lib.ZSTD_compressStream2(cctx, output, piece, mode), "zstd compress")
                if (remaining == 0) if last else (piece.pos == piece.size):
                    break
            if tick is not None:
                tick(piece.size - fed)
        return ffi.buffer(out, output.pos)[:]
    finally:
        lib.ZSTD_freeCCtx(cctx)


def _zstd(data: bytes, level: int, region: bytes | None, tick: Tick | None = None) -> bytes:
    return compress(data, level, None, tick)


def _patch(data: bytes, level: int, region: bytes | None, tick: Tick | None = None) -> bytes | None:
    """The smaller of a patch at ``level`` and one at ``QUICK_PATCH_LEVEL``: with tens of MiB of
    region, level 19's parser loses long matches that a quick level keeps (measured here: a
    16 MiB chunk with 2 MiB rewritten, against a 48 MiB region, 10.5 MB at 19, 2.1 MB at 9).

    A chunk of ``PROBE_FROM`` bytes or more whose quick patch is under a ``THOROUGH_SHARE``th of
    it is mostly found in its region: level 19 could only shrink that little patch, at a cost
    that grows with the whole chunk (a 323 MiB game pack with a few edits: 36 KiB in 313
    CPU-seconds with it, 40 KiB in 14 without)."""
    if region is None:
        return None
    quick = compress(data, min(level, QUICK_PATCH_LEVEL), region)
    if level <= QUICK_PATCH_LEVEL or (len(data) >= PROBE_FROM and len(quick) * THOROUGH_SHARE < len(data)):
        if tick is not None:
            tick(len(data))
        return quick
    thorough = compress(data, level, region, tick)
    return thorough if len(thorough) <= len(quick) else quick


def _bsdiff(data: bytes, level: int, region: bytes | None, tick: Tick | None = None) -> bytes | None:
    """A bsdiff patch (agent/format/bsdiff.py) of an executable against a region of at most
    ``BSDIFF_MAX_REGION`` bytes, checked by applying it as a device does; else None."""
    stored = None
    if region is not None and len(region) <= BSDIFF_MAX_REGION and data.startswith(EXECUTABLE_MAGIC):
        patch = vendor_module("bsdiff4").diff(bytes(region), data)
        packed = bsdiff.pack(*_from_bsdiff40(patch, len(data)))
        if len(packed) <= codec.MAX_BLOCK_BYTES:
            try:  # bsdiff itself lets a patch read past the old file; a device refuses that
                rebuilt = codec.decode(BSDIFF.name, packed, len(data), region)
            except codec.CorruptObject:
                rebuilt = None
            stored = packed if rebuilt == data else None
    if tick is not None:
        tick(len(data))
    return stored


def _from_bsdiff40(patch: bytes, size: int) -> tuple[list[tuple[int, int, int]], bytes, bytes]:
    """Controls, diff and extra bytes of a BSDIFF40 patch (bsdiff4's output: bzip2 sections,
    numbers in sign and magnitude)."""
    def number(raw: bytes) -> int:
        value = int.from_bytes(raw, "little") & ~(1 << 63)
        return -value if raw[7] & 0x80 else value
    control_bytes, diff_bytes, new_size = (number(patch[at:at + 8]) for at in (8, 16, 24))
    assert patch[:8] == b"BSDIFF40" and new_size == size
    controls_raw = bz2.decompress(patch[32:32 + control_bytes])
    diff = bz2.decompress(patch[32 + control_bytes:32 + control_bytes + diff_bytes])
    extra = bz2.decompress(patch[32 + control_bytes + diff_bytes:])
    controls = [tuple(number(controls_raw[at + 8 * i:at + 8 * i + 8]) for i in range(3))
                for at in range(0, len(controls_raw), 24)]
    return controls, diff, extra


RAW = Encoder("raw", lambda data, level, region, tick=None: data, compresses=False)
ZSTD = Encoder("zstd", _zstd)
ZSTD_PATCH = Encoder("zstd-patch", _patch, patch=True)
BSDIFF = Encoder("bsdiff", _bsdiff, patch=True, in_block=True)
ENCODERS: dict[str, Encoder] = {e.name: e for e in (RAW, ZSTD, ZSTD_PATCH, BSDIFF)}


def memory_needed(size: int, region: int, level: int, window_log: int | None = None) -> int:
    """Bytes of memory an encoding of a ``size``-byte chunk against a ``region``-byte base region
    may hold at its peak: the chunk, the region, their frames and the largest libzstd context
    (its match tables: 81 MiB at level 19 past a few MiB, whatever the window; a patch's
    long-distance matcher adds its own, agent/format/codec.py ldm_hash_log), or a bsdiff's
    suffix array, 17 bytes per region byte. A frame whose window is held to ``window_log`` has
    tables libzstd shrinks to fit it: 49 MiB at level 19 with a 4 MiB window."""
    lib = codec._lib
    parameters = lib.ZSTD_getCParams(level, size, region)
    parameters.windowLog = codec._window_log(size + region)
    if window_log is not None and window_log < parameters.windowLog:
        parameters.windowLog = window_log
        parameters = lib.ZSTD_adjustCParams(parameters, size, region)
    context = lib.ZSTD_estimateCCtxSize_usingCParams(parameters)  # leaves long-distance matching out
    if region:
        context += LDM_ENTRY_BYTES << codec.ldm_hash_log(level, size, region)
    suffix_array = 17 * region if 0 < region <= BSDIFF_MAX_REGION else 0
    return 2 * size + region + max(context, suffix_array)


def probes(size: int, level: int) -> bool:
    """Whether :func:`probe_chunk` compresses a chunk of ``size`` bytes to be encoded at ``level``."""
    return level > PROBE_LEVEL and size >= PROBE_FROM


def probe_chunk(data: bytes, level: int) -> tuple[int, bytes | None]:
    """``(level, probe frame)``: the level a chunk is encoded at, and for incompressible data
    the quick frame that told so (see :func:`ranked`)."""
    if not probes(len(data), level):
        return level, None
    frame = compress(data, PROBE_LEVEL)
    if len(frame) <= INCOMPRESSIBLE_SHARE * len(data):
        return level, None
    return min(level, QUICK_PATCH_LEVEL), frame


def ranked(data: bytes, level: int, region: bytes | None = None, tick: Tick | None = None,
           avoid: tuple[str, ...] = (), probed: tuple[int, bytes | None] | None = None) -> list[tuple[str, bytes]]:
    """``(encoding, stored)`` for every encoder that applies and is not in ``avoid``, smallest
    first (an ``in_block`` one by a level-9 frame of its bytes alone), ties going to ``raw``: already
    compressed data is stored as it is, costs no decoding and never grows. ``tick`` hears of
    ``len(data)`` bytes in all, however many encoders ran.

    A chunk of ``PROBE_FROM`` bytes or more that a quick level-1 frame (the probe) leaves
    almost its size is incompressible (media, packed archives): a higher level cannot shrink
    its new bytes and only finds fewer of its matches, in minutes instead of a second per
    chunk. Its ``zstd`` candidate is the probe and its patch is made at ``QUICK_PATCH_LEVEL``.

    An executable that bsdiff patched gets its zstd patch at ``QUICK_PATCH_LEVEL`` too: a level-19
    one is rarely smaller than both, and it was most of ``bundle make``'s time (the platform
    pair: 8 of the patches' 13.5 CPU-seconds less, and 7 KB smaller, bsdiff winning more chunks).
    ``probed``: what :func:`probe_chunk` said of ``data`` at ``level``, when the caller asked it first."""
    level, probe = probed if probed is not None else probe_chunk(data, level)
    chosen = [e for e in ENCODERS.values() if e.name not in avoid and (region is not None or not e.patch)]
    if ZSTD_PATCH in chosen and ZSTD in chosen:  # it does all a plain frame does, and refers to the region too
        chosen.remove(ZSTD)  # (the platform pair: the same bundle, a third less CPU)
    chosen.sort(key=lambda e: e is not BSDIFF)  # first: where it applies, the patch is made quickly
    passes = sum(1 for e in chosen if e.compresses and not (e is ZSTD and probe is not None))
    share = _shared(tick, passes) if tick is not None and passes else None
    candidates = []
    for encoder in chosen:
        encode_level = level
        if encoder is ZSTD_PATCH and any(name == BSDIFF.name for _, _, name, _ in candidates):
            encode_level = min(level, QUICK_PATCH_LEVEL)
        stored = probe if encoder is ZSTD and probe is not None else encoder.encode(data, encode_level, region, share)
        if stored is not None:
            cost = len(compress(stored, min(level, QUICK_PATCH_LEVEL))) if encoder.in_block else len(stored)
            candidates.append((cost, encoder.name != RAW.name, encoder.name, stored))
    if tick is not None and not passes:
        tick(len(data))
    return [(name, stored) for _, _, name, stored in sorted(candidates, key=lambda c: c[:2])]


def smallest(data: bytes, level: int, region: bytes | None = None, tick: Tick | None = None,
             probed: tuple[int, bytes | None] | None = None, avoid: tuple[str, ...] = ()) -> tuple[str, bytes]:
    """``(encoding, stored)``: the first of :func:`ranked`."""
    return ranked(data, level, region, tick, avoid, probed)[0]


def _shared(tick: Tick, passes: int) -> Tick:
    """``tick`` for one of ``passes`` runs over the same data: each run counts for its share."""
    consumed = told = 0

    def share(count: int) -> None:
        nonlocal consumed, told
        consumed += count
        now = consumed // passes
        if now > told:
            tick(now - told)
            told = now
    return share


@dataclass(frozen=True)
class Source:
    """Where a chunk's bytes come from: a file, a gzip file's content (``gunzip``), or an ELF
    file with its tables re-coded (``elf_tables``)."""

    path: Path
    gunzip: bool = False
    elf_tables: bool = False

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size). Raises Failed if the file changed meanwhile."""
        with open(self.path, "rb", buffering=0) as handle:
            if self.gunzip:
                data = gzip_recipe.gunzip_range(lambda: handle.read(1 << 20), offset, offset + size)
            elif self.elf_tables:
                try:
                    data = bytes(elf_tables.base_content(lambda: handle.read(1 << 20), offset, offset + size))
                except ValueError:
                    data = b""  # it grew past the limit: reported below
            else:
                data = os.pread(handle.fileno(), size, offset)
        if len(data) != size:
            raise Failed("file changed while the bundle was being made", where=self.path)
        return data


@dataclass(frozen=True)
class Transform:
    """A file-level codec. ``recipe(path, size)``: the entry's recipe and its content's size, or
    None if the file cannot be carried so; ``content_size(path)``: the size of a base file's
    content if its content can serve as a patch region, else None."""

    name: str
    recipe: Callable[[Path, int], tuple[GzipRecipe, int] | None] | None = None
    content_size: Callable[[Path], int | None] | None = None


def _gzip_recipe(path: Path, size: int) -> tuple[GzipRecipe, int] | None:
    """A recipe if ``path`` is a gzip file that re-deflates bit for bit, with its content size."""
    if size > MAX_GZIP_CONTENT_BYTES:
        return None
    with open(path, "rb") as handle:
        if not handle.read(len(gzip_recipe.MAGIC)) == gzip_recipe.MAGIC:
            return None
        data = gzip_recipe.MAGIC + handle.read()
    found = gzip_recipe.find_recipe(data, MAX_GZIP_CONTENT_BYTES)
    return None if found is None else (found[0], len(found[1]))


def _gunzipped_size(path: Path) -> int | None:
    """Content size of a gzip base file, if it is one and small enough to serve as a prefix."""
    with open(path, "rb") as handle:
        if gzip_recipe.header_length(handle.read(gzip_recipe.MAX_HEADER_BYTES)) is None:  # all a header may take
            return None
        handle.seek(0)
        try:
            content = gzip_recipe.gunzip_prefix(lambda: handle.read(1 << 20), MAX_GUNZIP_END + 1)
        except ValueError:
            return None
    return len(content) if len(content) <= MAX_GUNZIP_END else None


ET_REL = (1).to_bytes(2, "little")  # e_type of a relocatable object


def has_elf_tables(path: Path, size: int) -> bool:
    """Whether ``path`` is a relocatable ELF object (a kernel module) whose tables elf-tables
    re-codes. Executables and shared libraries are not worth it: on the platform pair their
    patches took 3.7% less, for ~0.6 s of CPU per million rows on the device."""
    if size > elf_tables.MAX_ELF_BYTES:
        return False
    with open(path, "rb") as handle:
        header = handle.read(64)
        if not elf_tables.is_elf64_le(header) or header[16:18] != ET_REL:
            return False
        handle.seek(0)
        return bool(elf_tables.tables(handle.read()))


GZIP_RECIPE = Transform("gzip-recipe", recipe=_gzip_recipe, content_size=_gunzipped_size)
# Recipes with block ends or a shape, which gzip-recipe's finds where zlib alone does not
# reproduce a file.
GZIP_BLOCKS = Transform("gzip-blocks")
GZIP_SHAPE = Transform("gzip-shape")
# Relocation and symbol tables of ELF files as differences (agent/format/elf_tables.py): a patch
# of a rebuilt kernel module or library then differs only where the code does.
ELF_TABLES = Transform("elf-tables")
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (GZIP_RECIPE, GZIP_BLOCKS, GZIP_SHAPE, ELF_TABLES)}
# Every codec the bundler can write, sorted (a subset of agent.format.codec.CODECS); blocks are
# filled by bundler/blocks.py.
NAMES: tuple[str, ...] = tuple(sorted([*ENCODERS, *TRANSFORMS, codec.BLOCK.name]))
