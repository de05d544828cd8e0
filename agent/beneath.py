"""Opening paths strictly beneath a directory, never following a symlink on the way.

``O_NOFOLLOW`` alone protects only the last component; an intermediate symlink still escapes
(FIELD-NOTES, measured). Walking one component at a time with ``O_NOFOLLOW`` relative to the
previous directory's descriptor refuses every symlink and works on Linux and FreeBSD alike
(T-SYMLINK-READ in docs/THREAT-MODEL.md).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from keys.errors import Refused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EscapingPath(Refused):
    """A path beneath a root could only be reached through a symlink or is not what was expected."""


def open_beneath(root: Path, relative: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """File descriptor for ``root/relative``; no component may be a symlink. Raises EscapingPath, OSError."""
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
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=directory)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise EscapingPath(f"{relative!r} is a symlink", where=root) from None
            raise
    finally:
        os.close(directory)
