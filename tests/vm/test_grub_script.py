"""The cabinet's GRUB script on its own: default, one-time trial and fallback, with no kernel and
no agent (docs/DEVICE.md, "GRUB").

The repository's BOOTX64.EFI and grub.cfg boot under OVMF (TCG) from a FAT32 ESP made with
mkfs.vfat and mtools, beside a small btrfs pool whose environments hold fake kernels: GRUB makes
its choice, writes what it consumes with ``save_env``, prints ``cabinet: booting ENV`` and then
fails to load the fake kernel. The test reads the line, kills QEMU and reads both environment
blocks back out of the ESP with mtools and ``grub-editenv list``. A boot takes about 4 s on an idle
machine; the cases are chosen so that each boot checks something new.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.vm import debian, esp
from tests.vm.machine import Boot, Drive, Machine
from tests.vm.pool import KERNEL, WHOLE, btrfs_pool

# The pool every case boots from: env-1 and env-2 are whole (env-2's kernel is a symlink, as
# Debian installs it); env-3 has a kernel but no initramfs, so grub.cfg must never choose it.
ENVS = {"env-1": WHOLE, "env-2": WHOLE, "env-3": (KERNEL,)}
BOOT_SECONDS = 60  # a boot takes ~4 s under TCG; generous for a loaded CI machine


class GrubCabinet:
    """A machine whose boot disk holds the repository's ESP (blocks as given) and the pool, as a
    cabinet's does, after the disks in ``before`` (another disk GRUB finds first); each
    :meth:`boot` is a cold boot that ends as soon as grub.cfg announces its choice."""

    def __init__(self, grub, directory, block_a: bytes, block_b: bytes, before: tuple[Path, ...] = ()):
        directory.mkdir(parents=True, exist_ok=True)
        partition = esp.cabinet_esp(directory / "esp.img", grub["uuid"], grub["bootx64"], (block_a, block_b))
        self.disk = directory / "disk.img"
        self.esp_at = esp.gpt_disk(self.disk, [partition, grub["pool"]])[0]
        partition.unlink()
        drives = [Drive(path, readonly=True) for path in before] + [Drive(self.disk)]
        self.machine = Machine(directory / "vm", drives, memory=128, cpus=1)
        self.work = directory

    def boot(self) -> Boot:
        since = self.machine.mark()
        self.machine.start()
        try:
            return self.machine.wait_boot(BOOT_SECONDS, since=since)
        finally:
            self.machine.stop()  # the power goes: GRUB wrote what it writes before announcing

    def said(self, text: str) -> bool:
        return text in self.machine.text()

    def blocks(self) -> tuple[dict | None, dict | None]:
        """Both blocks as ``grub-editenv list`` reads them (None: it refuses the block)."""
        partition = esp.extract(self.disk, *self.esp_at, self.work / "esp-now.img")
        return tuple(esp.parse_envblock(data) for data in esp.read_blocks(partition))  # type: ignore[return-value]

    def close(self) -> None:
        self.machine.close()


def block(**variables: str) -> bytes:
    return esp.block_bytes(**variables)


COMMITTED = {"default_env": "env-1", "trial_env": ""}


@pytest.fixture(scope="module")
def grub(tmp_path_factory):
    """The repository's GRUB and a pool image, built once for the module."""
    if os.geteuid() != 0:
        pytest.skip("the btrfs pool image is loop-mounted to be made: needs root")
    debian.need(*debian.GRUB, *debian.QEMU, "btrfs-progs")
    work = tmp_path_factory.mktemp("grub")
    pool = work / "pool.img"
    return {"bootx64": esp.standalone_grub(esp.EMBEDDED_CFG, work / "BOOTX64.EFI"),
            "uuid": btrfs_pool(pool, ENVS, symlinked=("env-2",)), "pool": pool}


@pytest.fixture
def cabinet(grub, tmp_path):
    made = []

    def make(block_a: bytes, block_b: bytes | None = None, before: tuple[Path, ...] = ()) -> GrubCabinet:
        made.append(GrubCabinet(grub, tmp_path / f"cabinet{len(made)}", block_a,
                                block_a if block_b is None else block_b, before))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_no_trial_boots_the_default_and_writes_nothing(cabinet):
    device = cabinet(block(**COMMITTED))
    assert device.boot() == Boot("env-1", trial=False)
    assert device.blocks() == (COMMITTED, COMMITTED)


def test_a_trial_is_consumed_in_both_blocks_before_it_boots_and_the_next_boot_falls_back(cabinet):
    device = cabinet(block(default_env="env-1", trial_env="env-2"))
    assert device.boot() == Boot("env-2", trial=True)
    assert device.blocks() == (COMMITTED, COMMITTED), "GRUB must consume the trial before booting it"
    # The trial never reached its health check (the power went): the committed environment returns.
    assert device.boot() == Boot("env-1", trial=False)


# Block A as a power cut, a bad disk or a bug could leave it; B names env-2, so a boot of env-2
# proves B was read (A, if it were believed, would give env-1, env-9 or env-3).
DAMAGED_A = {
    "garbage": lambda: random.Random(12).randbytes(esp.ENVBLOCK_SIZE),
    "empty (as grub-editenv leaves it when the power goes after its truncation)": lambda: b"",
    "names a missing environment": lambda: block(default_env="env-9", trial_env=""),
    "names an environment without an initramfs": lambda: block(default_env="env-3", trial_env=""),
}


@pytest.mark.parametrize("damage", DAMAGED_A)
def test_a_damaged_block_a_means_block_b_is_used(cabinet, damage):
    device = cabinet(DAMAGED_A[damage](), block(default_env="env-2", trial_env=""))
    assert device.boot() == Boot("env-2", trial=False)
    assert not device.said("no usable environment"), "B names a usable environment: no search of the pool"


def test_a_trial_in_block_b_is_consumed_there_when_a_is_damaged(cabinet):
    device = cabinet(b"", block(default_env="env-1", trial_env="env-2"))
    assert device.boot() == Boot("env-2", trial=True)
    assert device.blocks()[1] == COMMITTED
    assert device.boot() == Boot("env-1", trial=False)


@pytest.mark.parametrize("trial", ["env-9", "../env-1"])
def test_a_trial_of_an_unusable_environment_boots_the_default(cabinet, trial):
    device = cabinet(block(default_env="env-1", trial_env=trial))
    assert device.boot() == Boot("env-1", trial=False)
    assert device.said(f"cabinet: trial {trial} not booted")
    assert device.blocks() == (COMMITTED, COMMITTED), "an unusable trial is consumed too"


def test_with_both_blocks_unusable_any_whole_environment_boots(cabinet):
    # grub.cfg: "Neither block names a usable environment ... Any environment with a kernel will do".
    device = cabinet(b"", block(default_env="env-3", trial_env=""))
    booted = device.boot()
    assert device.said("cabinet: no usable environment")
    assert booted in (Boot("env-1", False), Boot("env-2", False)), "env-3 has no initramfs: never chosen"


def test_another_disk_with_the_pools_uuid_is_never_booted(cabinet, grub, tmp_path):
    """T-BOOT-STICK: the pool's UUID is no secret (it is on the kernel command line). A stick or
    disk carrying a filesystem with that UUID, found by GRUB before the boot disk, must not
    offer its system: grub.cfg searches the boot disk first and stops there."""
    decoy = tmp_path / "decoy.img"
    btrfs_pool(decoy, {"env-decoy": WHOLE}, uuid=grub["uuid"])
    device = cabinet(block(**COMMITTED), before=(decoy,))
    assert device.boot() == Boot("env-1", trial=False)
    assert not device.said("env-decoy")
