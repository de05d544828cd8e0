"""Extended attributes in a release tree, which a bundle does not carry.

A manifest entry has a path, type, mode, owner, modification time and content: nothing holds a
file's extended attributes, so a device writes every file it installs without them. They are
POSIX ACLs (``system.posix_acl_access``: a debootstrapped Debian has one on /var/log/journal),
file capabilities (``security.capability``, what lets ping open a raw socket without setuid),
SELinux labels and ``user.*`` attributes. One lost without a word shows on a machine only, as a
program that can no longer do its job; so ``bundle make`` names them (docs/OPERATOR.md).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Iterable, Iterator

from agent.format.tree import HARDLINK, Entry

# Python has no listxattr where the kernel has no Linux-style extended attributes (FreeBSD's
# extattr and NFSv4 ACLs, macOS): there make cannot see them (docs/OPERATOR.md says so).
_CAN_LIST = hasattr(os, "listxattr")
_UNSUPPORTED = {errno.ENOTSUP, errno.EOPNOTSUPP}


def with_xattrs(root: Path, entries: Iterable[Entry]) -> Iterator[tuple[str, list[str]]]:
    """``(path, attribute names)`` of each entry of the tree at ``root`` that has extended
    attributes, in listing order. A hard link is its file's inode: listed under the file only.
    Nothing is yielded where they cannot be listed. Raises OSError naming the path."""
    if not _CAN_LIST:
        return
    for entry in entries:
        if entry.type == HARDLINK:
            continue
        path = root / entry.path  # "." is the root itself
        try:
            names = os.listxattr(path, follow_symlinks=False)  # a symlink's own, not its target's
        except OSError as error:
            if error.errno in _UNSUPPORTED:  # the filesystem has none (some FUSE ones)
                return
            raise OSError(error.errno, error.strerror, str(path)) from None
        if names:
            yield entry.path, sorted(names)
