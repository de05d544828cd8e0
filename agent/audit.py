"""The audit log: every decision with its reason, one JSON object per line, fsync'd.

Times are recorded for people reading the log; no decision ever depends on them (there is no
trustworthy clock on the device).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from keys.crashpoint import crashpoint


class AuditLog:
    def __init__(self, path: Path):
        self.path = Path(path)

    def record(self, event: str, **details) -> None:
        """Append one line. A log that cannot be written (a full disk) is reported on stderr and
        never stops the agent: losing a log line must not block a rollback or hide the real error."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **details},
                          sort_keys=True, default=str) + "\n"
        crashpoint(f"audit {event}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    line = "\n" + line  # a power cut tore the last line: keep this one whole and readable
                os.write(fd, line.encode("utf-8"))  # one write of one line: O_APPEND keeps lines whole
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            sys.stderr.write(f"warning: audit log {self.path} not written ({error.strerror}): {line}")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                entries.append({"event": "unreadable-line", "text": line[:200]})
        return entries
