"""Strict JSON for signed documents: one canonical serialisation, a parser that refuses ambiguity.

Signatures cover exact bytes, so verification never depends on re-serialising; canonical output
only makes documents reproducible and diffs readable. The parser refuses what two JSON parsers
could read differently (duplicate keys, NaN, non-UTF-8) and what cannot be a valid value of
ours (floats; booleans where integers are expected - Python's ``True`` is an ``int``).

Large arrays can be left in the text (``lazy``) and read one element at a time by the caller,
which turns each into a compact object (T-EXHAUST). Read whole, JSON costs ~10 bytes per byte as
dicts and strings and up to ~20 as lists (``[[],[],...]``): a 32 MiB document could take 600 MiB.
"""

from __future__ import annotations

import io
import json
import re
from json.decoder import scanstring
from typing import Any, Iterator

KeyPath = tuple[str, ...]  # keys from the document's root to a value; "*" stands for any array index
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, exactly what the json module skips
MAX_VALUES = 1 << 16  # read by hand at once by a lazy parse: ~10 MiB at most (see _Reader)
WINDOW = 1 << 20  # characters the json module reads at once in a lazy parse: ~20 MiB at most
# UTF-8 lead bytes of characters that make a str 2 (U+0100..U+FFFF) or 4 bytes per character.
_BEYOND_LATIN1 = re.compile(rb"[\xc4-\xef]")
_BEYOND_BMP = re.compile(rb"[\xf0-\xf4]")
_CONTINUATION = bytes(range(0x80, 0xc0))  # the bytes of UTF-8 that start no character


class JSONShapeError(ValueError):
    """Raised by the parser and the field readers; callers wrap it in their own error type."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JSONShapeError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise JSONShapeError(f"{name} is not allowed")


def _bounded_int(text: str) -> int:
    # Nothing we store exceeds 2**63; a huge literal would otherwise cost quadratic time or raise
    # CPython's own ValueError (over 4300 digits).
    if len(text.lstrip("-")) > 20:
        raise JSONShapeError(f"integer literal of {len(text)} characters is out of range")
    return int(text)


def _no_float(text: str) -> Any:
    raise JSONShapeError(f"non-integer number {text} is not allowed")


def decode(data: bytes, *, limit: int) -> str:
    """The document's text. Raises JSONShapeError: more than ``limit`` bytes, more than ``limit``
    bytes as text in memory, or not UTF-8.

    CPython stores a str at 1, 2 or 4 bytes per character, as its widest character needs (PEP 393):
    one emoji makes a 10 MB ASCII document 40 MB of text, and its strings up to 4 times their
    bytes too. So the limit also holds for the text's size in memory, worked out before decoding.
    """
    if len(data) > limit:
        raise JSONShapeError(f"document is {len(data)} bytes, larger than the {limit}-byte limit")
    width = 4 if _BEYOND_BMP.search(data) else 2 if _BEYOND_LATIN1.search(data) else 1
    characters = len(data) if width == 1 else len(data.translate(None, _CONTINUATION))
    if characters * width > limit:
        raise JSONShapeError(f"document's text is {characters} characters of {width} bytes in memory, "
                             f"more than the {limit}-byte limit")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONShapeError(f"not UTF-8 (byte {error.start})") from None


def loads(data: bytes, *, limit: int, lazy: frozenset[KeyPath] = frozenset()) -> dict[str, Any]:
    """Parse a JSON object from UTF-8 bytes (see ``parse``). Raises JSONShapeError."""
    return parse(decode(data, limit=limit), lazy=lazy)


def parse(text: str, *, lazy: frozenset[KeyPath] = frozenset()) -> dict[str, Any]:
    """Parse a JSON object; an array at a path in ``lazy`` becomes a LazyArray. Raises JSONShapeError.

    The whole text is checked here, lazy arrays included: a syntax error anywhere is found before
    the caller converts anything.
    """
    try:
        if not lazy:
            value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                               parse_float=_no_float, parse_int=_bounded_int)
        else:
            if text.startswith("\ufeff"):  # what json.loads does first
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
            reader = _Reader(text, lazy)
            value, end = reader.value(reader.skip(0), ())
            end = reader.skip(end)
            if end != len(text):
                raise json.JSONDecodeError("Extra data", text, end)
    except RecursionError:
        raise JSONShapeError("nested too deeply") from None
    except json.JSONDecodeError as error:
        raise JSONShapeError(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(value, dict):
        raise JSONShapeError("the document must be a JSON object")
    return value


class LazyArray:
    """An array of a parsed document, still in its text: each iteration parses its elements one at a
    time, so only the element being converted exists as dicts and lists. ``field`` reads it as a list."""

    __slots__ = ("_reader", "_start", "_path", "_length")

    def __init__(self, reader: "_Reader", start: int, path: KeyPath, length: int):
        self._reader, self._start, self._path, self._length = reader, start, path, length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Any]:
        # The text was checked when the document was parsed and is parsed the same way again.
        yield from self._reader.elements(self._start, self._path)


class _Reader:
    """Reads a document down to its lazy arrays by hand, with the json module's scanners for strings
    and numbers: the same grammar, whitespace, messages and refusals as ``json.loads``.

    What bounds memory: the json module builds a whole value before anyone can look at it, and a
    value can cost ~20 bytes per byte of text (``[[],[],...]``). So it only ever reads one element
    of a lazy array from a window of at most WINDOW characters of the text; a value read by hand
    (the document outside its lazy arrays, or an element too long for a window) is counted as it is
    built and refused beyond MAX_VALUES.
    """

    def __init__(self, text: str, lazy: frozenset[KeyPath]):
        self.text = text
        self.lazy = lazy
        self.above_lazy = {path[:depth] for path in lazy for depth in range(len(path))}
        self.scan = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                                     parse_float=_no_float, parse_int=_bounded_int).scan_once
        self.left = MAX_VALUES  # values still allowed by hand
        self.window = 256  # characters tried for the next element: twice the last one's length

    def skip(self, index: int) -> int:
        return _WHITESPACE.match(self.text, index).end()

    def value(self, index: int, path: KeyPath | None) -> tuple[Any, int]:
        """The value at ``index`` (no whitespace before it), by hand, and the index just after it.
        ``path`` is None where nothing below is lazy."""
        self.left -= 1
        if self.left < 0:
            raise JSONShapeError(f"more than {MAX_VALUES} values outside the arrays read one element at a time, "
                                 "or in one of their elements")
        text = self.text
        opening = text[index:index + 1]
        if opening == '"':
            return scanstring(text, index + 1, True)
        if opening == "{":
            return self.object(index, path if path in self.above_lazy else None)
        if opening == "[" and path in self.lazy:
            elements, length = self.elements(index, path), 0
            while True:  # read every element now, so the whole text is checked; keep none
                try:
                    next(elements)
                except StopIteration as done:
                    return LazyArray(self, index, path, length), done.value
                length += 1
        if opening == "[":
            elements, kept = self.elements(index, path if path in self.above_lazy else None), []
            while True:
                try:
                    kept.append(next(elements))
                except StopIteration as done:
                    return kept, done.value
        try:
            return self.scan(text, index)  # a number, true, false or null
        except StopIteration as stop:
            raise json.JSONDecodeError("Expecting value", text, stop.value) from None

    def element(self, index: int, path: KeyPath) -> tuple[Any, int]:
        """One element of a lazy array: by the json module from a window of the text if it fits, else by
        hand. The window's own text decides: a value that ends before the window does reads the same."""
        text, window = self.text, self.window
        while window <= WINDOW:
            piece = text[index:index + window]
            try:
                value, end = self.scan(piece, 0)
                if end < len(piece) or index + end == len(text):
                    self.window = min(max(256, 2 * end), WINDOW)
                    return value, index + end
            except (StopIteration, ValueError, RecursionError):
                pass  # cut short by the window, or an error that reading by hand reports with its place
            if index + len(piece) == len(text):
                break
            window *= 8
        self.left = MAX_VALUES
        return self.value(index, path)

    def elements(self, index: int, path: KeyPath | None) -> Iterator[Any]:
        """Yield the elements of the array at ``index``; returns the index just after it."""
        text, lazy = self.text, path is not None and path in self.lazy
        element, left = None if path is None else path + ("*",), self.left
        index = self.skip(index + 1)
        if text.startswith("]", index):
            return index + 1
        while True:
            value, index = self.element(index, element) if lazy else self.value(index, element)
            yield value
            index = self.skip(index)
            if text.startswith("]", index):
                if lazy:
                    self.left = left  # an element's count was its own
                return index + 1
            if not text.startswith(",", index):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
            index = self.skip(index + 1)

    def object(self, index: int, path: KeyPath | None) -> tuple[dict[str, Any], int]:
        text, result = self.text, {}
        index = self.skip(index + 1)
        if text.startswith("}", index):
            return result, index + 1
        while True:
            if not text.startswith('"', index):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, index)
            key, index = scanstring(text, index + 1, True)
            index = self.skip(index)
            if not text.startswith(":", index):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, index)
            value, index = self.value(self.skip(index + 1), None if path is None else path + (key,))
            if key in result:
                raise JSONShapeError(f"duplicate key {key!r}")
            result[key] = value
            index = self.skip(index)
            if text.startswith("}", index):
                return result, index + 1
            if not text.startswith(",", index):
                raise json.JSONDecodeError("Expecting ',' delimiter", text, index)
            index = self.skip(index + 1)


def dumps(value: dict[str, Any]) -> bytes:
    """Canonical form: sorted keys, two-space indent, UTF-8, final newline.

    Encoded as the pieces come: json.dumps with an indent collects every piece (a few bytes
    each) in one list before joining them, which for a manifest at the entry limit held 150 MiB
    more than the text it makes."""
    out = io.BytesIO()
    pieces: list[str] = []
    for piece in _CANONICAL.iterencode(value):
        pieces.append(piece)
        if len(pieces) == _PIECES_AT_ONCE:
            out.write("".join(pieces).encode("utf-8"))
            pieces.clear()
    pieces.append("\n")
    out.write("".join(pieces).encode("utf-8"))
    return out.getvalue()


_CANONICAL = json.JSONEncoder(sort_keys=True, indent=2, ensure_ascii=False)
_PIECES_AT_ONCE = 4096


def field(obj: dict[str, Any], name: str, kind: type, *, context: str) -> Any:
    """Read a required field of an exact type (``int`` excludes ``bool``; a LazyArray is a ``list``)."""
    if name not in obj:
        raise JSONShapeError(f"{context}: missing field {name!r}")
    value = obj[name]
    if kind is list and isinstance(value, LazyArray):
        return value
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise JSONShapeError(f"{context}: field {name!r} must be {kind.__name__}, "
                             f"not {type(value).__name__}")
    return value
