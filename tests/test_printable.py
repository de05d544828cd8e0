"""Names we do not control are printed literally: no crash on bytes that are not UTF-8, and no
control character reaches the terminal (keys/printable.py). A stick's names and a signer's
trusted comment are such names; an ESC sequence among them must not drive the technician's
terminal."""

from __future__ import annotations

import os
import subprocess

import pytest

from agent.cli import errors as cli_errors
from keys import printable as module
from keys.printable import printable, printable_data
from tests.sim.tools import BIN

# What an attacker would put in a name: clear the screen, set the window title, hide the cursor.
CLEAR_SCREEN = "\x1b[2J\x1b[H"
TITLE = "\x1b]0;all good\x07"


@pytest.mark.parametrize("text, shown", [
    (f"stick{CLEAR_SCREEN}", "stick\\x1b[2J\\x1b[H"),
    (f"stick{TITLE}", "stick\\x1b]0;all good\\x07"),
    ("line\rover", "line\\x0dover"),  # a carriage return would overwrite what came before
    ("nul\x00 bs\x08 ff\x0c vt\x0b", "nul\\x00 bs\\x08 ff\\x0c vt\\x0b"),
    ("del\x7f", "del\\x7f"),
    ("csi\x9b2J nel\x85", "csi\\x9b2J nel\\x85"),  # C1: U+009B is CSI on an 8-bit terminal
])
def test_control_characters_are_escaped(text, shown):
    assert printable(text) == shown


def test_newline_and_tab_stay_for_our_own_multi_line_messages():
    assert printable("refused: a\n  hint: b\tc") == "refused: a\n  hint: b\tc"


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "ascii", "cp437"])
def test_no_control_character_survives_any_encoding(encoding):
    every = "".join(chr(c) for c in range(0x100)) + os.fsdecode(b"\x1b\x9b\xff")
    shown = printable(every, encoding)
    controls = {*range(0x00, 0x20), 0x7f, *range(0x80, 0xa0)} - {0x09, 0x0a}
    assert not controls & {ord(c) for c in shown}
    shown.encode(encoding)  # and it never fails to print


def test_undecodable_bytes_that_would_be_controls_are_shown_as_bytes():
    """0x9B alone is not UTF-8: it is shown as the byte it is, never passed through."""
    assert printable(os.fsdecode(b"a\x9b\x1bz")) == "a\\x9b\\x1bz"


def test_printable_data_escapes_controls_in_keys_and_values():
    assert printable_data({"k\x1b": ["v\x07", 1]}) == {"k\\x1b": ["v\\x07", 1]}


def test_the_agent_uses_the_same_helper():
    """keys/ is the lowest layer (docs/adr/0001-package-layout.md); the agent's error reports and
    audit log print through it."""
    from agent import audit
    assert (cli_errors.echo, audit.printable, audit.printable_data) == \
        (module.echo, module.printable, module.printable_data)


def test_a_refusal_naming_an_escape_sequence_prints_it_inert(tmp_path):
    """The real bundle-agent refusing a file whose folder name holds ESC sequences: the refusal
    names it, escaped, on a strict UTF-8 stream."""
    folder = tmp_path / f"stick{CLEAR_SCREEN}{TITLE}"
    folder.mkdir()
    (folder / "root.json").write_bytes(b"{}")
    result = subprocess.run([str(BIN / "bundle-agent"), "root", "verify", str(folder / "root.json")],
                            capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"}, timeout=60)
    assert result.returncode == 3, result.stderr
    assert b"stick\\x1b[2J\\x1b[H\\x1b]0;all good\\x07/root.json: not a valid trust root" in result.stderr
    assert not {0x1b, 0x07} & set(result.stdout + result.stderr)
