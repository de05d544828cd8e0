"""Whether the trees a bundle is made from stayed as they were while it was made.

``bundle make`` hashes each file when it scans the trees and reads it again to encode it (and
reads base files again as patch regions). A file rewritten in between - a build still writing,
a tool touching the tree - would give a bundle whose bytes are not the hashes its manifest signs:
every device would refuse it at staging, after the vendor had shipped it. So each tree's files are
stamped (inode, size, modification and change times; a write changes the change time, which no
program can set back) before the scan and compared after the last read, and any difference
refuses the bundle.
"""

from __future__ import annotations

import os
from pathlib import Path

from keys.errors import Failed

Stamp = tuple[int, int, int, int]


class TreeChanged(Failed):
    """A file of a release or base tree changed while the bundle was being made."""


def stamps(root: Path) -> dict[str, Stamp]:
    """``(inode, size, mtime_ns, ctime_ns)`` of every entry but folders beneath ``root``, by
    relative path, following no symlink (a linked folder is an entry, not descended into)."""
    found: dict[str, Stamp] = {}
    for directory, folders, names in os.walk(root):
        for name in names + [f for f in folders if os.path.islink(os.path.join(directory, f))]:
            path = os.path.join(directory, name)
            try:
                status = os.lstat(path)
            except FileNotFoundError:
                continue  # gone while listed: the comparison after says so
            found[os.path.relpath(path, root)] = (status.st_ino, status.st_size, status.st_mtime_ns,
                                                  status.st_ctime_ns)
    return found


def check_unchanged(root: Path, before: dict[str, Stamp]) -> None:
    """Raises TreeChanged naming the first path of ``root`` added, removed or changed since ``before``."""
    after = stamps(root)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    if changed:
        raise TreeChanged(f"{changed[0]} changed while the bundle was being made"
                          + (f" ({len(changed) - 1} more)" if len(changed) > 1 else ""), where=root,
                          hint="make the bundle again once nothing writes to the release and base trees")
