"""Whether the trees a bundle is made from stayed as they were while it was made.

``bundle make`` hashes each file when it scans the trees and reads it again to encode it (and
reads base files again as patch regions). A file rewritten in between - a build still writing,
a tool touching the tree - would give a bundle whose bytes are not the hashes its manifest signs:
every device would refuse it at staging, after the vendor had shipped it. So each tree's files are
stamped (inode, size, modification and change times; a write changes the change time, which no
program can set back) before the scan and compared after the last read, and any difference
refuses the bundle.

Each folder keeps 8 bytes per entry (a digest of its name and stamp), not the stamp under its
path: with the paths, a release and its base at the entry limit (100,000 entries each) took
62 MiB of the 256 MiB bundle make may use. Which entry changed is found again from the names of the
second walk; one removed is named by its folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

from keys.errors import Failed

DIGEST_BYTES = 8  # an accidental collision in a folder is 1 in 2**64: these guard against mistakes, not attacks
Stamps = dict[str, bytes]  # folder (relative; "." is the top) -> its entries' digests, sorted


class TreeChanged(Failed):
    """A file of a release or base tree changed while the bundle was being made."""


def _folders(root: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Each folder beneath ``root`` with the digest of every entry in it but folders, by name:
    of its name, inode, size, modification and change times. Follows no symlink (a linked folder
    is an entry, not descended into)."""
    for directory, folders, names in os.walk(root):
        digests = {}
        for name in names + [f for f in folders if os.path.islink(os.path.join(directory, f))]:
            try:
                status = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue  # gone while listed: the comparison after says so
            stamp = f"{name}\0{status.st_ino}\0{status.st_size}\0{status.st_mtime_ns}\0{status.st_ctime_ns}"
            digests[name] = hashlib.blake2b(stamp.encode("utf-8", "surrogateescape"),
                                            digest_size=DIGEST_BYTES).digest()
        yield os.path.relpath(directory, root), digests


def stamps(root: Path) -> Stamps:
    """What :func:`check_unchanged` compares ``root`` with later."""
    return {folder: _packed(digests) for folder, digests in _folders(root)}


def _packed(digests: dict[str, bytes]) -> bytes:
    return b"".join(sorted(digests.values()))


def check_unchanged(root: Path, before: Stamps) -> None:
    """Raises TreeChanged naming the first path of ``root`` added, removed or changed since ``before``."""
    changed: list[str] = []  # added or changed, by path
    removed: list[str] = []  # the folders of entries removed (their names were not kept)
    seen = set()
    for folder, digests in _folders(root):
        seen.add(folder)
        known = before.get(folder, b"")
        if _packed(digests) == known:
            continue
        earlier = {known[i:i + DIGEST_BYTES] for i in range(0, len(known), DIGEST_BYTES)}
        changed += (os.path.normpath(os.path.join(folder, name)) for name, digest in digests.items()
                    if digest not in earlier)
        removed += [folder] * max(0, len(earlier) - len(digests))  # at least, when others were added
    removed += (folder for folder, known in before.items() if folder not in seen
                for _ in range(len(known) // DIGEST_BYTES))
    if not changed and not removed:
        return
    if changed:
        what = f"{min(changed)} changed"
    else:
        folder = min(removed)
        what = "an entry of the top folder was removed" if folder == "." else f"an entry of {folder}/ was removed"
    more = len(changed) + len(removed) - 1
    raise TreeChanged(f"{what} while the bundle was being made" + (f" ({more} more)" if more else ""),
                      where=root, hint="make the bundle again once nothing writes to the release and base trees")
