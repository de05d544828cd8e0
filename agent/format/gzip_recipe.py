"""gzip files carried as their content plus a recipe to re-deflate them bit for bit.

A changed ``.gz`` file differs almost everywhere in its compressed bytes even when its content
changed in one line, so a binary delta of the compressed bytes is nearly the whole file. On the
Debian platform pair, diffing the decompressed content instead costs 28x less (FIELD-NOTES). It
is safe because it is checked twice: the bundler uses a recipe only when re-deflating reproduces
the file exactly, and the device checks the rebuilt file against its SHA-256 - a device whose
zlib deflates differently fails verification instead of installing wrong bytes.

zlib reproduces most small files; GNU gzip's files of more than ~15 KB of content end their
blocks elsewhere than zlib does, so those carry a shape (agent/format/deflate.py): on the
platform pair, 73 changed files that cost 1.3 MB as patches of their compressed bytes.
"""

from __future__ import annotations

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
_MEM_LEVEL = 8
# With a shape: Debian's gzip -9n, then gzip's default -6 (their tokens are zlib's at that level).
_SHAPED_LEVELS = (9, 6)
# A shaped rebuild gathers the content and re-codes it in Python at ~4-5 MB/s here: 16 MiB of
# content bounds both the memory and the seconds one file costs a device.
MAX_SHAPED_CONTENT = 16 << 20


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


def find_recipe(data: bytes, max_content: int) -> tuple[bytes, int, bytes, bytes | None] | None:
    """``(header, level, content, shape)`` if deflating ``content`` at ``level`` rebuilds ``data``
    exactly: with zlib alone (``shape`` None), else by re-coding zlib's tokens in the blocks of
    ``shape`` (agent/format/deflate.py; content of at most ``MAX_SHAPED_CONTENT`` bytes)."""
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
    for level in _LEVELS:
        if _zlib_reproduces(content, level, deflated):
            return data[:start], level, content, None
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
                return data[:start], level, content, deflate.shape_to_bytes(shape)
        except deflate.DeflateError:
            continue
    return None


def _zlib_reproduces(content: bytes, level: int, deflated: bytes) -> bool:
    """Whether zlib at ``level`` deflates ``content`` to ``deflated``; stops at the first block
    that differs (a file GNU gzip made differs within its first ~100 KB)."""
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, _MEM_LEVEL)
    done = 0
    for start in range(0, len(content), 1 << 16):
        piece = deflater.compress(content[start:start + (1 << 16)])
        if deflated[done:done + len(piece)] != piece:
            return False
        done += len(piece)
    return deflated[done:] == deflater.flush()


def _zlib_deflate(content: bytes, level: int) -> bytes:
    deflater = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS, _MEM_LEVEL)
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
    """Streams a gzip file from its content pieces: ``header``, deflate, trailer."""

    def __init__(self, recipe: GzipRecipe, write: Callable[[bytes], None]):
        self._write = write
        self._deflater = zlib.compressobj(recipe.level, zlib.DEFLATED, -zlib.MAX_WBITS, _MEM_LEVEL)
        self._crc = 0
        self._size = 0
        write(recipe.header)

    def feed(self, content: bytes) -> None:
        self._crc = zlib.crc32(content, self._crc)
        self._size += len(content)
        self._write(self._deflater.compress(content))

    def finish(self) -> None:
        self._write(self._deflater.flush())
        self._write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))


def gunzip_prefix(read_block: Callable[[], bytes], end: int) -> bytes:
    """The first ``end`` bytes of a gzip stream's content (all members), reading block by block.

    Raises ValueError if the stream is not gzip. Memory: at most ``end`` bytes plus one block.
    """
    output = bytearray()
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
    pending = b""
    while len(output) < end:
        if not pending:
            pending = read_block()
            if not pending:
                break
        try:
            output += inflater.decompress(pending, end - len(output))
        except zlib.error as error:
            raise ValueError(f"not a gzip stream: {error}") from None
        pending = inflater.unconsumed_tail
        if inflater.eof:  # another member may follow
            pending = inflater.unused_data + pending
            inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)
            while len(pending) < 2 and (more := read_block()):  # the next member may start a block
                pending += more
            if not pending.startswith(b"\x1f\x8b"):
                break
    return bytes(output)
