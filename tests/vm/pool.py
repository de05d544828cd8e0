"""A small btrfs pool for the GRUB script tests: the layout grub.cfg reads, without a system.

``envs/<name>`` are subvolumes, as on a cabinet (docs/DEVICE.md); each holds what the test asks
for among ``boot/vmlinuz`` and ``boot/initrd.img`` (fake bytes: GRUB only has to find them; its
``linux`` command then refuses them, after the script has made and announced its choice). Made
with mkfs.btrfs on a file and loop-mounted, so it needs root.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid as uuid_module
from pathlib import Path

from tests.vm.esp import MiB, run

KERNEL = "boot/vmlinuz"
INITRD = "boot/initrd.img"
WHOLE = (KERNEL, INITRD)


def btrfs_pool(path: Path, envs: dict[str, tuple[str, ...]], *, symlinked: tuple[str, ...] = (),
               size: int = 128 * MiB, uuid: str | None = None) -> str:
    """A btrfs image at ``path`` with a subvolume ``envs/<name>`` holding the files ``envs[name]``
    names; in the environments listed in ``symlinked``, ``boot/vmlinuz`` is a relative symlink to a
    versioned file, as Debian installs it. Returns the filesystem's UUID (``uuid``, else a new one)."""
    pool_uuid = uuid or str(uuid_module.uuid4())
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("mkfs.btrfs", "-q", "-L", "CABINET", "-U", pool_uuid, path)
    with tempfile.TemporaryDirectory(prefix="pool-") as mountpoint:
        run("mount", "-o", "loop", path, mountpoint)
        try:
            top = Path(mountpoint)
            (top / "envs").mkdir()
            for name, files in envs.items():
                run("btrfs", "-q", "subvolume", "create", top / "envs" / name)
                for relative in files:
                    target = top / "envs" / name / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if relative == KERNEL and name in symlinked:
                        (target.parent / "vmlinuz-6.1.0-fake").write_bytes(f"fake kernel of {name}\n".encode())
                        target.symlink_to("vmlinuz-6.1.0-fake")
                    else:
                        target.write_bytes(f"fake {relative} of {name}\n".encode())
            os.sync()
        finally:
            subprocess.run(["umount", mountpoint], check=True)
    return pool_uuid
