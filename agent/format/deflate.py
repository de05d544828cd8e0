"""Deflate streams as LZ77 tokens and block shapes, to rebuild streams zlib does not reproduce.

GNU gzip and zlib share their match finder: at the same level their LZ77 tokens are the same,
and only where blocks end differs (gzip also ends a block when its estimate says the rest will
compress differently; zlib only when its buffer is full). So a stream gzip made is rebuilt bit
for bit from its content by taking zlib's tokens and cutting them into gzip's blocks, each coded
with that block's own Huffman codes: the *shape* of the original stream (per block: its type,
its token count, and for a dynamic block the header bits that carry its code lengths) is all a
bundle carries beside the content. Measured on the platform pair: every one of the 73 changed
`.gz` files zlib does not reproduce is rebuilt so, each with a shape of ~0.1 KB per 100 KB.

Pure Python, both sides: the bundler finds a shape that rebuilds a file (``shape_of``), the
device rebuilds with it (``Rebuilt``); any mismatch shows as a wrong hash, never as wrong bytes
installed. Tokens are ints: a literal byte is itself, a match is ``length << 15 | distance - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, islice
from typing import Callable, Iterator

from agent.format import varint

STORED, FIXED, DYNAMIC = 0, 1, 2
LENGTH_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115,
               131, 163, 195, 227, 258)
LENGTH_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0)
DISTANCE_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
                 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)
DISTANCE_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13)
CODE_LENGTH_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
FIXED_LENGTHS = (8,) * 144 + (9,) * 112 + (7,) * 24 + (8,) * 8
FIXED_DISTANCES = (5,) * 30
END_OF_BLOCK = 256
MAX_BLOCKS = 1 << 16  # of one shape: gzip ends a block every 32 Ki tokens at the latest
MAX_HEADER_BITS = 8 * 1024  # a dynamic header is at most 14 + 19 * 3 + 320 * 7 bits
MAX_TAIL_TOKENS = 4096


class DeflateError(ValueError):
    """The bytes are not a deflate stream of the expected shape."""


@dataclass(frozen=True)
class Block:
    """One block of a stream's shape. ``count``: tokens for a coded block, bytes for a stored
    one. ``header``: a dynamic block's header bits after its type (``header_bits`` of them,
    least significant first): the code lengths, as the original encoder coded them."""

    kind: int
    final: bool
    count: int
    header: int = 0
    header_bits: int = 0


@dataclass(frozen=True)
class Shape:
    """How a stream is rebuilt from zlib's tokens of its content: its blocks, and ``tail``, the
    stream's own last tokens where zlib's differ (GNU gzip chooses differently among matches
    that reach the end of the input: the last few dozen to few hundred tokens)."""

    blocks: tuple[Block, ...]
    tail: tuple[int, ...] = ()


# --- reading ------------------------------------------------------------------------------------


class _Bits:
    """Least-significant-bit-first reader over ``data``. While blocks are read it also keeps
    ``tokens`` (of the block being read), ``covered`` (content bytes so far) and ``limit`` (a
    coded block stops once its tokens cover that many bytes: ``stopped``)."""

    __slots__ = ("data", "position", "buffer", "count", "tokens", "covered", "limit", "stopped")

    def __init__(self, data: bytes, limit: int | None = None):
        self.data, self.position, self.buffer, self.count = data, 0, 0, 0
        self.tokens, self.covered, self.limit, self.stopped = 0, 0, limit, False

    def need(self, bits: int) -> None:
        while self.count < bits:
            if self.position >= len(self.data):
                if self.count:  # the last codes of a stream may be shorter than the longest code
                    return
                raise DeflateError("the deflate stream ends early")
            self.buffer |= self.data[self.position] << self.count
            self.position += 1
            self.count += 8

    def take(self, bits: int) -> int:
        self.need(bits)
        if self.count < bits:
            raise DeflateError("the deflate stream ends early")
        value = self.buffer & ((1 << bits) - 1)
        self.buffer >>= bits
        self.count -= bits
        return value

    def at(self) -> int:
        """Bits read so far."""
        return self.position * 8 - self.count

    def align(self) -> None:
        self.take(self.count % 8)


def _reverse(code: int, length: int) -> int:
    result = 0
    for _ in range(length):
        result = result << 1 | code & 1
        code >>= 1
    return result


def _canonical(lengths: tuple[int, ...] | list[int]) -> list[int]:
    """Each symbol's canonical code, bit-reversed for writing least significant bit first.
    Raises DeflateError if the lengths over-subscribe the code space."""
    counts = [0] * 16
    for length in lengths:
        counts[length] += 1
    counts[0] = 0
    room = 1
    for length in range(1, 16):
        room = (room << 1) - counts[length]
        if room < 0:
            raise DeflateError("Huffman code lengths over-subscribed")
    next_code, code = [0] * 16, 0
    for length in range(1, 16):
        code = (code + counts[length - 1]) << 1
        next_code[length] = code
    codes = [0] * len(lengths)
    for symbol, length in enumerate(lengths):
        if length:
            codes[symbol] = _reverse(next_code[length], length)
            next_code[length] += 1
    return codes


def _decoding_table(lengths: tuple[int, ...] | list[int]) -> tuple[list[int], int]:
    """A table indexed by the next ``bits`` input bits: ``symbol << 4 | length``, 0 where no code."""
    bits = max(lengths, default=0)
    table = [0] * (1 << bits)
    for symbol, (code, length) in enumerate(zip(_canonical(lengths), lengths)):
        if length:
            for index in range(code, 1 << bits, 1 << length):
                table[index] = symbol << 4 | length
    return table, bits


def _decode(reader: _Bits, table: list[int], bits: int) -> int:
    if not bits:
        raise DeflateError("a code is used that the block's header does not define")
    reader.need(bits)
    entry = table[reader.buffer & ((1 << bits) - 1)]
    length = entry & 15
    if not entry or length > reader.count:
        raise DeflateError("invalid Huffman code")
    reader.buffer >>= length
    reader.count -= length
    return entry >> 4


def _header_lengths(reader: _Bits) -> tuple[list[int], list[int]]:
    """A dynamic block's literal/length and distance code lengths."""
    literals, distances, code_lengths = reader.take(5) + 257, reader.take(5) + 1, reader.take(4) + 4
    if literals > 286 or distances > 30:
        raise DeflateError("a dynamic block declares too many codes")
    lengths_of_lengths = [0] * 19
    for index in range(code_lengths):
        lengths_of_lengths[CODE_LENGTH_ORDER[index]] = reader.take(3)
    table, bits = _decoding_table(lengths_of_lengths)
    lengths: list[int] = []
    while len(lengths) < literals + distances:
        symbol = _decode(reader, table, bits)
        if symbol < 16:
            lengths.append(symbol)
        elif symbol == 16:
            if not lengths:
                raise DeflateError("a repeat code with nothing to repeat")
            lengths += [lengths[-1]] * (3 + reader.take(2))
        else:
            lengths += [0] * (3 + reader.take(3) if symbol == 17 else 11 + reader.take(7))
    if len(lengths) != literals + distances:
        raise DeflateError("code lengths run past the declared count")
    if not lengths[END_OF_BLOCK]:
        raise DeflateError("a dynamic block has no end-of-block code")
    return lengths[:literals], lengths[literals:]


def _block_tokens(reader: _Bits, literal_lengths, distance_lengths) -> Iterator[int]:
    """The tokens of one coded block, up to its end-of-block code. The reader's state is kept in
    locals while the block is read (the inner loop is the device's cost: ~4-5 MB/s of content here)."""
    literal_table, literal_bits = _decoding_table(literal_lengths)
    distance_table, distance_bits = _decoding_table(distance_lengths)
    literal_mask, distance_mask = (1 << literal_bits) - 1, (1 << distance_bits) - 1
    data, position, buffer, count = reader.data, reader.position, reader.buffer, reader.count
    tokens, covered = 0, reader.covered
    limit = reader.limit if reader.limit is not None else 1 << 62
    try:
        while True:
            if covered >= limit:
                reader.stopped = True
                return
            if count < 48:  # a match takes at most 15 + 5 + 15 + 13 bits
                more = data[position:position + 6]
                buffer |= int.from_bytes(more, "little") << count
                position += len(more)
                count += 8 * len(more)
            entry = literal_table[buffer & literal_mask]
            bits = entry & 15
            if not entry or bits > count:
                raise DeflateError("invalid Huffman code, or the deflate stream ends early")
            buffer >>= bits
            count -= bits
            symbol = entry >> 4
            if symbol < 256:
                tokens += 1
                covered += 1
                yield symbol
                continue
            if symbol == END_OF_BLOCK:
                return
            symbol -= 257
            if symbol >= 29:
                raise DeflateError("invalid length code")
            extra = LENGTH_EXTRA[symbol]
            length = LENGTH_BASE[symbol] + (buffer & ((1 << extra) - 1))
            buffer >>= extra
            entry = distance_table[buffer & distance_mask]
            bits = entry & 15
            if not entry:
                raise DeflateError("invalid distance code")
            buffer >>= bits
            code = entry >> 4
            if code >= 30:
                raise DeflateError("invalid distance code")
            extra = DISTANCE_EXTRA[code]
            distance = DISTANCE_BASE[code] + (buffer & ((1 << extra) - 1))
            buffer >>= extra
            count -= LENGTH_EXTRA[symbol] + bits + extra
            if count < 0:
                raise DeflateError("the deflate stream ends early")
            tokens += 1
            covered += length
            yield length << 15 | distance - 1
    finally:
        reader.position, reader.buffer, reader.count = position, buffer, count
        reader.tokens, reader.covered = tokens, covered


def _walk(reader: _Bits, on_block: Callable[[Block], None]) -> Iterator[int]:
    """The tokens of the reader's stream (a stored block's bytes as literals), telling
    ``on_block`` each block's shape once it is read; with the reader's ``limit``, only until
    they cover that many content bytes (its ``covered`` then tells how many they did). Raises
    DeflateError."""
    stream, limit = reader.data, reader.limit
    while True:
        final, kind = reader.take(1), reader.take(2)
        if kind == STORED:
            reader.align()
            length, complement = reader.take(16), reader.take(16)
            if length != complement ^ 0xFFFF:
                raise DeflateError("a stored block's length check fails")
            start = reader.position - reader.count // 8  # bytes already in the buffer are the block's
            if start + length > len(stream):
                raise DeflateError("the deflate stream ends early")
            if limit is not None and reader.covered + length > limit:
                raise DeflateError("a stored block crosses the start of the shape's tail")
            yield from stream[start:start + length]
            reader.position, reader.buffer, reader.count = start + length, 0, 0
            reader.covered += length
            on_block(Block(STORED, bool(final), length))
        elif kind == FIXED:
            yield from _block_tokens(reader, FIXED_LENGTHS, FIXED_DISTANCES)
            if reader.stopped:
                return
            on_block(Block(FIXED, bool(final), reader.tokens))
        elif kind == DYNAMIC:
            start = reader.at()
            literal_lengths, distance_lengths = _header_lengths(reader)
            header_bits = reader.at() - start
            header = int.from_bytes(stream[start // 8:(reader.at() + 7) // 8], "little") >> start % 8
            yield from _block_tokens(reader, literal_lengths, distance_lengths)
            if reader.stopped:
                return
            on_block(Block(DYNAMIC, bool(final), reader.tokens, header & ((1 << header_bits) - 1), header_bits))
        else:
            raise DeflateError("block type 3 is reserved")
        if limit is not None and reader.covered >= limit:
            return
        if final:
            if (reader.at() + 7) // 8 != len(stream):
                raise DeflateError("bytes follow the final block")
            return


def blocks_of(stream: bytes) -> tuple[Block, ...]:
    """The blocks of a whole raw deflate stream. Raises DeflateError."""
    blocks: list[Block] = []
    for _ in _walk(_Bits(stream), blocks.append):
        pass
    return tuple(blocks)


def block_ends(stream: bytes) -> tuple[int, ...]:
    """Where the blocks of a whole raw deflate stream end, in bytes of its content: every block's
    but the last's. Raises DeflateError."""
    reader = _Bits(stream)
    ends: list[int] = []
    for _ in _walk(reader, lambda block: ends.append(reader.covered)):
        pass
    return tuple(ends[:-1])


def tokens(stream: bytes, on_block: Callable[[Block], None] = lambda block: None) -> Iterator[int]:
    """The tokens of a whole raw deflate stream, in order, telling ``on_block`` each block's
    shape once it is read. Raises DeflateError."""
    return _walk(_Bits(stream), on_block)


# --- writing ------------------------------------------------------------------------------------


def _length_symbols() -> list[tuple[int, int, int]]:
    """For each match length 0..258: (length symbol - 257, extra value, extra bits)."""
    table = [(0, 0, 0)] * 259
    for symbol in range(28, -1, -1):
        for length in range(LENGTH_BASE[symbol], LENGTH_BASE[symbol] + (1 << LENGTH_EXTRA[symbol])):
            if length <= 258 and table[length] == (0, 0, 0):
                table[length] = (symbol, length - LENGTH_BASE[symbol], LENGTH_EXTRA[symbol])
    return table


def _distance_symbols() -> bytes:
    table = bytearray(32768)
    for symbol in range(30):
        start = DISTANCE_BASE[symbol] - 1
        table[start:start + (1 << DISTANCE_EXTRA[symbol])] = bytes([symbol]) * (1 << DISTANCE_EXTRA[symbol])
    return bytes(table)


_LENGTH_SYMBOLS = _length_symbols()  # length 258 is symbol 285, as every encoder writes it
_DISTANCE_SYMBOLS = _distance_symbols()  # by distance - 1


class _Writer:
    __slots__ = ("out", "buffer", "count")

    def __init__(self) -> None:
        self.out, self.buffer, self.count = bytearray(), 0, 0

    def put(self, value: int, bits: int) -> None:
        self.buffer |= value << self.count
        self.count += bits
        while self.count >= 64:
            self.out += (self.buffer & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
            self.buffer >>= 64
            self.count -= 64

    def align(self) -> None:
        self.put(0, -self.count % 8)

    def take(self) -> bytes:
        """The whole bytes written so far (the bits of a partial byte stay)."""
        whole = self.count // 8
        self.out += (self.buffer & ((1 << 8 * whole) - 1)).to_bytes(whole, "little")
        self.buffer >>= 8 * whole
        self.count -= 8 * whole
        done, self.out = bytes(self.out), bytearray()
        return done


def _coded_block(writer: _Writer, tokens: Iterator[int], count: int, literal_lengths, distance_lengths) -> int:
    """Writes ``count`` tokens in the block's codes, then end-of-block; the content bytes they cover."""
    literal_codes, distance_codes = _canonical(literal_lengths), _canonical(distance_lengths)
    literal = [(literal_codes[s], literal_lengths[s]) for s in range(len(literal_lengths))]
    # Each match length's whole bit string: its symbol's code, then its extra bits.
    lengths = [(0, 0)] * 3
    for length in range(3, 259):
        symbol, extra, extra_bits = _LENGTH_SYMBOLS[length]
        code, code_bits = literal[257 + symbol] if 257 + symbol < len(literal) else (0, 0)
        lengths.append((code | extra << code_bits, code_bits + extra_bits) if code_bits else (0, 0))
    distance = [(distance_codes[s], distance_lengths[s]) for s in range(len(distance_lengths))]
    out, buffer, bits_held = writer.out, writer.buffer, writer.count  # the writer's state, in locals
    covered = 0
    for token in islice(tokens, count):
        if token < 256:
            code, bits = literal[token]
            covered += 1
        else:
            code, bits = lengths[token >> 15]
            covered += token >> 15
            symbol = _DISTANCE_SYMBOLS[token & 0x7FFF]
            distance_code, distance_bits = distance[symbol] if symbol < len(distance) else (0, 0)
            if not distance_bits:
                raise DeflateError("the shape's codes cannot write this content")
            code |= (distance_code | ((token & 0x7FFF) + 1 - DISTANCE_BASE[symbol]) << distance_bits) << bits
            bits += distance_bits + DISTANCE_EXTRA[symbol]
        if not bits:
            raise DeflateError("the shape's codes cannot write this content")
        buffer |= code << bits_held
        bits_held += bits
        if bits_held >= 64:
            out += (buffer & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
            buffer >>= 64
            bits_held -= 64
        count -= 1
    if count:
        raise DeflateError("the content has fewer tokens than the shape")
    writer.buffer, writer.count = buffer, bits_held
    code, bits = literal[END_OF_BLOCK]
    writer.put(code, bits)
    return covered


def rebuild(shape: Shape, stream: bytes, content: bytes) -> Iterator[bytes]:
    """The deflate stream of ``shape`` over the tokens of ``stream`` (zlib's deflate of
    ``content``), piece by piece. A stored block takes its bytes from ``content`` and skips the
    tokens that cover them. Raises DeflateError where tokens and shape do not fit together."""
    end = len(content) - sum(_covers(t) for t in shape.tail)
    if end < 0:
        raise DeflateError("the shape's tail covers more than the content")
    reader = _Bits(stream, end)
    tokens = chain(_walk(reader, lambda block: None), _tail_after(reader, end, shape.tail))
    writer = _Writer()
    position = 0
    for block in shape.blocks:
        writer.put(int(block.final) | block.kind << 1, 3)
        if block.kind == STORED:
            if position + block.count > len(content):
                raise DeflateError("a stored block runs past the content")
            covered = 0
            while covered < block.count:
                token = next(tokens, None)
                if token is None:
                    raise DeflateError("the content has fewer tokens than the shape")
                covered += 1 if token < 256 else token >> 15
            if covered != block.count:
                raise DeflateError("a stored block does not end where a token ends")
            writer.align()
            writer.put(block.count | (block.count ^ 0xFFFF) << 16, 32)
            yield writer.take()
            yield content[position:position + block.count]
            position += block.count
            continue
        if block.kind == FIXED:
            literal_lengths, distance_lengths = FIXED_LENGTHS, FIXED_DISTANCES
        else:
            writer.put(block.header, block.header_bits)
            literal_lengths, distance_lengths = _header_lengths(_Bits(_bits_bytes(block.header, block.header_bits)))
        position += _coded_block(writer, tokens, block.count, literal_lengths, distance_lengths)
        yield writer.take()
    if next(tokens, None) is not None:
        raise DeflateError("the content has more tokens than the shape")
    writer.align()
    yield writer.take()


def _covers(token: int) -> int:
    return 1 if token < 256 else token >> 15


def _tail_after(reader: _Bits, end: int, tail: tuple[int, ...]) -> Iterator[int]:
    """The tail, once the reader's tokens stopped exactly at ``end``."""
    if reader.covered != end:
        raise DeflateError("the shape's tail does not start where a token ends")
    yield from tail


def find_tail(original: Iterator[int], rebuilt: Iterator[int]) -> tuple[int, ...] | None:
    """``original``'s tokens from the first one where ``rebuilt``'s differ (or end), or None if
    more than ``MAX_TAIL_TOKENS`` differ. Memory: the tail only."""
    for mine in original:
        if mine != next(rebuilt, None):
            tail = [mine]
            for token in original:
                if len(tail) >= MAX_TAIL_TOKENS:
                    return None
                tail.append(token)
            return tuple(tail)
    return ()


def _bits_bytes(value: int, bits: int) -> bytes:
    return value.to_bytes((bits + 7) // 8, "little")


# --- the shape as bytes (a gzip recipe's ``blocks``) -------------------------------------------


def shape_to_bytes(shape: Shape) -> bytes:
    out = bytearray(varint.encode(len(shape.blocks)))
    for block in shape.blocks:
        out.append(block.kind | block.final << 2)
        out += varint.encode(block.count)
        if block.kind == DYNAMIC:
            out += varint.encode(block.header_bits) + _bits_bytes(block.header, block.header_bits)
    out += varint.encode(len(shape.tail))
    for token in shape.tail:
        out += varint.encode(token)
    return bytes(out)


def shape_from_bytes(data: bytes) -> Shape:
    """Parses and checks a shape: known block types, only the last one final, dynamic headers
    that decode to valid code lengths and use exactly their bits, valid tail tokens, no bytes
    after. Raises DeflateError."""
    numbers = varint.Reader(data, DeflateError, "a block shape")
    blocks: list[Block] = []
    for _ in range(numbers.number(MAX_BLOCKS)):
        flags = data[numbers.position] if numbers.position < len(data) else 0xFF
        numbers.position += 1
        kind, final = flags & 3, bool(flags & 4)
        if flags & ~7 or kind == 3:
            raise DeflateError("a block shape is truncated or has an unknown block type")
        count = numbers.number(0xFFFF if kind == STORED else 1 << 24)
        header = header_bits = 0
        if kind == DYNAMIC:
            header_bits = numbers.number(MAX_HEADER_BITS)
            size = (header_bits + 7) // 8
            if numbers.position + size > len(data):
                raise DeflateError("a block shape is truncated")
            header = int.from_bytes(data[numbers.position:numbers.position + size], "little")
            numbers.position += size
            if header >> header_bits:
                raise DeflateError("a dynamic header has bits beyond its length")
            reader = _Bits(_bits_bytes(header, header_bits))
            _header_lengths(reader)
            if reader.at() != header_bits:
                raise DeflateError("a dynamic header's length does not match its code lengths")
        blocks.append(Block(kind, final, count, header, header_bits))
    if not blocks or [b.final for b in blocks] != [False] * (len(blocks) - 1) + [True]:
        raise DeflateError("a block shape must end with its final block, and only there")
    tail = []
    for _ in range(numbers.number(MAX_TAIL_TOKENS)):
        token = numbers.number(258 << 15 | 0x7FFF)
        if token >= 256 and not 3 <= token >> 15 <= 258:
            raise DeflateError("a tail token is neither a byte nor a match")
        tail.append(token)
    if numbers.position != len(data):
        raise DeflateError("bytes follow a block shape")
    return Shape(tuple(blocks), tuple(tail))
