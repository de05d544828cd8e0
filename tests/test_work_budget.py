"""T-WORK: what an install may cost the device relative to what it writes (agent/apply.py)."""

from __future__ import annotations

import gzip

import pytest

from agent.apply import BaseTree, WorkBudget, WorkExceeded
from agent.beneath import Beneath
from agent.format.tree import Prefix

MiB = 1 << 20


def test_base_regions_read_again_and_again_are_stopped(tmp_path, monkeypatch):
    """Thousands of patch chunks may each name the same large base region: each read counts."""
    monkeypatch.setattr(WorkBudget, "FREE_BYTES", 32 * MiB)
    data = bytes(8 * MiB)
    (tmp_path / "big.dat").write_bytes(data)
    prefix = Prefix(path="big.dat", offset=0, length=len(data))
    budget = WorkBudget()
    with Beneath.open_root(tmp_path) as root:
        base = BaseTree(root, budget)
        with pytest.raises(WorkExceeded, match="'big.dat': the bundle makes the device read .* bytes of base files "
                                               "and blocks to write 0; at most 16 per byte written"):
            for _ in range(100):
                base.region(prefix)
    assert budget.processed <= 32 * MiB + 8 * MiB


def test_a_gunzip_region_pays_for_the_compressed_bytes_it_reads_too(tmp_path, monkeypatch):
    """One byte of content behind 1.2 MB of empty gzip members: charged for what is read, not
    only for the byte of content."""
    monkeypatch.setattr(WorkBudget, "FREE_BYTES", MiB // 2)
    data = gzip.compress(b"", mtime=0) * 60_000 + gzip.compress(b"x", mtime=0)
    (tmp_path / "empty-members.gz").write_bytes(data)
    prefix = Prefix(path="empty-members.gz", offset=0, length=1, gunzip=True)
    with Beneath.open_root(tmp_path) as root:
        with pytest.raises(WorkExceeded, match="'empty-members.gz'"):
            BaseTree(root, WorkBudget()).region(prefix)


def test_reads_paid_for_by_writes_are_allowed(tmp_path, monkeypatch):
    monkeypatch.setattr(WorkBudget, "FREE_BYTES", 0)
    budget = WorkBudget()
    budget.wrote(MiB)
    budget.read(16 * MiB, "a")  # a patched large file reads its base region three times over, at most
    with pytest.raises(WorkExceeded):
        budget.read(1, "a")


def test_deflating_and_bsdiff_are_paid_by_cpu_time_per_byte_written():
    budget = WorkBudget()
    budget.computed(WorkBudget.FREE_CPU_SECONDS, "a.gz")
    budget.wrote(2 * MiB)
    budget.computed(2 * WorkBudget.CPU_SECONDS_PER_MIB, "a.gz")
    with pytest.raises(WorkExceeded, match="re-deflating gzip content and applying bsdiff patches took .* s of CPU"):
        budget.computed(0.1, "a.gz")
