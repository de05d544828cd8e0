"""The Debian packages the VM tests need, installed on first use when we are root (as
tests/sim/tools.py does for single commands; some of these install files, not commands). The
Makefile's ``vm-test`` target lists the same packages; a test whose tools cannot be had is skipped
with the reason, which fails the run under CI (tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# package -> a command or a file it installs (files: the firmware and GRUB's EFI modules)
PACKAGES = {
    "qemu-system-x86": "qemu-system-x86_64",
    "qemu-utils": "qemu-img",
    "ovmf": "/usr/share/OVMF/OVMF_CODE_4M.fd",
    "grub-common": "grub-mkstandalone",
    "grub-efi-amd64-bin": "/usr/lib/grub/x86_64-efi/btrfs.mod",
    "mtools": "mcopy",
    "dosfstools": "mkfs.vfat",
    "exfatprogs": "mkfs.exfat",
    "exfat-fuse": "mount.exfat-fuse",
    "fuse": "fusermount",
    "btrfs-progs": "mkfs.btrfs",
    "fdisk": "sfdisk",  # the partition tables of the ESP and the stick images
}
GRUB = ("grub-common", "grub-efi-amd64-bin", "mtools", "dosfstools", "fdisk")
QEMU = ("qemu-system-x86", "qemu-utils", "ovmf")
os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # mkfs.* live there
_APT = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=600"]  # wait for another apt


def _present(what: str) -> bool:
    return Path(what).exists() if what.startswith("/") else shutil.which(what) is not None


def need(*packages: str) -> None:
    """Install the missing ones among ``packages``; skip the calling test when that is impossible."""
    missing = [p for p in packages if not _present(PACKAGES[p])]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        if subprocess.run([*_APT, "install", *missing], **quiet).returncode:
            subprocess.run([*_APT, "update"], **quiet)
            subprocess.run([*_APT, "install", *missing], **quiet)
    still = [p for p in packages if not _present(PACKAGES[p])]
    if still:
        pytest.skip(f"{', '.join(PACKAGES[p] for p in still)} not installed and the Debian packages "
                    f"{' '.join(still)} could not be installed with apt-get (needs root and a reachable mirror)")
