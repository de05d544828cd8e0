"""Small real disks for tests: fresh ext4, btrfs or xfs images, loop-mounted (root only), and
ballast that fills one to a chosen free space."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sim.tools import debian_tools

MiB = 1 << 20

_MKFS = {  # kind -> (Debian package, mkfs command)
    "ext4": ("e2fsprogs", ["mkfs.ext4", "-q", "-m", "0"]),  # no root reserve: free space is what df says
    "btrfs": ("btrfs-progs", ["mkfs.btrfs", "-q"]),
    "xfs": ("xfsprogs", ["mkfs.xfs", "-q", "-m", "reflink=1"]),
}


@dataclass(frozen=True)
class Mounted:
    path: Path
    device: str  # /dev/loopN

    def used(self) -> int:
        """Bytes in use on the filesystem, after writing back everything pending."""
        os.sync()
        return self.used_now()

    def used_now(self) -> int:
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def written(self) -> int:
        """Bytes the filesystem has written to its block device so far (/sys/block/loopN/stat)."""
        fields = Path(f"/sys/block/{Path(self.device).name}/stat").read_text().split()
        return int(fields[6]) * 512


def _run(*command) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True)


@contextmanager
def loop_mounted(kind: str, size: int, directory: Path, *mkfs_options: str):
    """A fresh ``kind`` filesystem of ``size`` bytes mounted at ``directory/device``."""
    if os.geteuid() != 0:
        pytest.skip("loop-mounting a filesystem image needs root")
    package, mkfs = _MKFS[kind]
    debian_tools(package, mkfs[0])
    debian_tools("mount", "losetup", "mount", "umount")
    image = directory / f"{kind}.img"
    with open(image, "wb") as handle:
        handle.truncate(size)
    made = _run(*mkfs, *mkfs_options, image)
    assert made.returncode == 0, made.stderr
    attached = _run("losetup", "--find", "--show", image)
    if attached.returncode != 0:
        image.unlink()
        pytest.skip(f"no loop device available: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    mountpoint = directory / "device"
    mountpoint.mkdir()
    try:
        mounted = _run("mount", "-t", kind, device, mountpoint)
        if mounted.returncode != 0 and kind not in Path("/proc/filesystems").read_text().split():
            pytest.skip(f"this kernel cannot mount {kind}: {mounted.stderr.strip()}")
        assert mounted.returncode == 0, mounted.stderr
        try:
            yield Mounted(mountpoint, device)
        finally:
            _run("umount", "-l", mountpoint)
    finally:
        _run("losetup", "-d", device)
        image.unlink()


@contextmanager
def tmpfs_mounted(mount_point: Path, *options: str):
    """A fresh tmpfs on ``mount_point`` (made if missing), unmounted again afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point.mkdir(parents=True, exist_ok=True)
    mounted = _run("mount", "-t", "tmpfs", *options, "tmpfs", mount_point)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        unmounted = _run("umount", mount_point)
        assert unmounted.returncode == 0, unmounted.stderr


def fill(mounted: Mounted, leave: int) -> Path:
    """A ballast file (old logs, say) that leaves about ``leave`` bytes free; 0 means none at all."""
    ballast = mounted.path / "ballast"
    with open(ballast, "wb", buffering=0) as handle:
        size = 0
        while (extra := mounted.free() - leave) > 64 * 1024:  # allocating costs metadata: close in
            os.posix_fallocate(handle.fileno(), size, extra - 32 * 1024)
            size += extra - 32 * 1024
        if leave == 0:  # the last blocks: write until the filesystem says no
            try:
                while True:
                    handle.write(b"\0" * 1024)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
    os.sync()
    assert abs(mounted.free() - leave) <= 64 * 1024, (mounted.free(), leave)
    return ballast
