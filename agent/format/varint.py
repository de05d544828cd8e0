"""Unsigned LEB128 numbers, as the bsdiff patch and the gzip shape carry them: seven bits a byte,
least significant first, the top bit set on every byte but the last. Readers refuse a padded
number (a last byte of zero after others) and one above its limit, so each number has one
encoding."""

from __future__ import annotations


def encode(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def zigzag(value: int) -> int:
    """A signed number as an unsigned one: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return value << 1 if value >= 0 else (-value << 1) - 1


def unzigzag(value: int) -> int:
    return -(value >> 1) - 1 if value & 1 else value >> 1


class Reader:
    """Numbers read one after another from ``data``; ``position`` is where the next one starts.
    ``error`` is raised, naming ``what``, on a truncated, padded or out-of-range number."""

    def __init__(self, data: bytes, error: type[ValueError], what: str):
        self.data, self.position, self._error, self._what = data, 0, error, what

    def number(self, limit: int) -> int:
        value = shift = 0
        while True:
            if self.position >= len(self.data) or shift > limit.bit_length():
                raise self._error(f"{self._what} is truncated or has an oversized number")
            byte = self.data[self.position]
            self.position += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if value > limit or (byte == 0 and shift > 7):
                    raise self._error(f"{self._what} has an out-of-range or padded number")
                return value
