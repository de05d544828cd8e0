"""Sharing a file's blocks instead of copying them, where the filesystem can (btrfs, xfs)."""

from __future__ import annotations

import fcntl
import sys

_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(source_fd: int, out_fd: int) -> bool:
    """Share ``source_fd``'s blocks with the empty ``out_fd`` if the filesystem can; else False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fcntl.ioctl(out_fd, _FICLONE, source_fd)
        return True
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL...: fall back to copying
        return False
