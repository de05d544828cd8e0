"""What the stick's filesystem can take, checked before anything is written: FAT32's file size
limit, a read-only mount, and the free space the planned files need (docs/STICK.md)."""

from __future__ import annotations

import os
from pathlib import Path

from agent.format import stick
from bundler.bundle_summary import size_text
from bundler.stick_plan import StickPlan, WriteRefused

# Directory entries: a long name costs up to 8 x 32 bytes in a FAT directory.
ENTRY_BYTES = 256


class NoSpace(WriteRefused):
    """The stick has less free space than the files to write need."""


class FileTooLarge(WriteRefused):
    """A file exceeds what FAT32 can store (4 GiB - 1)."""


def check_limits(plan: StickPlan, max_file_bytes: int) -> None:
    """Raises FileTooLarge for the first file to write that is over ``max_file_bytes``."""
    for files in [r.to_write for r in plan.roots] + [b.to_write for b in plan.bundles]:
        for file in files:
            if file.size > max_file_bytes:
                raise FileTooLarge(f"{file.size} bytes is more than a FAT32 file can hold ({max_file_bytes})",
                                   where=file.source,
                                   hint="make the bundle again with a smaller --volume-size")


def _allocated(size: int, cluster: int) -> int:
    return -(-size // cluster) * cluster + ENTRY_BYTES


def check_space(plan: StickPlan) -> None:
    """Refuse before writing when the files cannot fit; counts what removing incomplete copies
    frees. Sets ``plan.needed`` and ``plan.available``. Raises WriteRefused (read-only), NoSpace."""
    info = os.statvfs(plan.stick)
    writes = any(r.to_write for r in plan.roots) or any(b.state != "present" or b.to_write for b in plan.bundles)
    if writes and info.f_flag & os.ST_RDONLY:  # a stick with nothing to write is still verified
        raise WriteRefused("the stick is mounted read-only", where=plan.stick,
                           hint="check the stick's write-protect switch, then mount it read-write")
    cluster = info.f_frsize or info.f_bsize
    trust, bundles = stick.trust_dir(plan.stick, plan.product), stick.bundles_dir(plan.stick, plan.product)
    new_dirs = [d for d in (trust.parent, trust, bundles) if not d.exists()]
    folder = cluster + ENTRY_BYTES  # a folder takes at least one cluster of directory entries
    needed = len(new_dirs) * folder
    freed = 0
    for root in plan.roots:
        needed += sum(_allocated(f.size, cluster) for f in root.to_write)
    for bundle in plan.bundles:
        needed += sum(_allocated(f.size, cluster) for f in bundle.to_write)
        if bundle.state != "present":
            needed += 2 * folder + _allocated(65, cluster)  # the bundle's folder, payload/, COMPLETE
        if bundle.state in ("incomplete", "damaged"):
            freed += _usage(bundle.folder)
    plan.needed = needed
    if info.f_blocks == 0:
        # Some FUSE drivers (fusefat) report no size at all. Running out of space mid-write is safe
        # (the bundle gets no COMPLETE marker), so this is reported rather than refused.
        return
    plan.available = info.f_bavail * info.f_frsize + freed
    if plan.needed > plan.available:
        raise NoSpace(f"the stick has {size_text(plan.available, exact=True)} free, the files to write need "
                      f"{size_text(plan.needed, exact=True)}",
                      where=plan.stick, hint="use a larger stick, or write fewer bundles to this one")


def _usage(folder: Path) -> int:
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total
