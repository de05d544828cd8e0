"""Where other filesystems are mounted inside a tree.

A clone of an environment (a ZFS or btrfs snapshot, ``cp -x``) holds none of them, removing the
tree would empty them, and a release tree with one inside (a chroot's /proc left mounted) is not
what the vendor means to ship.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

# What to do about one inside a tree the bundler reads (bundle make, bundle verify --base).
UNMOUNT_HINT = "unmount it (a chroot's /proc, /sys or /dev?), or copy what it holds into the tree"


def mount_points_inside(tree: Path) -> Iterator[Path]:
    """Each folder beneath ``tree`` on another filesystem than its parent's (its device number
    differs), not entered. Follows no symlink; a folder that cannot be read is passed over."""
    if not tree.is_dir() or tree.is_symlink():
        return
    stack = [(tree, os.lstat(tree).st_dev)]
    while stack:
        folder, device = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    inner = entry.stat(follow_symlinks=False).st_dev
                    if inner != device:
                        yield Path(entry.path)
                    else:
                        stack.append((Path(entry.path), inner))
        except OSError:
            continue
