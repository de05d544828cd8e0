"""The cabinet's EFI system partition, built the way the reference image builds it: a standalone
GRUB (``grub-mkstandalone``) with the repository's embedded configuration, the repository's
``grub.cfg`` with the pool's UUID filled in, and the two GRUB environment blocks, on a FAT32 image
made with ``mkfs.vfat -F 32`` and written with mtools (no mount: the kernel may lack vfat).

Shared by the VM harness (its accelerator probe) and the GRUB script tests; the Debian tools are
grub-common (grub-mkstandalone, grub-editenv), grub-efi-amd64-bin (the x86_64-efi modules),
dosfstools and mtools.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GRUB_DIR = REPO / "system" / "linux" / "grub"
GRUB_CFG = GRUB_DIR / "grub.cfg"  # @POOL_UUID@ is replaced by the btrfs pool's UUID
EMBEDDED_CFG = GRUB_DIR / "embedded.cfg"  # built into BOOTX64.EFI: configfile $cmdpath/grub.cfg
BOOT_DIR = "EFI/BOOT"
ENVBLOCK_SIZE = 1024
ESP_LABEL = "CABINET-ESP"
MiB = 1 << 20
# Preloaded into the standalone image: what the reference grub.cfg uses (the image builder's list).
GRUB_MODULES = ("part_gpt fat btrfs search search_fs_uuid loadenv test echo linux normal configfile regexp "
                "halt reboot serial terminal sleep").split()
_MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}  # images made by mkfs.vfat need no geometry check


class ToolError(Exception):
    """A build tool failed; the message carries its command line and stderr."""


def run(*command, input: bytes | None = None, env: dict | None = None) -> bytes:
    """Run a tool; its stdout. Raises ToolError naming the command and its stderr."""
    done = subprocess.run([str(c) for c in command], input=input, capture_output=True, env=env)
    if done.returncode != 0:
        raise ToolError(f"{' '.join(map(str, command))} exited {done.returncode}: "
                        f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def env_blocks(script: Path = GRUB_CFG) -> tuple[str, str]:
    """Where grub.cfg keeps its two environment blocks (A, read first, and its copy B), as paths
    on the ESP: read from the script's ``set block_a="$cmdpath/..."`` lines, so the tests follow it."""
    found = dict(re.findall(r'set block_([ab])="\$cmdpath/([^"]+)"', script.read_text()))
    if set(found) != {"a", "b"}:
        raise ToolError(f"{script} does not set block_a and block_b under $cmdpath")
    return f"{BOOT_DIR}/{found['a']}", f"{BOOT_DIR}/{found['b']}"


def standalone_grub(embedded: str | Path, out: Path) -> Path:
    """BOOTX64.EFI: GRUB with every x86_64-efi module inside and ``embedded`` (a file, or the text
    of one) as its built-in configuration."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        if not isinstance(embedded, Path):
            Path(work, "embedded.cfg").write_text(embedded)
            embedded = Path(work, "embedded.cfg")
        run("grub-mkstandalone", "-O", "x86_64-efi", f"--modules={' '.join(GRUB_MODULES)}", "--locales=",
            "--fonts=", "--themes=", "-o", out, f"boot/grub/grub.cfg={embedded}")
    return out


def envblock(path: Path, **variables: str) -> Path:
    """A fresh 1024-byte GRUB environment block holding ``variables``, made by ``grub-editenv``."""
    run("grub-editenv", path, "create")
    if variables:
        run("grub-editenv", path, "set", *(f"{name}={value}" for name, value in variables.items()))
    return path


def parse_envblock(data: bytes) -> dict[str, str] | None:
    """The variables of an environment block as ``grub-editenv list`` reads them, or None when it
    refuses the block (no signature, wrong size)."""
    with tempfile.TemporaryDirectory() as work:
        path = Path(work, "grubenv")
        path.write_bytes(data)
        done = subprocess.run(["grub-editenv", str(path), "list"], capture_output=True, text=True)
    if done.returncode != 0 or len(data) != ENVBLOCK_SIZE:
        return None
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def fat_image(path: Path, files: dict[str, Path | bytes], size: int = 64 * MiB, label: str = ESP_LABEL) -> Path:
    """A FAT32 image holding ``files`` (name in the image -> a host file or bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)
    run("mkfs.vfat", "-F", "32", "-n", label, path)
    for name, content in files.items():
        fat_write(path, name, content)
    return path


def fat_write(image: Path, name: str, content: Path | bytes) -> None:
    """Put one file into a FAT image (its folders made first), replacing what was there."""
    parts = Path(name).parts
    for depth in range(1, len(parts)):
        folder = "::/" + "/".join(parts[:depth])  # mmd fails when it exists already: fine
        subprocess.run(["mmd", "-i", str(image), folder], capture_output=True, env=_MTOOLS_ENV)
    if isinstance(content, Path):
        run("mcopy", "-o", "-i", image, content, f"::/{name}", env=_MTOOLS_ENV)
    else:
        run("mcopy", "-o", "-i", image, "-", f"::/{name}", input=content, env=_MTOOLS_ENV)


def fat_read(image: Path, name: str) -> bytes:
    """One file's bytes out of a FAT image."""
    return run("mcopy", "-n", "-i", image, f"::/{name}", "-", env=_MTOOLS_ENV)


def grub_script(pool_uuid: str, source: Path = GRUB_CFG) -> bytes:
    """The repository's grub.cfg for a pool, as the image build installs it."""
    text = source.read_text()
    if "@POOL_UUID@" not in text:
        raise ToolError(f"{source} has no @POOL_UUID@ to replace")
    return text.replace("@POOL_UUID@", pool_uuid).encode()


def block_bytes(**variables: str) -> bytes:
    """The bytes of a fresh environment block holding ``variables``, made by ``grub-editenv``."""
    with tempfile.TemporaryDirectory() as work:
        return envblock(Path(work, "grubenv"), **variables).read_bytes()


def cabinet_esp(path: Path, pool_uuid: str, bootx64: Path, blocks: tuple[bytes, bytes] | None = None) -> Path:
    """An ESP laid out as docs/DEVICE.md and the image build say: the repository's GRUB
    (``bootx64``, from :func:`standalone_grub` with EMBEDDED_CFG), its script for ``pool_uuid``
    and the two environment blocks (default: both ``default_env=env-1``, ``trial_env=``)."""
    if blocks is None:
        block = block_bytes(default_env="env-1", trial_env="")
        blocks = (block, block)
    block_a, block_b = env_blocks()
    return fat_image(path, {
        f"{BOOT_DIR}/BOOTX64.EFI": bootx64,
        f"{BOOT_DIR}/grub.cfg": grub_script(pool_uuid),
        block_a: blocks[0],
        block_b: blocks[1],
    })


def read_blocks(image: Path) -> tuple[bytes, bytes]:
    """The raw bytes of both environment blocks (A, B) on an ESP image."""
    block_a, block_b = env_blocks()
    return fat_read(image, block_a), fat_read(image, block_b)


def gpt_disk(path: Path, partitions: list[Path]) -> list[tuple[int, int]]:
    """A GPT disk at ``path`` whose partitions hold the given images byte for byte, in order (an
    ESP first, then a pool: the cabinet's layout). Returns each partition's (offset, size) in bytes."""
    sizes = [Path(image).stat().st_size for image in partitions]
    start = MiB
    with open(path, "wb") as disk:
        disk.truncate(start + sum(sizes) + MiB)  # room for the backup GPT at the end
    script = "label: gpt\n" + "".join(f"size={size // 512}\n" for size in sizes)
    run("sfdisk", "--quiet", path, input=script.encode())
    layout = json.loads(run("sfdisk", "--json", path))["partitiontable"]["partitions"]
    placed = [(entry["start"] * 512, entry["size"] * 512) for entry in layout]
    with open(path, "r+b") as disk:
        for image, (offset, _) in zip(partitions, placed):
            with open(image, "rb") as source:
                disk.seek(offset)
                while chunk := source.read(4 * MiB):
                    disk.write(chunk)
    return placed


def extract(disk: Path, offset: int, size: int, out: Path) -> Path:
    """The bytes of one partition of ``disk`` as an image file at ``out``."""
    with open(disk, "rb") as source, open(out, "wb") as target:
        source.seek(offset)
        target.write(source.read(size))
    return out
