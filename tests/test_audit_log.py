"""The audit log stays bounded whatever a stick makes it record (T-LOG, docs/AGENT.md "The audit log").

Rotation: a log that would pass its bound is renamed to ``audit.log.1`` and a new one started, so
at most two files exist and the newest records are always kept. One record: strings and lists
are shortened until the line fits MAX_RECORD_BYTES. Names that are not UTF-8 are stored as
``\\xNN``, so every line is JSON that any parser accepts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.audit import MAX_LOG_BYTES, MAX_RECORD_BYTES, AuditLog, format_record, part_size
from agent.config import DEFAULT_KEEP_BYTES, MIN_KEEP_BYTES
from keys.printable import printable, printable_data


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _records(log: AuditLog) -> list[dict]:
    """Every record the log still keeps, the rotated file's first; a torn line as ``unreadable-line``."""
    records = []
    for path in (log.rotated_path, log.path):
        for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else []:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                records.append({"event": "unreadable-line", "text": line})
    return records


# --- rotation -----------------------------------------------------------------------------------------------


def test_a_record_is_one_fsynced_json_line(tmp_path):
    log = AuditLog(tmp_path / "state/audit.log")
    log.record("refused-medium", source="/media/stick", refused=[{"source": "0123456789abcdef", "reason": "no"}])
    [record] = _lines(log.path)
    assert record["event"] == "refused-medium" and record["source"] == "/media/stick"
    assert record["refused"] == [{"source": "0123456789abcdef", "reason": "no"}] and record["time"].endswith("Z")


def test_the_log_rotates_and_stays_bounded(tmp_path):
    log = AuditLog(tmp_path / "audit.log", max_bytes=4096)
    for number in range(1000):
        log.record("examined", number=number, source="x" * 100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1"]  # never a third file
    assert log.path.stat().st_size <= 4096 and log.rotated_path.stat().st_size <= 4096
    numbers = [r["number"] for r in _records(log)]
    assert numbers[-1] == 999, "the newest record is kept"
    assert numbers == list(range(numbers[0], 1000)), "the two files hold the newest records, in order, none lost"


def test_a_record_that_would_pass_the_bound_starts_the_new_log(tmp_path):
    log = AuditLog(tmp_path / "audit.log", max_bytes=1024)
    log.record("first", text="a" * 600)
    log.record("second", text="b" * 600)
    assert [r["event"] for r in _lines(log.rotated_path)] == ["first"]
    assert [r["event"] for r in _lines(log.path)] == ["second"]


def test_a_torn_last_line_is_kept_apart_from_the_next(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    log.path.write_bytes(b'{"event": "stag')  # a power cut mid-line
    log.record("examined")
    assert log.path.read_text().splitlines()[1].startswith('{"event": "examined"')
    assert [r["event"] for r in _records(log)] == ["unreadable-line", "examined"]


def test_the_default_bounds():
    """4 MiB per file, 16 MiB in all on a device ([log] keep_bytes): a forged stick costs at most
    one record of 16 KiB per insertion."""
    assert MAX_LOG_BYTES == 4 << 20 and MAX_RECORD_BYTES == 16 << 10
    assert MAX_LOG_BYTES // MAX_RECORD_BYTES >= 256
    assert DEFAULT_KEEP_BYTES == 16 << 20 and part_size(DEFAULT_KEEP_BYTES) == MAX_LOG_BYTES
    assert part_size(MIN_KEEP_BYTES) >= 2 * MAX_RECORD_BYTES  # the smallest part holds whole records


def test_a_log_that_cannot_be_written_is_reported_not_raised(tmp_path, capsys):
    (tmp_path / "state").write_text("a file where the state directory should be")
    AuditLog(tmp_path / "state/audit.log").record("refused-medium", source="/media/stick")
    assert "warning: audit log" in capsys.readouterr().err


# --- one record ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("details", [
    {"reason": "x" * (1 << 20)},  # one huge string
    {"refused": [{"source": f"{n:016x}", "reason": "signed by 0 of 2 " * 20} for n in range(2000)]},  # many
    {"decisions": [[["deep" * 100] * 50] * 50] * 50},  # nested lists
    {f"key-{n}": n for n in range(5000)},  # many keys
])
def test_one_record_is_bounded(details):
    line = format_record("refused-medium", details)
    assert len(line.encode("utf-8")) <= MAX_RECORD_BYTES and line.endswith("\n")
    record = json.loads(line)
    assert record["event"] == "refused-medium"


def test_a_shortened_record_says_what_it_left_out():
    record = json.loads(format_record("refused-medium", {"refused": [{"reason": "r" * 5000}] * 100}))
    # 64 reasons of 1 KiB do not fit 16 KiB; 16 reasons of 256 characters do.
    assert len(record["refused"]) == 17 and record["refused"][-1] == "... and 84 more"
    assert record["refused"][0]["reason"] == "r" * 256 + "... (4744 more characters)"


def test_an_ordinary_record_is_not_shortened():
    details = {"refused": [{"source": f"{n:016x}", "reason": "signed by 0 of 2 required release signers"}
                           for n in range(64)]}
    assert json.loads(format_record("refused-medium", details))["refused"] == details["refused"]


# --- names that are not UTF-8 ---------------------------------------------------------------------------------


def test_a_name_that_is_not_utf_8_is_logged_printable(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    stick = Path(os.fsdecode(b"/media/stick-\xe9"))  # how Python carries a Latin-1 mount point
    log.record("refused-medium", source=stick, reason=f"{stick}: refused", **{os.fsdecode(b"k\xff"): 1})
    text = log.path.read_bytes().decode("utf-8")  # strict: no raw byte, no lone surrogate
    assert "\\ud" not in text
    [record] = _lines(log.path)
    assert record["source"] == "/media/stick-\\xe9" and record["reason"] == "/media/stick-\\xe9: refused"
    assert record["k\\xff"] == 1


@pytest.mark.parametrize("text, encoding, shown", [
    (os.fsdecode(b"stick-\xe9"), "utf-8", "stick-\\xe9"),
    ("caf\u00e9", "utf-8", "caf\u00e9"),  # real Unicode stays as it is
    ("caf\u00e9", "ascii", "caf\\xe9"),  # unless the terminal cannot show it
    ("a\ud800b", "utf-8", "a\\ud800b"),  # a surrogate no file name makes (a JSON escape)
    ("cafe\u0301 " + os.fsdecode(b"\xff"), "latin-1", "cafe\\u0301 \\xff"),
])
def test_printable(text, encoding, shown):
    assert printable(text, encoding) == shown
    printable(text, encoding).encode(encoding)  # never raises


def test_printable_data_reaches_keys_and_nested_values():
    name = os.fsdecode(b"\xe9")
    assert printable_data({name: [name, {"k": (name, 1, None, True)}]}) == \
        {"\\xe9": ["\\xe9", {"k": ["\\xe9", 1, None, True]}]}
