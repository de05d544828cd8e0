"""Free space and inodes, checked before anything is written (docs/AGENT.md, "What gets installed",
step 4): a full disk is found before the install starts, not in the middle of it."""

from __future__ import annotations

import os
from pathlib import Path

from agent.choice import Choice
from agent.device import Device
from agent.format.tree import FILE
from agent.offer import Found, bundles_used
from keys.errors import Refused


def tree_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated, inodes) of a tree on its own filesystem: what a clone copies (``cp -x``)."""
    total = inodes = 0
    device = os.stat(path).st_dev
    for directory, dirs, files in os.walk(path):
        inodes += len(dirs) + len(files)
        dirs[:] = [name for name in dirs if _on(device, os.path.join(directory, name))]
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                pass
    return total, inodes


def _on(device: int, path: str) -> bool:
    try:
        return os.lstat(path).st_dev == device
    except OSError:
        return False


def check_staging_space(device: Device, chosen: dict[str, list[Choice]], running: Path | None) -> None:
    """Refuse before writing when the environments' filesystem cannot hold the new environment:
    the new or changed files of each route (two largest steps of a chain, every file rounded up
    to a block), plus the clone itself where blocks cannot be shared, and the inodes."""
    root = Path(device.backend.space_path() or running or device.config.state_dir)
    while not root.exists():  # not created yet (before provisioning): its filesystem is the parent's
        root = root.parent
    info = os.statvfs(root)
    block = info.f_frsize or 4096
    needed = inodes = 0
    for route in chosen.values():
        sizes = sorted(sum(-(-max(e.size, 1) // block) * block for e in step.component.entries
                           if e.type == FILE and (e.base_path != e.path or not step.component.is_delta))
                       for step in route)
        needed += sum(sizes[-2:])
        inodes += sum(len(step.component.entries) for step in route[-2:])
    if running is not None and not device.backend.clone_shares_blocks():
        clone_bytes, clone_inodes = tree_usage(running)
        needed += clone_bytes
        inodes += clone_inodes
    free = info.f_bavail * block
    if needed > free:
        raise Refused(f"not enough space to stage the update: about {needed >> 20} MiB needed, {free >> 20} MiB free",
                      where=root, hint="free space on the environments' filesystem, or remove old environments")
    if info.f_files and inodes > info.f_favail:  # btrfs and ZFS report no inode limit (0)
        raise Refused(f"not enough inodes to stage the update: {inodes} needed, {info.f_favail} free", where=root,
                      hint="free inodes on the environments' filesystem, or remove old environments")


def check_spool_space(device: Device, chosen: dict[str, list[Choice]], found: dict[str, Found]) -> None:
    needed = sum(found[b].verified.manifest.payload_size for b in bundles_used(chosen))
    directory = device.config.state_dir
    directory.mkdir(parents=True, exist_ok=True)
    info = os.statvfs(directory)
    if needed > info.f_bavail * info.f_frsize:
        raise Refused(f"not enough space in the state directory to copy the update from the medium: "
                      f"{needed >> 20} MiB needed, {(info.f_bavail * info.f_frsize) >> 20} MiB free",
                      where=directory, hint="free space on the state directory's filesystem")
