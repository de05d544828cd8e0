"""Text for people from names we do not control: printable on any terminal, and inert there.

A path the tools are given or find on a stick may hold bytes that are not UTF-8 (a FAT volume
label in a legacy code page): Python carries them as surrogate escapes, which no encoder
accepts, so printing one would crash the command after it had decided - or done - its work.
They are shown as ``\\xNN`` instead.

A name may also hold control characters: an ESC sequence in a file name on a forged stick would
otherwise drive the technician's terminal (move the cursor, rewrite or hide earlier lines, set
the window title...). C0 controls, DEL and C1 controls are shown as ``\\xNN`` too, except
newline and tab, which our own multi-line messages use.

This module sits in ``keys/`` (the lowest layer, docs/adr/0001-package-layout.md) so that the
commands of both sides print through it: ``root verify`` (agent/cli/root.py), the agent's
other commands and the error reports of both command lines (agent/cli/errors.py).
"""

from __future__ import annotations

import re
import sys

import click

# C0 but tab (\x09) and newline (\x0a), DEL, C1. C1 matters beyond UTF-8 terminals: in Latin-1,
# U+009B encodes to the byte 0x9B, which an 8-bit terminal reads as CSI.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(match: re.Match) -> str:
    return f"\\x{ord(match.group()):02x}"


def printable(text: str, encoding: str = "utf-8") -> str:
    """``text`` as ``encoding`` can hold it and a terminal shows it literally: a name's
    undecodable bytes (surrogate escapes) and control characters but newline and tab as
    ``\\xNN``, any other character the encoding lacks as a backslash escape. Never raises."""
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the name's bytes, as they were on disk
    except UnicodeEncodeError:  # a surrogate no file name produced (a JSON "\ud800" escape)
        raw = text.encode("utf-8", "backslashreplace")
    text = _CONTROL.sub(_escape, raw.decode("utf-8", "backslashreplace"))
    return text if encoding.lower().replace("-", "") == "utf8" else \
        text.encode(encoding, "backslashreplace").decode(encoding)


def printable_data(value):
    """A JSON-like value with every string (keys included) made :func:`printable` in UTF-8, so
    that JSON output holds no lone surrogate, which strict parsers refuse."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(str(k)): printable_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_data(v) for v in value]
    return value


def echo(text: str, *, err: bool = False) -> None:
    """click.echo of text that cannot fail to encode, whatever the stream's encoding."""
    stream = sys.stderr if err else sys.stdout
    click.echo(printable(text, getattr(stream, "encoding", None) or "utf-8"), err=err)
