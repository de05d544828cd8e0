"""One agent at a time on a device: an exclusive lock on STATE/agent.lock.

A stick inserted while a technician runs a command, or two sticks at once, must not interleave
two installs' journals. flock(2) is released by the kernel when the holder dies, so a power cut
or a kill never leaves a stale lock behind; the file only says who holds it, for the message.
"""

from __future__ import annotations

import fcntl
import os
import sys

from agent.state_dir import StateDir, unusable
from keys.errors import Failed


class AgentBusy(Failed):
    """Another bundle-agent is changing this device."""


def hold_device_lock(state_dir: StateDir) -> int:
    """Take the device's lock for the rest of this process (returns its descriptor) or raise
    AgentBusy; StateUnusable when the lock cannot be made (no rights: the agent runs as root)."""
    path = state_dir.lock
    try:
        state_dir.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as error:
        raise unusable(error, state_dir.root, "take the device's lock") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.fsdecode(os.pread(fd, 200, 0)).strip() or "unknown"  # printed by agent/cli/errors.py
        os.close(fd)
        raise AgentBusy(f"another bundle-agent is changing this device ({holder})", where=path,
                        hint="wait for it to finish, then run the command again") from None
    os.ftruncate(fd, 0)
    # The arguments' own bytes (os.fsencode undoes how Python decoded argv): a mount point may be
    # named in a legacy code page, held as surrogate escapes that a plain encode() refuses.
    os.pwrite(fd, os.fsencode(f"pid {os.getpid()}: {' '.join(['bundle-agent', *sys.argv[1:]])}\n"), 0)
    return fd
