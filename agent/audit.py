"""The audit log: every decision with its reason, one JSON object per line, fsync'd.

Times are recorded for people reading the log; no decision ever depends on them (there is no
trustworthy clock on the device).

The log is bounded (T-LOG): a stick decides what gets logged, so neither one record nor the log
may grow with what a stick carries. A record's strings and lists are shortened to fit
MAX_RECORD_BYTES, and a log that would pass MAX_LOG_BYTES is renamed to ``audit.log.1``
(replacing the previous one) before the next line starts a new log: at most two files, about
2 x MAX_LOG_BYTES on disk, the newest records always kept. Strings are stored printable (a
path's bytes that are not UTF-8 as ``\\xNN``), so every line is JSON any parser accepts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

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


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = MAX_LOG_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes

    @property
    def rotated_path(self) -> Path:
        return self.path.with_name(self.path.name + ROTATED_SUFFIX)

    def record(self, event: str, **details) -> None:
        """Append one line. A log that cannot be written (a full disk) is reported on stderr and
        never stops the agent: losing a log line must not block a rollback or hide the real error."""
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
        os.replace(self.path, self.rotated_path)
        fsync_directory(self.path.parent)
        return self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
