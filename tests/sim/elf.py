"""Relocatable ELF64 files (what a kernel module is) built in a few lines, for the elf-tables codec.

``module(seed, edits)``: a build of the same "source" after ``edits`` changes to it, each of
which moves the code, symbols and strings after it - what a rebuilt module looks like to a
differ.
"""

from __future__ import annotations

import random
import struct

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA = 1, 2, 3, 4
R_X86_64_PC32, R_X86_64_PLT32 = 2, 4


def relocatable(code: bytes, relocations: list[tuple[int, int, int, int]],
                symbols: list[tuple[int, int, int, int, int]], names: bytes) -> bytes:
    """An ELF64 little-endian relocatable file: ``.text`` (``code``), ``.rela.text`` of
    ``(offset, symbol, type, addend)``, ``.symtab`` of ``(name, info, section, value, size)``
    whose names are in ``names`` (``.strtab``); the section header table at the end."""
    rela = b"".join(struct.pack("<QQq", offset, symbol << 32 | kind, addend)
                    for offset, symbol, kind, addend in relocations)
    symtab = bytes(24) + b"".join(struct.pack("<IBBHQQ", name, info, 0, section, value, size)
                                  for name, info, section, value, size in symbols)
    section_names = b"\0.text\0.rela.text\0.symtab\0.strtab\0.shstrtab\0"
    bodies = [(b".text", SHT_PROGBITS, code, 0, 0, 0), (b".rela.text", SHT_RELA, rela, 3, 1, 24),
              (b".symtab", SHT_SYMTAB, symtab, 4, 1, 24), (b".strtab", SHT_STRTAB, names, 0, 0, 0),
              (b".shstrtab", SHT_STRTAB, section_names, 0, 0, 0)]
    out = bytearray(64)
    headers = [bytes(64)]
    for name, kind, body, link, info, entsize in bodies:
        out += bytes(-len(out) % 8)
        headers.append(struct.pack("<IIQQQQIIQQ", section_names.index(b"\0" + name + b"\0") + 1, kind, 0, 0,
                                   len(out), len(body), link, info, 8, entsize))
        out += body
    out += bytes(-len(out) % 8)
    shoff = len(out)
    out += b"".join(headers)
    out[:64] = (b"\x7fELF\x02\x01\x01" + bytes(9)
                + struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(headers), 5))
    return bytes(out)


def module(seed: int, edits: int = 0, rows: int = 4000) -> bytes:
    """A module of ``rows`` relocations and a function per four of them, rebuilt with ``edits`` changes
    to its source: each inserts a few bytes of code somewhere (what follows moves), a function
    (calls to the functions after it name symbol indexes one higher) and a string (the strings
    after it move in .rodata)."""
    rng = random.Random(seed)
    edited = set(rng.sample(range(rows), edits))
    source, inserted = random.Random(seed + 1).randbytes(rows * 16), random.Random(seed + 3)
    code, shifts = bytearray(), []
    for number in range(rows):
        if number in edited:
            code += inserted.randbytes(4 + number % 13)
        shifts.append(len(code) - number * 16)
        code += source[number * 16:number * 16 + 16]
    functions = max(rows // 4, 1)
    new_functions = [sum(1 for at in edited if at // 4 <= number) for number in range(functions)]
    rng = random.Random(seed + 2)
    relocations, symbols, names = [], [], bytearray(b"\0")
    for number in range(rows):
        offset = number * 16 + rng.randrange(12) + shifts[number]
        code[offset:offset + 4] = bytes(4)  # what a relocation fills in
        function = 1 + number % functions
        if number % 3:  # a call to a function
            relocations.append((offset, function + new_functions[function - 1], R_X86_64_PLT32, -4))
        else:  # a string in .rodata, through the section symbol
            string = rng.randrange(1 << 16)
            moved = 8 * sum(1 for at in edited if at * 16 <= string)
            relocations.append((offset, 0, R_X86_64_PC32, string + moved - 4))
    for number in range(functions):
        symbols.append((len(names), 0x12, 1, number * 64 + shifts[min(number * 4, rows - 1)], 64))
        names += f"function_{number}\0".encode()
    return relocatable(bytes(code), relocations, symbols, bytes(names))
