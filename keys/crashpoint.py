"""Power-cut injection points in the durable-write primitives (tests/test_power_cuts.py).

Every primitive that makes a write durable (write, fsync, rename, directory fsync, boot record,
journal) calls :func:`crashpoint` with a name. Unless ``BUNDLE_CRASH_AT`` or
``BUNDLE_CRASH_TRACE`` is set in the environment this costs one comparison. With
``BUNDLE_CRASH_TRACE=FILE`` each point appends its number and name to FILE (to count them);
with ``BUNDLE_CRASH_AT=N`` the process kills itself with SIGKILL at the N-th point - the closest
a test can get to pulling the plug at exactly that moment.
"""

from __future__ import annotations

import os
import signal

_TARGET = int(os.environ.get("BUNDLE_CRASH_AT") or 0)
_TRACE = os.environ.get("BUNDLE_CRASH_TRACE")
_count = 0


def crashpoint(name: str) -> None:
    global _count
    if not (_TARGET or _TRACE):
        return
    _count += 1
    if _TRACE:
        with open(_TRACE, "a", encoding="utf-8") as trace:
            trace.write(f"{_count} {name}\n")
    if _count == _TARGET:
        os.kill(os.getpid(), signal.SIGKILL)
