"""Opening paths strictly beneath a directory, never following a symlink on the way.

``O_NOFOLLOW`` alone protects only the last component; an intermediate symlink still escapes
(FIELD-NOTES, measured). Walking one component at a time with ``O_NOFOLLOW`` relative to the
previous directory's descriptor refuses every symlink and works on Linux and FreeBSD alike
(T-SYMLINK-READ in docs/THREAT-MODEL.md).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from keys.errors import Refused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EscapingPath(Refused):
    """A path beneath a root could only be reached through a symlink or is not what was expected."""


class NotRegularFile(EscapingPath):
    """The path names a FIFO, socket, device node or directory where a file was expected."""


def open_beneath(root: Path, relative: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """File descriptor for ``root/relative``; no component may be a symlink, and unless creating
    or opening a directory the last must be a regular file. Raises EscapingPath (NotRegularFile),
    OSError."""
    parts = relative.split("/")
    directory = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                next_directory = os.open(part, _DIR_FLAGS, dir_fd=directory)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise EscapingPath(f"{relative!r}: {part!r} is not a plain directory",
                                       where=root) from None
                raise
            os.close(directory)
            directory = next_directory
        if not flags & (os.O_CREAT | os.O_DIRECTORY):
            # Never open what is not a regular file: a socket fails, and opening a device node
            # runs its driver (a tape rewinds). The caller checks the opened file again (fstat).
            mode_found = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode_found):
                raise EscapingPath(f"{relative!r} is a symlink", where=root)
            if not stat.S_ISREG(mode_found):
                raise NotRegularFile(f"{relative!r} is not a regular file", where=root)
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=directory)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise EscapingPath(f"{relative!r} is a symlink", where=root) from None
            raise
    finally:
        os.close(directory)
