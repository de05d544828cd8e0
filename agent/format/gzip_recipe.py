"""gzip files carried as their content plus a recipe to re-deflate them bit for bit.

A changed ``.gz`` file differs almost everywhere in its compressed bytes even when its content
changed in one line, so a binary delta of the compressed bytes is nearly the whole file. On the
Debian platform pair, diffing the decompressed content instead costs 28x less (FIELD-NOTES). It
is safe because it is checked twice: the bundler uses a recipe only when re-deflating reproduces
the file exactly, and the device checks the rebuilt file against its SHA-256 - a device whose
zlib deflates differently fails verification instead of installing wrong bytes.

zlib reproduces most small files; GNU gzip's files of more than ~15 KB of content end their
blocks elsewhere than zlib does (on the platform pair, 73 changed files that cost 1.3 MB as
patches of their compressed bytes). Their tokens are zlib's, so zlib rebuilds them when told
to end a block (``Z_BLOCK``) wherever the original's blocks end: the recipe carries those
content offsets (``block_ends``; all 73, and 315 of the 324 such files of the platform and
kernel pairs' new trees). What that misses carries a shape (agent/format/deflate.py), re-coded
in Python, ~10 times slower.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from typing import Callable

from agent.format import deflate
from agent.format.tree import GzipRecipe

MAGIC = b"\x1f\x8b\x08"
MAX_HEADER_BYTES = 1024
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16
# The order levels are tried in: Debian's gzip -9n first, then zlib's default.
_LEVELS = (9, 6, 1, 2, 3, 4, 5, 7, 8)
DEFAULT_MEM_LEVEL = 8
# With block ends, the memory levels tried: 9 is zlib's largest buffer, which holds the 32 Ki
# tokens a GNU gzip block may have (8's holds 16 Ki: zlib would end such a block early by
# itself); 8 has gzip's own hash table, whose collisions decide matches where the search for
# one is short (gzip -6). Platform and kernel pairs: 313 files rebuilt at 9, 2 more at 8 only.
BLOCKS_MEM_LEVELS = (9, 8)
MAX_BLOCK_ENDS = 1 << 16
# With block ends or a shape: Debian's gzip -9n, then gzip's default -6 (their tokens are
# zlib's at that level).
_SHAPED_LEVELS = (9, 6)
# A shaped rebuild gathers the content and re-codes it in Python at ~4-5 MB/s here: 16 MiB of
# content bounds both the memory and the seconds one file costs a device.
MAX_SHAPED_CONTENT = 16 << 20
# A base file read as gzip content (a patch region's ``gunzip``): bgzip's files have a member per
# 64 KiB, so 65,536 members is 4 GiB of content.
MAX_MEMBERS = 1 << 16
FEED_BYTES = 1 << 16  # input given to zlib at once
INFLATE_BYTES = 1 << 20  # content taken from zlib at once: a dropped piece costs no more


def header_length(data: bytes) -> int | None:
    """Length of a gzip member header at the start of ``data``, or None if it is not one."""
    if len(data) < 10 or not data.startswith(MAGIC):
        return None
    flags = data[3]
    if flags & 0xE0:
        return None
    position = 10
    if flags & _FEXTRA:
        if len(data) < position + 2:
            return None
        position += 2 + struct.unpack_from("<H", data, position)[0]
    for flag in (_FNAME, _FCOMMENT):
        if flags & flag:
            end = data.find(b"\0", position)
            if end < 0:
                return None
            position = end + 1
    if flags & _FHCRC:
        position += 2
    return position if position <= min(len(data), MAX_HEADER_BYTES) else None


def check_header(header: bytes) -> None:
    """Raises ValueError unless ``header`` is exactly one well-formed gzip header."""
    if header_length(header) != len(header):
        raise ValueError("not a well-formed gzip header")


def check_block_ends(ends: tuple[int, ...], size: int) -> None:
    """Raises ValueError unless ``ends`` are at most ``MAX_BLOCK_ENDS`` offsets strictly inside
    content of ``size`` bytes, each after the one before."""
    if len(ends) > MAX_BLOCK_ENDS:
        raise ValueError(f"more than {MAX_BLOCK_ENDS} block ends")
    if any(not 0 < end < size for end in ends) or any(a >= b for a, b in zip(ends, ends[1:])):
        raise ValueError("block ends must increase and lie inside the content")


def find_recipe(data: bytes, max_content: int) -> tuple[GzipRecipe, bytes] | None:
    """The recipe that rebuilds ``data`` exactly from its content, and the content: zlib alone,
    else zlib ending a block at each of the original's block ends, else zlib's tokens re-coded
    in the blocks of a shape (agent/format/deflate.py; content of at most ``MAX_SHAPED_CONTENT``
    bytes)."""
    start = header_length(data)
    if start is None:
        return None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        content = inflater.decompress(data[start:], max_content + 1)
    except zlib.error:
        return None
    if not inflater.eof or len(content) > max_content or len(inflater.unused_data) != 8:
        return None  # truncated, too large, or several members / trailing bytes
    crc, size = struct.unpack("<II", inflater.unused_data)
    if crc != zlib.crc32(content) or size != len(content) & 0xFFFFFFFF:
        return None
    deflated = data[start:-8]

    def recipe(level: int, **how) -> tuple[GzipRecipe, bytes]:
        return GzipRecipe(header=data[:start], level=level, size=len(content),
                          sha256=hashlib.sha256(content).hexdigest(), **how), content

    for level in _LEVELS:
        if _zlib_reproduces(content, level, deflated):
            return recipe(level)
    blocks = find_block_ends(content, deflated)
    if blocks is not None:
        return recipe(blocks[0], mem_level=blocks[1], block_ends=blocks[2])
    shaped = find_shape(content, deflated)
    return None if shaped is None else recipe(shaped[0], shape=shaped[1])


def find_block_ends(content: bytes, deflated: bytes) -> tuple[int, int, tuple[int, ...]] | None:
    """``(level, memory level, block ends)`` with which zlib deflates ``content`` to ``deflated``, or None."""
    try:
        ends = deflate.block_ends(deflated)
        check_block_ends(ends, len(content))
    except ValueError:  # a DeflateError, or an empty block
        return None
    for level in _SHAPED_LEVELS:
        for mem_level in BLOCKS_MEM_LEVELS:
            if _deflate_in_blocks(content, level, mem_level, ends) == deflated:
                return level, mem_level, ends
    return None


def find_shape(content: bytes, deflated: bytes) -> tuple[int, bytes] | None:
    """``(level, shape)`` with which zlib's tokens of ``content`` re-code to ``deflated``, or None."""
    if len(content) > MAX_SHAPED_CONTENT:
        return None
    for level in _SHAPED_LEVELS:
        blocks: list[deflate.Block] = []
        try:
            tail = deflate.find_tail(deflate.tokens(deflated, blocks.append),
                                     deflate.tokens(_zlib_deflate(content, level)))
            if tail is None:
                continue
            shape = deflate.Shape(tuple(blocks), tail)
            if b"".join(deflate.rebuild(shape, _zlib_deflate(content, level), content)) == deflated:
                return level, deflate.shape_to_bytes(shape)
        except deflate.DeflateError:
            continue
    return None


def _zlib_reproduces(content: bytes, level: int, deflated: bytes) -> bool:
    """Whether zlib at ``level`` deflates ``content`` to ``deflated``; stops at the first block
    that differs (a file GNU gzip made differs within its first ~100 KB)."""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, DEFAULT_MEM_LEVEL)
    done = 0
    for start in range(0, len(content), 1 << 16):
        piece = deflater.compress(content[start:start + (1 << 16)])
        if deflated[done:done + len(piece)] != piece:
            return False
        done += len(piece)
    return deflated[done:] == deflater.flush()


def _deflate_in_blocks(content: bytes, level: int, mem_level: int, ends: tuple[int, ...]) -> bytes:
    out = []
    rebuilder = Rebuilder(GzipRecipe(header=b"", level=level, size=len(content), sha256="", mem_level=mem_level,
                                     block_ends=ends), out.append)
    rebuilder.feed(content)
    rebuilder.finish()
    return b"".join(out)[:-8]


def _zlib_deflate(content: bytes, level: int) -> bytes:
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, DEFAULT_MEM_LEVEL)
    return deflater.compress(content) + deflater.flush()


class ShapedRebuilder:
    """Rebuilds a gzip file from its content and its recipe's shape: the content is gathered
    (at most ``MAX_SHAPED_CONTENT`` bytes), then zlib's tokens of it are re-coded block by block
    in the original's blocks (agent/format/deflate.py) and written out piece by piece."""

    def __init__(self, recipe: GzipRecipe, write: Callable[[bytes], None]):
        assert recipe.shape is not None and recipe.size <= MAX_SHAPED_CONTENT
        self._recipe, self._write = recipe, write
        self._shape = deflate.shape_from_bytes(recipe.shape)
        self._content = bytearray()

    def feed(self, content: bytes) -> None:
        if len(self._content) + len(content) > self._recipe.size:
            raise ValueError("more gzip content than the recipe declares")
        self._content += content

    def finish(self) -> None:
        """Raises ValueError (a DeflateError) if the shape does not fit the content's tokens."""
        content = bytes(self._content)
        self._write(self._recipe.header)
        for piece in deflate.rebuild(self._shape, _zlib_deflate(content, self._recipe.level), content):
            self._write(piece)
        self._write(struct.pack("<II", zlib.crc32(content), len(content) & 0xFFFFFFFF))


class Rebuilder:
    """Streams a gzip file from its content pieces: ``header``, deflate, trailer; with block
    ends, the deflater ends a block at each."""

    def __init__(self, recipe: GzipRecipe, write: Callable[[bytes], None]):
        assert recipe.shape is None
        self._write = write
        self._deflater = zlib.compressobj(recipe.level, zlib.DEFLATED, -zlib.MAX_WBITS, recipe.mem_level)
        self._ends = list(reversed(recipe.block_ends or ()))  # the next one last
        self._crc = 0
        self._size = 0
        write(recipe.header)

    def feed(self, content: bytes) -> None:
        view = memoryview(content)
        while self._ends and self._size + len(view) >= self._ends[-1]:
            take = self._ends.pop() - self._size
            self._deflate(view[:take])
            self._write(self._deflater.flush(zlib.Z_BLOCK))
            view = view[take:]
        self._deflate(view)

    def _deflate(self, content: memoryview) -> None:
        self._crc = zlib.crc32(content, self._crc)
        self._size += len(content)
        self._write(self._deflater.compress(content))

    def finish(self) -> None:
        self._write(self._deflater.flush())
        self._write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


def gunzip_range(read_block: Callable[[], bytes], start: int, end: int) -> bytearray:
    """Bytes ``start`` to ``end`` of a gzip stream's content (all members), reading block by
    block; what comes before ``start`` is inflated and dropped.

    Raises ValueError if the stream is not gzip, or has more than MAX_MEMBERS members. Memory: at
    most ``end - start`` bytes plus a block and a slice. Work: zlib copies what follows a member's
    end, so the input is fed in slices of FEED_BYTES, and a file of empty members (a signed bundle
    may name one as a patch region) costs at most that per member, for at most MAX_MEMBERS members.
    """
    output = bytearray()
    produced = 0  # content inflated so far, dropped or kept
    block, at = memoryview(b""), 0
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # the first member: zlib says if it is one
    members = 1
    while produced < end:
        if at == len(block):
            block, at = memoryview(read_block()), 0
            if not block:
                break
        if inflater is None:  # another member may follow
            if len(block) - at < 2 and (more := read_block()):  # its magic may straddle two blocks
                block, at = memoryview(bytes(block[at:]) + more), 0
            if bytes(block[at:at + 2]) != b"\x1f\x8b":
                break
            members += 1
            if members > MAX_MEMBERS:
                raise ValueError(f"a gzip stream of more than {MAX_MEMBERS} members")
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
        piece = block[at:at + FEED_BYTES]
        try:
            inflated = inflater.decompress(piece, min(end - produced, INFLATE_BYTES))
        except zlib.error as error:
            raise ValueError(f"not a gzip stream: {error}") from None
        at += len(piece) - len(inflater.unconsumed_tail) - len(inflater.unused_data)
        if produced + len(inflated) > start:
            output += inflated[max(0, start - produced):]
        produced += len(inflated)
        if inflater.eof:
            inflater = None
    return output


def gunzip_prefix(read_block: Callable[[], bytes], end: int) -> bytearray:
    """The first ``end`` bytes of a gzip stream's content: :func:`gunzip_range` from 0."""
    return gunzip_range(read_block, 0, end)
