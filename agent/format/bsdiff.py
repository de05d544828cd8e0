"""The ``bsdiff`` codec's patch: Colin Percival's bsdiff, repacked, applied in Python.

bsdiff finds approximate matches between a base region and a chunk by suffix sorting and stores
their bytewise differences, which are mostly zeros where recompiled code moved: on the platform
pair's x86-64 executables it cut the changed ones' patches from 2.23 MB (zstd --patch-from) to
1.78 MB, and to half on some libraries. The bundler makes it with ``bsdiff4``; a device only
applies it, here, with no native code of its own (FreeBSD has no wheel for ``bsdiff4``).

A stored ``bsdiff`` object is the patch itself, uncompressed: the bundler puts it in a block
(docs/FORMAT.md, "Blocks"), where it is compressed with the patches of similar files. The patch is:

* the number of controls, then per control ``add``, ``copy`` and ``seek`` as LEB128 varints
  (``seek`` zig-zag coded: it may be negative);
* the *diff* bytes (the sum of ``add``), then the *extra* bytes (the sum of ``copy``).

Applying: with ``old`` at 0, each control appends ``add`` bytes of the base region from ``old``
plus the next ``add`` diff bytes (bytewise, modulo 256), then the next ``copy`` extra bytes, and
moves ``old`` by ``add + seek``. Every ``add`` must read within the region, and the controls must
build exactly the chunk's size (docs/FORMAT.md, "Codecs").
"""

from __future__ import annotations

from typing import Iterator

from agent.format import varint

MAX_NUMBER = (1 << 63) - 1  # of a control: offsets and lengths are 64-bit in bsdiff
# Controls are applied in Python at ~3 us each: a chunk may have one per 16 bytes (and 16 more),
# which bounds a 64 MiB chunk to ~12 s. bsdiff4 makes one per 133 bytes at most on the platform
# pair's executables (rsync; most have one per several KiB); the bundler checks every patch by
# applying it, so it never stores one a device would refuse.
BYTES_PER_CONTROL = 16
FREE_CONTROLS = 16
# An ``add`` is summed this much at a time: its integers take ~9 times what they sum, which for
# one ``add`` of a whole 16 MiB chunk was ~150 MiB (T-EXHAUST; tests/test_bsdiff_codec.py).
ADD_SLICE = 1 << 20


class PatchError(ValueError):
    """The patch is malformed or does not fit the region and the chunk's size."""


def pack(controls: list[tuple[int, int, int]], diff: bytes, extra: bytes) -> bytes:
    """The patch of ``controls`` (add, copy, seek) and their bytes."""
    out = bytearray(varint.encode(len(controls)))
    for add, copy, seek in controls:
        out += varint.encode(add) + varint.encode(copy) + varint.encode(varint.zigzag(seek))
    return bytes(out) + diff + extra


def _add(old: bytes, diff: bytes) -> bytes:
    """``old`` plus ``diff``, byte by byte modulo 256, on whole integers: no carry crosses a byte
    (the low seven bits are added apart, the top bit by exclusive or)."""
    length = len(old)
    if not diff.strip(b"\0"):
        return bytes(old)
    a, b = int.from_bytes(old, "little"), int.from_bytes(diff, "little")
    low, high = int.from_bytes(b"\x7f" * length, "little"), int.from_bytes(b"\x80" * length, "little")
    return (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(length, "little")


def _controls(patch: bytes, count: int, start: int) -> Iterator[tuple[int, int, int]]:
    """The ``(add, copy, seek)`` controls of ``patch``, read one at a time from ``start``: never
    held as a list, which at a control per 16 bytes would take ~6 times the chunk."""
    numbers = varint.Reader(patch, PatchError, "a bsdiff patch")
    numbers.position = start
    for _ in range(count):
        add, copy, seek = numbers.number(MAX_NUMBER), numbers.number(MAX_NUMBER), numbers.number(MAX_NUMBER)
        yield add, copy, varint.unzigzag(seek)


def apply(region: bytes | memoryview, patch: bytes, size: int) -> bytearray:
    """The chunk: ``patch`` applied to ``region``. Raises PatchError."""
    numbers = varint.Reader(patch, PatchError, "a bsdiff patch")
    count = numbers.number(MAX_NUMBER)
    if count > FREE_CONTROLS + size // BYTES_PER_CONTROL:
        raise PatchError(f"a bsdiff patch has {count} controls for a chunk of {size} bytes; at most "
                         f"{FREE_CONTROLS} and one per {BYTES_PER_CONTROL} bytes are allowed")
    first = numbers.position
    total_add = total_copy = 0
    for _ in range(count):  # first the sizes: where the diff and the extra bytes start
        add, copy = numbers.number(MAX_NUMBER), numbers.number(MAX_NUMBER)
        numbers.number(MAX_NUMBER)
        total_add += add
        total_copy += copy
        if total_add + total_copy > size:
            raise PatchError("a bsdiff patch builds more than its chunk's size")
    if total_add + total_copy != size or numbers.position + size != len(patch):
        raise PatchError("a bsdiff patch's controls do not match its bytes and its chunk's size")
    diff_at, extra_at = numbers.position, numbers.position + total_add
    out, extras = bytearray(), memoryview(patch)  # extra bytes are appended uncopied
    old = 0
    for add, copy, seek in _controls(patch, count, first):
        if old < 0 or old + add > len(region):
            raise PatchError("a bsdiff patch reads outside its base region")
        for at in range(0, add, ADD_SLICE):
            piece = min(ADD_SLICE, add - at)
            out += _add(region[old + at:old + at + piece], patch[diff_at + at:diff_at + at + piece])
        out += extras[extra_at:extra_at + copy]
        diff_at, extra_at, old = diff_at + add, extra_at + copy, old + add + seek
    return out  # not a copy: the chunk is held once
