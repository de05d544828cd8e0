"""The audit log: every decision with its reason, one JSON object per line, fsync'd.

Times are recorded for people reading the log; no decision ever depends on them (there is no
trustworthy clock on the device).

The log is bounded (T-LOG): a stick decides what gets logged, so neither one record nor the log
may grow with what a stick carries. A record's strings and lists are shortened to fit
MAX_RECORD_BYTES, and a log that would pass its part size is renamed to ``audit.log.1`` (the
older parts moving up to ``.2``, ``.3``...) before the next line starts a new log. The oldest
parts are removed so that all of them together, the live log counted at its full part size, stay
within ``keep_bytes`` (``[log] keep_bytes``, agent/config.py): the newest records are always
kept. Strings are stored printable (a path's bytes that are not UTF-8 as ``\\xNN``), so every
line is JSON any parser accepts. Every record also goes to the system log (agent/system_log.py).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from agent import system_log
from keys.crashpoint import crashpoint
from keys.files import fsync_directory
from keys.printable import printable, printable_data

MAX_LOG_BYTES = 4 << 20  # per file; thousands of installs' worth of ordinary records
MAX_RECORD_BYTES = 16 << 10  # one line: a whole stick's refusals and decisions, shortened if need be
ROTATED_SUFFIX = ".1"

# Ever tighter bounds for a record's strings and lists, tried in turn until the line fits.
_SHORTENINGS = ((1024, 64), (256, 16), (64, 4))


def _shortened(value, text: int, items: int):
    """``value`` with strings cut to ``text`` characters and lists and mappings to ``items`` entries,
    each cut saying how much it left out."""
    if isinstance(value, str):
        return value if len(value) <= text else f"{value[:text]}... ({len(value) - text} more characters)"
    if isinstance(value, dict):
        kept = {k: _shortened(v, text, items) for k, v in list(value.items())[:items]}
        if len(value) > items:
            kept["..."] = f"{len(value) - items} more"
        return kept
    if isinstance(value, list):
        kept = [_shortened(v, text, items) for v in value[:items]]
        return kept + [f"... and {len(value) - items} more"] if len(value) > items else kept
    return value


def format_record(event: str, details: dict, when: float | None = None) -> str:
    """The line for one record (newline included), at most MAX_RECORD_BYTES bytes."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    # default=str first, so that paths and other objects are strings when they are made printable.
    details = printable_data(json.loads(json.dumps(details, default=str)))
    line = ""
    for text, items in _SHORTENINGS:
        line = json.dumps({"time": stamp, "event": printable(event), **_shortened(details, text, items)},
                          sort_keys=True) + "\n"
        if len(line) <= MAX_RECORD_BYTES:
            return line
    # Still too large (a great many keys): keep what happened, and say that the rest was dropped.
    return json.dumps({"time": stamp, "event": printable(event)[:256], "truncated": len(line)}, sort_keys=True) + "\n"


def part_size(keep_bytes: int) -> int:
    """The size at which the live log is rotated: a quarter of what is kept (so at least three
    older parts remain after a rotation), at most MAX_LOG_BYTES."""
    return max(2 * MAX_RECORD_BYTES, min(MAX_LOG_BYTES, keep_bytes // 4))


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES, keep_bytes: int | None = None):
        """``max_bytes``: one part's bound; ``keep_bytes``: all parts together (default two parts,
        the live log and ``audit.log.1``)."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep_bytes = 2 * max_bytes if keep_bytes is None else keep_bytes

    @classmethod
    def kept_within(cls, path: Path, keep_bytes: int) -> "AuditLog":
        return cls(path, max_bytes=part_size(keep_bytes), keep_bytes=keep_bytes)

    @property
    def rotated_path(self) -> Path:
        return self.part(1)

    def part(self, number: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{number}")

    def parts(self) -> list[Path]:
        """The rotated parts, newest first (a crash while they moved up may leave a gap in the numbers)."""
        pattern = re.compile(re.escape(self.path.name) + r"\.([1-9][0-9]{0,5})")
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return []
        numbers = sorted(int(m.group(1)) for n in names if (m := pattern.fullmatch(n)))
        return [self.part(n) for n in numbers]

    def record(self, event: str, **details) -> None:
        """Append one line, and send it to the system log. A log that cannot be written (a full
        disk) is reported on stderr and never stops the agent: losing a log line must not block a
        rollback or hide the real error."""
        system_log.log(event, details)
        line = format_record(event, details)
        data = line.encode("utf-8")  # printable: no surrogates left
        crashpoint(f"audit {event}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = self._open_for(len(data))
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a power cut tore the last line: keep this one whole and readable
                os.write(fd, data)  # one write of one line: O_APPEND keeps lines whole
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            sys.stderr.write(f"warning: audit log {self.path} not written ({error.strerror}): {line}")

    def _open_for(self, length: int) -> int:
        """The log, opened for appending ``length`` bytes: rotated first if they would take it
        past its bound. The rename is atomic, so a power cut leaves the full log under one of
        its two names, and the next record starts a new one."""
        fd = self._open()
        if os.fstat(fd).st_size + length + 1 <= self.max_bytes:
            return fd
        os.close(fd)
        crashpoint("rotate audit.log")
        # Oldest first, each to a free number: every rename is atomic, and a power cut between
        # two leaves every record under some name.
        for part in reversed(self.parts()):
            os.replace(part, self.part(int(part.name.rsplit(".", 1)[1]) + 1))
        os.replace(self.path, self.rotated_path)
        self._trim()
        fsync_directory(self.path.parent)
        return self._open()

    def _trim(self) -> None:
        """Remove the oldest parts beyond ``keep_bytes``, the live log counted at its full size."""
        room = self.keep_bytes - self.max_bytes
        for part in self.parts():
            size = part.stat().st_size
            if size > room:
                part.unlink()
                room = 0
            else:
                room -= size

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def newest(self, count: int | None = None) -> list[dict]:
        """Up to ``count`` records, newest first, from the live log and then its parts. A line a
        power cut tore is returned as ``{"event": "unreadable-line", "text": ...}``. A part that
        cannot be read raises OSError (the caller names it)."""
        records: list[dict] = []
        for path in (self.path, *self.parts()):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            for raw in reversed(data.splitlines()):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                    if not isinstance(record, dict):
                        raise ValueError("not an object")
                except ValueError:
                    record = {"event": "unreadable-line", "text": printable(raw.decode("utf-8", "surrogateescape"))}
                records.append(record)
                if count is not None and len(records) >= count:
                    return records
        return records
