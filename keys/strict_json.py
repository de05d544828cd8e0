"""Strict JSON for signed documents: one canonical serialisation, a parser that refuses ambiguity.

Signatures cover exact bytes, so verification never depends on re-serialising; canonical output
only makes documents reproducible and diffs readable. The parser refuses what two JSON parsers
could read differently (duplicate keys, NaN, non-UTF-8) and what cannot be a valid value of
ours (floats; booleans where integers are expected - Python's ``True`` is an ``int``).
"""

from __future__ import annotations

import json
from typing import Any


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


def loads(data: bytes, *, limit: int) -> dict[str, Any]:
    """Parse a JSON object from UTF-8 bytes. Raises JSONShapeError."""
    if len(data) > limit:
        raise JSONShapeError(f"document is {len(data)} bytes, larger than the {limit}-byte limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JSONShapeError(f"not UTF-8 (byte {error.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                           parse_float=_no_float, parse_int=_bounded_int)
    except RecursionError:
        raise JSONShapeError("nested too deeply") from None
    except json.JSONDecodeError as error:
        raise JSONShapeError(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if not isinstance(value, dict):
        raise JSONShapeError("the document must be a JSON object")
    return value


def dumps(value: dict[str, Any]) -> bytes:
    """Canonical form: sorted keys, two-space indent, UTF-8, final newline."""
    return (json.dumps(value, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def field(obj: dict[str, Any], name: str, kind: type, *, context: str) -> Any:
    """Read a required field of an exact type (``int`` excludes ``bool``)."""
    if name not in obj:
        raise JSONShapeError(f"{context}: missing field {name!r}")
    value = obj[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise JSONShapeError(f"{context}: field {name!r} must be {kind.__name__}, "
                             f"not {type(value).__name__}")
    return value
