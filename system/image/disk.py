"""The cabinet's disk: GPT with an EFI system partition (FAT32) and a btrfs pool.

    p1  ESP, FAT32, label CABINET-ESP, 64 MiB: /EFI/BOOT/BOOTX64.EFI (GRUB), grub.cfg, the
        environment blocks
    p2  btrfs, label CABINET, the rest: envs/ (boot environments, subvolumes) and the subvolume var

The ESP is made as a file of its own with mkfs.vfat and mtools and then copied into p1: this
needs no vfat driver in the build host's kernel, and mtools writes FAT the same everywhere.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tools import Cleanup, run

DISK_BYTES = 4 * 1024 ** 3
SECTOR = 512
ESP_START = 1024 * 1024  # 1 MiB: the usual alignment, room for the GPT before it
ESP_BYTES = 64 * 1024 ** 2
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_LABEL = "CABINET-ESP"
POOL_LABEL = "CABINET"

# Preloaded into BOOTX64.EFI; only these and what they depend on are packed in (smaller, and a
# faster start under emulation). What grub.cfg uses: search by UUID, the environment blocks
# (loadenv), regexp, test, functions and menus (normal), linux/initrd, echo, and the console.
GRUB_MODULES = ["part_gpt", "fat", "btrfs", "search", "search_fs_uuid", "loadenv", "test", "echo", "linux",
                "normal", "configfile", "regexp", "halt", "reboot", "serial", "terminal", "all_video"]


@dataclass(frozen=True)
class Partition:
    number: int
    offset: int  # bytes from the start of the disk
    size: int  # bytes


def create_disk(image: Path) -> tuple[Partition, Partition]:
    """A sparse raw disk with the GPT above; returns (ESP, pool) as sfdisk placed them."""
    image.unlink(missing_ok=True)
    with open(image, "wb") as disk:
        disk.truncate(DISK_BYTES)
    script = (f"label: gpt\n"
              f"start={ESP_START // SECTOR}, size={ESP_BYTES // SECTOR}, type={ESP_TYPE}, name=\"{ESP_LABEL}\"\n"
              f"type={LINUX_TYPE}, name=\"{POOL_LABEL}\"\n")
    run(["sfdisk", "--quiet", image], input=script.encode())
    table = json.loads(run(["sfdisk", "--json", image], capture=True))["partitiontable"]
    sector = table.get("sectorsize", SECTOR)
    esp, pool = (Partition(i + 1, p["start"] * sector, p["size"] * sector) for i, p in enumerate(table["partitions"]))
    return esp, pool


def make_pool(cleanup: Cleanup, image: Path, pool: Partition, uuid: str) -> str:
    """mkfs.btrfs on p2 with a chosen UUID (grub.cfg and fstab name it). Returns the loop device,
    attached until ``cleanup`` unwinds."""
    device = cleanup.loop(image, pool.offset, pool.size)
    run(["mkfs.btrfs", "--quiet", "--force", "--label", POOL_LABEL, "--uuid", uuid, device])
    return device


def mount_pool(cleanup: Cleanup, device: str, sysroot: Path) -> tuple[Path, Path]:
    """Mounts the top level at SYSROOT/pool and the ``var`` subvolume at SYSROOT/var, as the
    cabinet's fstab does, making ``envs/`` and ``var`` on a new pool."""
    pool = cleanup.mount(device, sysroot / "pool", "-o", "subvolid=5,noatime")
    (pool / "envs").mkdir(exist_ok=True)
    if not (pool / "var").exists():
        run(["btrfs", "subvolume", "create", pool / "var"], quiet=True)
    var = cleanup.mount(device, sysroot / "var", "-o", "subvol=var,noatime")
    return pool, var


def seed_var(var_tree: Path, var: Path) -> None:
    """The /var of the built system (dpkg's database, systemd's state folders, logs) onto the
    ``var`` subvolume: the machine's data, shared by every environment."""
    run(["cp", "-a", "--reflink=auto", f"{var_tree}/.", var])


def grub_efi(embedded_cfg: Path, out: Path) -> None:
    """BOOTX64.EFI: GRUB with its modules and the embedded config in one file, which finds
    grub.cfg beside itself ($cmdpath) - no grub-install, no NVRAM entry: the firmware's
    removable-media path EFI/BOOT/BOOTX64.EFI starts it."""
    run(["grub-mkstandalone", "--format=x86_64-efi", f"--modules={' '.join(GRUB_MODULES)}",
         f"--install-modules={' '.join(GRUB_MODULES)}", "--locales=", "--themes=", "--fonts=",
         f"--output={out}", f"boot/grub/grub.cfg={embedded_cfg}"])


def pool_grub_cfg(template: Path, pool_uuid: str) -> str:
    """grub.cfg with the pool's UUID filled in (@POOL_UUID@)."""
    text = template.read_text()
    if "@POOL_UUID@" not in text:
        raise RuntimeError(f"{template} has no @POOL_UUID@ to replace")
    return text.replace("@POOL_UUID@", pool_uuid)


def make_esp(esp_image: Path, volume_id: str, files: dict[str, Path]) -> None:
    """A FAT32 filesystem image of the ESP's size holding ``files`` (path on the ESP -> source).

    ``volume_id`` (8 hex digits) is the UUID fstab names (XXXX-XXXX). One sector per cluster:
    FAT32 needs at least 65525 clusters, which 64 MiB only reaches with 512-byte clusters."""
    esp_image.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-s", "1", "-n", ESP_LABEL, "-i", volume_id, "-C", esp_image,
         str(ESP_BYTES // 1024)], quiet=True)
    folders = sorted({str(Path(p).parent) for p in files} - {"/", "."}, key=len)
    made = set()
    for folder in folders:
        parts = Path(folder).parts[1:]
        for i in range(1, len(parts) + 1):
            path = "/" + "/".join(parts[:i])
            if path not in made:
                run(["mmd", "-i", esp_image, f"::{path}"])
                made.add(path)
    for target, source in sorted(files.items()):
        run(["mcopy", "-i", esp_image, "-o", source, f"::{target}"])


def write_esp(image: Path, esp_image: Path, esp: Partition) -> None:
    """Copies the ESP image into p1 (no loop device, no vfat driver needed)."""
    if esp_image.stat().st_size > esp.size:
        raise RuntimeError("the ESP image is larger than its partition")
    with open(esp_image, "rb") as source, open(image, "r+b") as disk:
        disk.seek(esp.offset)
        shutil.copyfileobj(source, disk, 1024 * 1024)


def esp_uuid(volume_id: str) -> str:
    """The ESP's UUID as blkid and fstab write it: 1234ABCD -> 1234-ABCD."""
    assert re.fullmatch(r"[0-9A-F]{8}", volume_id)
    return f"{volume_id[:4]}-{volume_id[4:]}"
