"""GRUB's environment block: the file ``load_env``/``save_env`` read and write (docs/DEVICE.md).

Format (GRUB's ``grub-core/lib/envblk.c``): the signature line ``# GRUB Environment Block``, then
``NAME=VALUE`` lines in which a backslash and a newline inside a value are escaped with a
backslash, then ``#`` up to the block's fixed size (1024 bytes as ``grub-editenv create`` makes
it). Lines that start with ``#`` are comments. The size never changes: GRUB rewrites the block's
sectors in place and refuses a value that does not fit.

``parse`` and ``render`` are pure. ``rewrite`` is the only write: in place, never truncating or
renaming (``grub-editenv`` truncates and rewrites, which a power cut turns into an empty file),
then flushed and read back. Two copies in separate folders make that safe against a torn write
(agent/boot/grub_btrfs.py).
"""

from __future__ import annotations

import os
from pathlib import Path

SIGNATURE = b"# GRUB Environment Block\n"
SIZE = 1024


class BlockError(ValueError):
    """Bytes that are not a whole environment block."""


def _unescape(value: bytes) -> bytes:
    out, escaped = bytearray(), False
    for byte in value:
        if escaped or byte != 0x5C:
            out.append(byte)
            escaped = False
        else:
            escaped = True
    return bytes(out)


def parse(data: bytes) -> dict[str, str]:
    """The variables of a block, in order. Raises BlockError for a wrong size or signature, a
    line without ``=``, or bytes that are not UTF-8 - the marks of a block that was never made
    by GRUB's tools or was torn by a power cut."""
    if len(data) != SIZE:
        raise BlockError(f"{len(data)} bytes, not {SIZE}")
    if not data.startswith(SIGNATURE):
        raise BlockError("no GRUB environment block signature")
    variables: dict[str, str] = {}
    position = len(SIGNATURE)
    while position < len(data):
        if data[position] == ord("#"):
            end = data.find(b"\n", position)
            position = len(data) if end < 0 else end + 1
            continue
        end = position
        while end < len(data) and data[end] != ord("\n"):
            end += 2 if data[end] == 0x5C else 1  # an escaped character, a newline included
        if end >= len(data):
            raise BlockError("the last variable has no end of line")
        name, equals, value = data[position:end].partition(b"=")
        if not equals or not name:
            raise BlockError(f"a line that is not NAME=VALUE at byte {position}")
        try:
            variables[name.decode()] = _unescape(value).decode()
        except UnicodeDecodeError:
            raise BlockError(f"a variable that is not UTF-8 at byte {position}") from None
        position = end + 1
    return variables


def render(variables: dict[str, str]) -> bytes:
    """A block holding ``variables`` in order, padded with ``#``. Raises BlockError when a name is
    not one GRUB can read back or the variables do not fit."""
    text = bytearray(SIGNATURE)
    for name, value in variables.items():
        if not name or name.startswith("#") or any(c in name for c in "=\n\\"):
            raise BlockError(f"{name!r} cannot be a variable name")
        text += name.encode() + b"=" + value.encode().replace(b"\\", b"\\\\").replace(b"\n", b"\\\n") + b"\n"
    if len(text) > SIZE:
        raise BlockError(f"the variables need {len(text)} bytes; the block holds {SIZE}")
    return bytes(text) + b"#" * (SIZE - len(text))


def read(path: Path) -> bytes:
    """The block's bytes (at most one byte more than a block, to tell a wrong size). Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return os.pread(fd, SIZE + 1, 0)
    finally:
        os.close(fd)


def rewrite(path: Path, block: bytes) -> None:
    """Overwrite the existing block at ``path`` with ``block`` in place, flush it and read it back.

    The file is never created, truncated or renamed: its size and clusters stay as they are, so
    only the block's own sectors and its directory entry's time are written. Raises BlockError if
    the file is not a block's size, OSError when writing or the read-back fails."""
    if len(block) != SIZE:
        raise BlockError(f"a block is {SIZE} bytes, not {len(block)}")
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size != SIZE:
            raise BlockError(f"{path} is {size} bytes, not a {SIZE}-byte GRUB environment block")
        written = os.pwrite(fd, block, 0)
        if written != SIZE:
            raise OSError(f"short write to {path}: {written} of {SIZE} bytes")
        os.fsync(fd)
        if os.pread(fd, SIZE, 0) != block:
            raise OSError(f"{path} does not read back what was written")
    finally:
        os.close(fd)
