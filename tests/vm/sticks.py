"""USB stick images for the VM scenarios: a folder as ``bundle write`` (or the stick simulator)
left it, put on a FAT32 or an exFAT filesystem image that QEMU then plugs in as a USB disk.

* FAT32: an MBR partition table with one partition at 1 MiB, as sticks are sold, made with
  sfdisk, ``mkfs.vfat -F 32 --offset`` and ``mcopy -s`` at that offset (no mount needed).
* exFAT: a whole-disk filesystem (a "superfloppy", as some cameras and Windows format them) made
  with ``mkfs.exfat`` and filled through exfat-fuse (``mount.exfat-fuse`` on a loop device): the
  kernel's own exFAT driver may be missing on the build host, FUSE is not. Needs root.
* hostile: a folder whose bundle an insider changed with the stick simulator (tests/sim/stick.py),
  validly signed with the release key, or damaged on the stick after signing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from agent.format import stick
from agent.format.bundle_dir import MANIFEST
from keys.detached import load_signatures
from tests.sim.stick import BundleModel, Keys, StickSim, file_entry, flip
from tests.sim.tools import run_cli
from tests.vm.esp import MiB, run

PARTITION_START = 1 * MiB
_MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _image_size(folder: Path, minimum: int) -> int:
    """Room for the folder, the filesystem's own structures and slack, in whole MiB."""
    wanted = max(minimum, int(folder_size(folder) * 1.2) + 32 * MiB)
    return (wanted + MiB - 1) // MiB * MiB


def write_folder(folder: Path, bundles: list[Path], roots: list[Path]) -> Path:
    """A stick's folder as ``bundle write`` makes it: these bundles and trust roots, read back."""
    folder.mkdir(parents=True, exist_ok=True)
    args = ["bundle", "write", folder, *bundles]
    for root in roots:
        args += ["--root", root]
    run_cli(*map(str, args), check=True)
    return folder


def fat32(folder: Path, image: Path, label: str = "UPDATE") -> Path:
    """A partitioned FAT32 stick image holding ``folder``'s contents."""
    size = _image_size(folder, 64 * MiB)  # FAT32 needs 65525 clusters: at least ~33 MiB
    with open(image, "wb") as handle:
        handle.truncate(size)
    run("sfdisk", "--quiet", image, input=f"start={PARTITION_START // 512}, type=c\n".encode())
    sectors = (size - PARTITION_START) // 512
    run("mkfs.vfat", "-F", "32", "-n", label, "--offset", str(PARTITION_START // 512), image, str(sectors // 2))
    target = f"{image}@@{PARTITION_START}"
    items = sorted(Path(folder).iterdir())
    if items:
        run("mcopy", "-s", "-i", target, *items, "::/", env=_MTOOLS_ENV)
    return image


def exfat(folder: Path, image: Path, label: str = "UPDATE") -> Path:
    """A whole-disk exFAT stick image holding ``folder``'s contents, copied in through FUSE."""
    size = _image_size(folder, 64 * MiB)
    with open(image, "wb") as handle:
        handle.truncate(size)
    run("mkfs.exfat", "-L", label, image)
    # As root, exfat-fuse mounts with fuseblk, which needs a block device: a loop device, then.
    device = run("losetup", "--find", "--show", image).decode().strip()
    try:
        with tempfile.TemporaryDirectory(prefix="exfat-") as mountpoint:
            run("mount.exfat-fuse", device, mountpoint)
            try:
                for item in sorted(Path(folder).iterdir()):
                    if item.is_dir():
                        shutil.copytree(item, Path(mountpoint) / item.name)
                    else:
                        shutil.copyfile(item, Path(mountpoint) / item.name)
            finally:
                subprocess.run(["umount", mountpoint], check=True)  # waits for exfat-fuse to write back
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    return image


MAKERS: dict[str, Callable[[Path, Path], Path]] = {"fat32": fat32, "exfat": exfat}


def release_keys(keys: Path, bundle: Path) -> tuple[Keys, list[str]]:
    """The key store of a key folder and the names of its keys that signed ``bundle``."""
    store = Keys(keys)
    signed_by = {s.key_id_text for s in load_signatures(bundle / MANIFEST)}
    names = [p.stem for p in sorted(Path(keys).glob("*.key")) if store.id(p.stem) in signed_by]
    assert names, f"none of the keys in {keys} signed {bundle}"
    return store, names


def hostile_folder(folder: Path, honest: Path, bundle: Path, keys: Path, product: str,
                   attack: Callable[[BundleModel], object]) -> Path:
    """``honest`` (a folder from :func:`write_folder` holding ``bundle``) with that bundle replaced by
    the simulator's model of it after ``attack``; re-signed with the same release keys, so only
    the attack differs. The trust roots stay as ``bundle write`` put them."""
    shutil.copytree(honest, folder)
    sim = StickSim(SimpleNamespace(keys=keys, root=_one_root(honest, product)), product=product)
    sim.roots = []  # written by bundle write already
    model = sim.add("attacked", source=bundle)
    model.keys, model.signers = release_keys(keys, bundle)
    for old in (folder / product / stick.BUNDLES).iterdir():
        shutil.rmtree(old)
    attack(model)
    return sim.write(folder)


def _one_root(folder: Path, product: str) -> Path:
    roots = sorted((folder / product / stick.TRUST).glob("root-*.json"))
    assert roots, f"no trust root on the stick folder {folder}"
    return roots[-1]


# --- attacks (docs/THREAT-MODEL.md names the threats) ---------------------------------------------


def dot_dot_path(component: str) -> Callable[[BundleModel], None]:
    """T-PATH: an insider with the signing key lists a file that climbs out of ``component``."""
    return lambda model: model.edit(component, add=[file_entry("../../etc/cabinet-owned", b"owned\n")])


def flipped_volume_byte(model: BundleModel) -> None:
    """A bit of the payload changed on the stick after signing (a bad stick, or an attacker
    without the keys): the signed manifest's volume hash no longer matches."""
    model.volume_bytes[0] = flip(model.volume_bytes[0])
