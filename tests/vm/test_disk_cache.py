"""The disk cache mode the VM power cuts rely on (tests/vm/machine.py, "Disk cache and power
cuts"): with a qcow2 overlay and ``cache=writeback``, a write the guest did not flush is lost when
QEMU is killed, a flushed one is kept. If QEMU ever kept unflushed writes, the power-cut scenarios
would stop proving anything about flushes: this test would say so.

The writes come from QEMU's own ``qemu-io`` monitor command on the running machine's disk (no guest
system needed), the kill is the harness's power cut, and the result is read back with qemu-img.
"""

from __future__ import annotations

import shutil

import pytest

from tests.vm import debian, esp
from tests.vm.machine import Drive, Machine, overlay

MiB = esp.MiB
AT = 1 * MiB  # a cluster of the overlay that nothing wrote before


@pytest.fixture
def base(tmp_path):
    debian.need(*debian.QEMU)
    path = tmp_path / "base.raw"
    with open(path, "wb") as handle:
        handle.truncate(16 * MiB)
    return path


def cut_after(directory, drive: Drive, *commands: str) -> bytes:
    """Run ``qemu-io`` commands on the machine's disk, kill QEMU, return the MiB at AT as it stays."""
    machine = Machine(directory / "vm", [drive], memory=128, cpus=1)
    with machine:
        for command in commands:
            machine.hmp(f'qemu-io disk0 "{command}"')
    raw = directory / "read-back.raw"
    esp.run("qemu-img", "convert", "-f", drive.format, "-O", "raw", drive.path, raw)
    return raw.read_bytes()[AT:AT + MiB]


WRITE = f"write -P 0xab {AT} {MiB}"


def test_an_unflushed_write_to_a_new_qcow2_cluster_is_lost(base, tmp_path):
    assert set(cut_after(tmp_path, overlay(base, tmp_path / "o.qcow2"), WRITE)) == {0}


def test_a_flushed_write_survives(base, tmp_path):
    assert set(cut_after(tmp_path, overlay(base, tmp_path / "o.qcow2"), WRITE, "flush")) == {0xab}


def test_raw_images_would_keep_unflushed_writes(base, tmp_path):
    # Why the scenarios use qcow2: on a raw image the host's page cache keeps what QEMU wrote.
    shutil.copyfile(base, tmp_path / "copy.raw")
    assert set(cut_after(tmp_path, Drive(tmp_path / "copy.raw"), WRITE)) == {0xab}


def test_a_rewrite_of_a_cluster_already_mapped_survives_unflushed(base, tmp_path):
    # The limit of this model (tests/vm/machine.py): only writes to newly allocated clusters are lost.
    drive = overlay(base, tmp_path / "o.qcow2")
    assert set(cut_after(tmp_path, drive, f"write -P 0x11 {AT} {MiB}", "flush", WRITE)) == {0xab}
