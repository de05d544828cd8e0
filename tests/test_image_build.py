"""The pure parts of the reference image's builder (system/image/, `make image`).

The build itself needs root, debootstrap and loop devices and takes minutes; the VM tests start
from its output. What is checked here in milliseconds is what the build hands to the agent and
to GRUB: the agent's configuration is one the agent accepts, the release description is one
`bundle make` accepts, the pool's UUID lands in grub.cfg, and the slimming of the tree never
drops a kernel module the cabinet mounts its disks and sticks with.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path

import pytest

from agent.boot import open_backend
from agent.config import load_config
from bundler.release import load_release

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / "system/image"
sys.path.insert(0, str(IMAGE))  # the builder's modules import each other by plain name

import disk  # noqa: E402
import provision  # noqa: E402
import release  # noqa: E402
import rootfs  # noqa: E402


def test_the_agent_accepts_the_cabinet_configuration(tmp_path):
    sysroot = tmp_path / "sysroot"
    provision.write_trust(sysroot, [])
    hook = sysroot / provision.HEALTH_HOOK.lstrip("/")
    hook.parent.mkdir(parents=True)
    hook.write_text("#!/bin/sh\nexit 0\n")
    hook.chmod(0o755)
    config = load_config(Path(provision.CONFIG), system_root=sysroot)
    assert (config.product, config.hardware, config.serial) == (release.PRODUCT, release.HARDWARE, release.SERIAL)
    assert config.backend == "grub-btrfs"
    assert (config.layout.platform, config.layout.games) == (".", "opt/games")
    assert list(config.layout.preserve) == provision.PRESERVE
    # The backend reads its own [boot] settings: the block paths the builder creates are its own.
    backend = open_backend(config.backend, config.backend_settings, sysroot)
    assert backend.name == "grub-btrfs"


def test_the_release_description_is_one_bundle_make_accepts(tmp_path):
    (tmp_path / "platform").mkdir()
    release.make_demo_game(tmp_path / "games/demo", rootfs.FILES / "demo/run")
    described = load_release(release.write_release_toml(tmp_path))
    assert described.product == release.PRODUCT
    assert release.HARDWARE in described.hardware
    assert sorted(described.components) == ["game/demo", "platform"]
    assert (tmp_path / "games/demo/run").stat().st_mode & 0o111


def test_grub_cfg_names_the_pool_by_uuid(tmp_path):
    text = disk.pool_grub_cfg(REPO / "system/linux/grub/grub.cfg", "0b1e4c27-6b8e-4a39-9d7c-2f1f0d4e5a61")
    assert "@POOL_UUID@" not in text
    assert "0b1e4c27-6b8e-4a39-9d7c-2f1f0d4e5a61" in text
    plain = tmp_path / "grub.cfg"
    plain.write_text("set pool_uuid=fixed\n")
    with pytest.raises(RuntimeError, match="@POOL_UUID@"):
        disk.pool_grub_cfg(plain, "0b1e4c27-6b8e-4a39-9d7c-2f1f0d4e5a61")


def test_the_esp_uuid_is_written_as_blkid_writes_it():
    assert disk.esp_uuid("1234ABCD") == "1234-ABCD"


def _excluded(path: str) -> bool:
    """dpkg's rule: the last path-exclude or path-include matching the path wins (fnmatch, where
    * also matches /)."""
    verdict = False
    for line in (rootfs.FILES / "dpkg-slim.cfg").read_text().splitlines():
        kind, _, pattern = line.partition("=")
        if kind in ("path-exclude", "path-include") and fnmatch.fnmatchcase(path, pattern):
            verdict = kind == "path-exclude"
    return verdict


# The modules a cabinet needs to boot from its disk and to read a stick (the FAT mounts need
# their code pages), as bookworm's kernel package lists them.
NEEDED_MODULES = [
    "fs/btrfs/btrfs.ko", "fs/fat/vfat.ko", "fs/fat/fat.ko", "fs/exfat/exfat.ko", "fs/ext4/ext4.ko",
    "fs/nls/nls_cp437.ko", "fs/nls/nls_utf8.ko", "fs/nls/nls_iso8859-1.ko", "fs/nls/nls_ascii.ko",
    "drivers/usb/storage/usb-storage.ko", "drivers/usb/storage/uas.ko", "drivers/usb/host/xhci-pci.ko",
    "drivers/usb/host/xhci-hcd.ko", "drivers/block/virtio_blk.ko", "drivers/virtio/virtio_pci.ko",
    "drivers/scsi/sd_mod.ko", "drivers/nvme/host/nvme.ko", "drivers/ata/ahci.ko",
    "drivers/net/ethernet/intel/e1000e/e1000e.ko",
]


@pytest.mark.parametrize("module", NEEDED_MODULES)
def test_slimming_keeps_the_modules_a_cabinet_needs(module):
    assert not _excluded(f"/lib/modules/6.1.0-50-amd64/kernel/{module}")


@pytest.mark.parametrize("path", [
    "/lib/modules/6.1.0-50-amd64/kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko",
    "/lib/modules/6.1.0-50-amd64/kernel/drivers/net/wireless/intel/iwlwifi/iwlwifi.ko",
    "/lib/modules/6.1.0-50-amd64/kernel/sound/core/snd.ko",
    "/usr/share/doc/python3/changelog.gz",
    "/usr/share/man/man1/ls.1.gz",
])
def test_slimming_drops_what_a_cabinet_never_reads(path):
    assert _excluded(path)


def test_licences_stay():
    assert not _excluded("/usr/share/doc/python3/copyright")


def test_nothing_the_cabinet_runs_is_masked():
    needed = {"cabinet-game.service", "serial-getty@ttyS0.service", "systemd-journald.service",
              "systemd-udevd.service", "getty.target", "multi-user.target", "tmp.mount"}
    assert not needed & set(rootfs.MASKED_UNITS)
    assert not any(unit.startswith("bundle-agent") for unit in rootfs.MASKED_UNITS)
