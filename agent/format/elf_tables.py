"""The relocation and symbol tables of an ELF file, re-coded so that two builds differ only where
their code does (docs/FORMAT.md, "ELF tables").

Code inserted in a kernel module moves everything after it: every relocation that follows gets
a new offset (and, against a section symbol, a new addend), every symbol after a new one a new
index, every symbol after the code a new value. A byte-wise differ sees all of them change. Stored as differences - each offset from the one before, each symbol index from the
one before, each addend from the last one against the same symbol, each symbol's name from the
one before and its value from the last one in the same section - they change only around the
edit. Measured on the kernel pair (linux-image 6.1.0-50 -> 6.1.0-57): the bundle takes 3.4 MB less,
0.95x -> 0.805x of ostree's.

The re-coding is a bijection of the file onto bytes of the same size: the ELF header and the
section header table are left as they are, so decoding finds the same tables encoding did.
Tables are found by rules a malformed file cannot break: anything that does not fit them is
left as it is (see :func:`tables`).
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import accumulate
from typing import Callable

# Held whole while re-coded, on the device as in the bundler, twice at once (the base file for a
# region and the file being rebuilt): 32 MiB each keeps a device's chunk within its budget
# (manifest.py MAX_CHUNK_BYTES). The largest kernel module, amdgpu.ko, is 19.4 MB.
MAX_ELF_BYTES = 32 << 20
SLICE_ROWS = 1 << 16  # rows re-coded at once
ADDEND_SYMBOLS = 1 << 20  # symbol indexes whose last addend is remembered: 8 MiB at most
_HEADER_BYTES = 64
_SECTION_HEADER_BYTES = 64
ROW_BYTES = 24  # an Elf64_Rela, an Elf64_Sym
SHT_SYMTAB, SHT_RELA, SHT_DYNSYM = 2, 4, 11
_M32, _M64 = (1 << 32) - 1, (1 << 64) - 1
_NAME_MASK = _M64 ^ _M32  # an Elf64_Sym's first word less its st_name


def is_elf64_le(data: bytes | bytearray | memoryview) -> bool:
    return len(data) >= _HEADER_BYTES and bytes(data[:6]) == b"\x7fELF\x02\x01"


def tables(data: bytes | bytearray | memoryview) -> list[tuple[int, int, int]]:
    """``(offset, size, sh_type)`` of the tables re-coded in ``data``, by offset.

    A table is a section of type SHT_RELA, SHT_SYMTAB or SHT_DYNSYM with 24-byte entries, a
    non-zero size that is a multiple of 24, lying wholly within the file after the ELF header
    and outside the section header table, and overlapping no table before it. The file must be
    ELF64 little-endian with 64-byte section headers, at most MAX_ELF_BYTES; else it has none.
    """
    if not is_elf64_le(data) or len(data) > MAX_ELF_BYTES:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    headers_end = shoff + shnum * _SECTION_HEADER_BYTES
    if shentsize != _SECTION_HEADER_BYTES or shnum == 0 or shoff < _HEADER_BYTES or headers_end > len(data):
        return []
    found = []
    for number in range(shnum):
        at = shoff + number * _SECTION_HEADER_BYTES
        sh_type, = struct.unpack_from("<I", data, at + 4)
        offset, size = struct.unpack_from("<QQ", data, at + 0x18)
        entsize, = struct.unpack_from("<Q", data, at + 0x38)
        if sh_type not in (SHT_RELA, SHT_SYMTAB, SHT_DYNSYM) or entsize != ROW_BYTES:
            continue
        if size == 0 or size % ROW_BYTES or offset < _HEADER_BYTES or offset + size > len(data):
            continue
        if offset < headers_end and shoff < offset + size:
            continue
        found.append((offset, size, sh_type))
    found.sort()
    kept: list[tuple[int, int, int]] = []
    for table in found:
        if not kept or kept[-1][0] + kept[-1][1] <= table[0]:
            kept.append(table)
    return kept


def encode(data: bytearray) -> None:
    """Re-code the tables of ``data`` in place (the bundler, on new files and base regions)."""
    _recode(data, forward=True)


def decode(data: bytearray) -> None:
    """Undo :func:`encode` in place (the device, on a file before it is written)."""
    _recode(data, forward=False)


def _recode(data: bytearray, forward: bool) -> None:
    # A slice of rows at a time, the state carried across: the columns in Python lists cost ~40
    # bytes per row each, which a 64 MiB table would make hundreds of MiB (T-EXHAUST).
    for offset, size, sh_type in tables(data):
        table = _Relocations() if sh_type == SHT_RELA else _Symbols()
        for start in range(offset, offset + size, SLICE_ROWS * ROW_BYTES):
            end = min(start + SLICE_ROWS * ROW_BYTES, offset + size)
            words = array("Q")
            words.frombytes(memoryview(data)[start:end])
            if sys.byteorder == "big":
                words.byteswap()
            table.recode(words, forward)
            if sys.byteorder == "big":
                words.byteswap()
            memoryview(data)[start:end] = memoryview(words).cast("B")


def _differences(values: list[int], before: int, mask: int) -> list[int]:
    return [(value - previous) & mask for value, previous in zip(values, [before, *values[:-1]])]


def _sums(differences: list[int], before: int, mask: int) -> list[int]:
    return [total & mask for total in accumulate(differences, initial=before)][1:]


def _by_key(keys: list[int], values: list[int], last: array, forward: bool) -> list[int]:
    """Each value as its difference from the last one with the same key (or back); ``last`` holds
    those for keys below its length and is updated. A value whose key is beyond it stays as it is.

    The loop runs once per row of every table of every module (the kernel pair: ~11 million on
    the device), so a slice whose keys all lie below ``len(last)`` - nearly every one - takes a
    loop without the test."""
    recoded: list[int] = []
    append = recoded.append
    if max(keys, default=0) < len(last):
        if forward:
            for key, value in zip(keys, values):
                previous = last[key]
                last[key] = value
                append((value - previous) & _M64)
        else:
            for key, value in zip(keys, values):
                last[key] = value = (value + last[key]) & _M64
                append(value)
        return recoded
    for key, value in zip(keys, values):
        if key < len(last):
            if forward:
                value, last[key] = (value - last[key]) & _M64, value
            else:
                value = last[key] = (value + last[key]) & _M64
        append(value)
    return recoded


def _grown(last: array, keys: list[int], limit: int) -> None:
    """Grows ``last`` with zeros to cover ``keys``, up to ``limit`` entries: tables start empty,
    as an array of the most they could need cost a page fault per 4 KiB on every table."""
    wanted = min(max(keys) + 1, limit)
    if wanted > len(last):
        last.frombytes(bytes(8 * (wanted - len(last))))


class _Relocations:
    """Rows of (r_offset, r_info, r_addend): offset from the previous row's, symbol index (r_info's
    high half) from the previous row's, addend from the last one against the same symbol (for
    the first ADDEND_SYMBOLS indexes; a row against a higher one keeps its addend). By column
    where a column depends on itself only, by row for the addends."""

    def __init__(self) -> None:
        self.offset = self.symbol = 0
        self.addends = array("Q")  # the last addend against each symbol index

    def recode(self, words: array, forward: bool) -> None:
        offsets, infos, addends = words[0::3].tolist(), words[1::3].tolist(), words[2::3].tolist()
        kinds = [info & _M32 for info in infos]
        if forward:
            symbols = [info >> 32 for info in infos]
            words[0::3] = array("Q", _differences(offsets, self.offset, _M64))
            words[1::3] = array("Q", [difference << 32 | kind for difference, kind
                                      in zip(_differences(symbols, self.symbol, _M32), kinds)])
            self.offset = offsets[-1]
        else:
            symbols = _sums([info >> 32 for info in infos], self.symbol, _M32)
            decoded = _sums(offsets, self.offset, _M64)
            words[0::3] = array("Q", decoded)
            words[1::3] = array("Q", [symbol << 32 | kind for symbol, kind in zip(symbols, kinds)])
            self.offset = decoded[-1]
        self.symbol = symbols[-1]
        _grown(self.addends, symbols, ADDEND_SYMBOLS)
        words[2::3] = array("Q", _by_key(symbols, addends, self.addends, forward))


class _Symbols:
    """Rows of (st_name | st_info << 32 | st_other << 40 | st_shndx << 48, st_value, st_size): name
    from the previous row's, value from the last one in the same section (st_shndx)."""

    def __init__(self) -> None:
        self.name = 0
        self.values = array("Q")  # the last value in each section (st_shndx: at most 65,536)

    def recode(self, words: array, forward: bool) -> None:
        firsts, values = words[0::3].tolist(), words[1::3].tolist()
        names = [first & _M32 for first in firsts]
        recoded_names = (_differences if forward else _sums)(names, self.name, _M32)
        self.name = (names if forward else recoded_names)[-1]
        words[0::3] = array("Q", [first & _NAME_MASK | name for first, name in zip(firsts, recoded_names)])
        sections = [first >> 48 for first in firsts]
        _grown(self.values, sections, 1 << 16)
        words[1::3] = array("Q", _by_key(sections, values, self.values, forward))


class Rebuilder:
    """Writes a file whose chunks carry it with its tables re-coded: gathered whole (at most
    MAX_ELF_BYTES, which the manifest parser holds it to), decoded, then written."""

    def __init__(self, size: int, write: Callable[[bytes], None]):
        self._size = size
        self._write = write
        self._content = bytearray()

    def feed(self, content: bytes) -> None:
        if len(self._content) + len(content) > self._size:
            raise ValueError("more content than the file's size")
        self._content += content

    def finish(self) -> None:
        if len(self._content) != self._size:
            raise ValueError("less content than the file's size")
        decode(self._content)
        self._write(self._content)
        self._content = bytearray()


def base_content(read_block: Callable[[], bytes], start: int, end: int) -> bytearray:
    """Bytes ``start`` to ``end`` of a base file with its tables re-coded, read block by block
    (all of it: where its tables are is at its end). Raises ValueError for a file larger than
    MAX_ELF_BYTES."""
    data = bytearray()
    while block := read_block():
        data += block
        if len(data) > MAX_ELF_BYTES:
            raise ValueError(f"the base file is larger than {MAX_ELF_BYTES} bytes")
    encode(data)
    del data[end:]  # in place: a slice would copy the region beside the whole file
    del data[:start]
    return data
