"""The bsdiff codec (agent/format/bsdiff.py): made by bsdiff4 on executables, applied in Python
by the device, and refused when a patch does not fit its region or its chunk."""

from __future__ import annotations

import random
import shutil
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from agent.apply import WorkBudget, WorkExceeded, apply_component
from agent.format import bsdiff, codec
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from agent.payload import Payload
from bundler import encoders
from tests.sim.releases import put, write_release
from tests.sim.tools import run_cli


def edited_executable() -> tuple[bytes, bytes]:
    """A real executable and a rebuild of it in which code moved: a function grew by 64 bytes,
    so every 32-bit address after it is 64 more (what suffix sorting plus byte differences
    capture, and a match finder sees as thousands of one-byte changes)."""
    old = Path(shutil.which("ls")).read_bytes()
    rng = random.Random(9)
    new = bytearray(old)
    for _ in range(3000):
        at = rng.randrange(len(new) // 2, len(new) - 4) & ~3
        word = int.from_bytes(new[at:at + 4], "little")
        new[at:at + 4] = ((word + 64) & 0xFFFFFFFF).to_bytes(4, "little")
    new[len(new) // 2:len(new) // 2] = bytes(64)
    return old, bytes(new)


def test_an_executable_round_trips_and_beats_zstd(tmp_path):
    old, new = edited_executable()
    stored = encoders.BSDIFF.encode(new, 19, old)
    assert stored is not None
    assert codec.decode("bsdiff", stored, len(new), old) == new
    # Stored uncompressed, for a block to compress: ranked by a frame of it alone.
    assert len(encoders.compress(stored, 19)) < len(encoders.ZSTD_PATCH.encode(new, 19, old))
    assert [name for name, _ in encoders.ranked(new, 19, old)][0] == "bsdiff"


def test_an_executable_bsdiff_patched_gets_only_the_quick_zstd_patch():
    old, new = edited_executable()
    candidates = dict(encoders.ranked(new, 19, old))
    assert "bsdiff" in candidates
    assert candidates["zstd-patch"] == encoders.compress(new, encoders.QUICK_PATCH_LEVEL, old)
    # Where bsdiff does not apply (not an executable), both patch levels are still tried.
    text = b"text " + new
    thorough = min(encoders.compress(text, level, old) for level in (19, encoders.QUICK_PATCH_LEVEL))
    assert dict(encoders.ranked(text, 19, old))["zstd-patch"] == thorough


def test_only_executables_and_small_regions_are_tried():
    old, new = edited_executable()
    assert encoders.BSDIFF.encode(b"text " + new, 19, old) is None
    assert encoders.BSDIFF.encode(new, 19, old + bytes(encoders.BSDIFF_MAX_REGION)) is None


def _patch(controls, diff: bytes, extra: bytes) -> bytes:
    return bsdiff.pack(controls, diff, extra)


@pytest.mark.parametrize("patch, size, complaint", [
    (_patch([(4, 0, 0)], b"\0" * 4, b""), 4, None),
    (_patch([(4, 0, 0)], b"\0" * 4, b""), 5, "do not match"),
    (_patch([(9, 0, 0)], b"\0" * 9, b""), 9, "outside its base region"),
    (_patch([(2, 0, -5), (2, 0, 0)], b"\0" * 4, b""), 4, "outside its base region"),
    (_patch([(2, 1, 0)], b"\0" * 2, b"x"), 3, None),
    (_patch([(2, 1, 0)], b"\0" * 2, b"xy"), 3, "do not match"),
    (b"\x85", 3, "truncated"),
    (_patch([(1, 0, 0)] * 5, b"\0" * 5, b""), 4, "builds more than its chunk"),
    (_patch([(0, 0, 0)] * 16 + [(4, 0, 0)], b"\0" * 4, b""), 4, "17 controls for a chunk of 4 bytes"),
])
def test_a_patch_must_fit_its_region_and_its_chunk(patch, size, complaint):
    region = b"ABCDEFGH"
    if complaint is None:
        assert len(bsdiff.apply(region, patch, size)) == size
    else:
        with pytest.raises(bsdiff.PatchError, match=complaint):
            bsdiff.apply(region, patch, size)


def test_bytes_are_added_modulo_256_without_carries():
    region = bytes(range(256))
    diff = bytes((7 * i + 200) % 256 for i in range(256))
    out = bsdiff.apply(region, _patch([(256, 0, 0)], diff, b""), 256)
    assert out == bytes((a + b) % 256 for a, b in zip(region, diff))


def test_a_long_add_is_summed_a_slice_at_a_time_in_memory_of_about_its_chunk():
    """One control may add a whole chunk of differences: summed at once, its integers would take
    ~9 times the chunk (tests/test_manifest_memory.py has it at the format's limits)."""
    size = (16 << 20) + 100  # a slice's end falls inside the 256-byte pattern
    region = bytes(range(256)) * (size // 256 + 1)
    diff = bytes((7 * i + 200) % 256 for i in range(256)) * (size // 256 + 1)
    expected = bytes((a + b) % 256 for a, b in zip(region[:256], diff[:256])) * (size // 256 + 1)
    patch = _patch([(size, 0, 0)], diff[:size], b"")
    tracemalloc.start()
    try:
        out = bsdiff.apply(region, patch, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == expected[:size]
    assert peak < 2 * size, f"{peak} bytes traced for a {size}-byte chunk"


def test_a_bsdiff_object_is_the_patch_itself_not_a_frame_of_it():
    region = b"ABCDEFGH"
    patch = _patch([(4, 0, 0)], b"\0" * 4, b"")
    assert codec.decode("bsdiff", patch, 4, region) == b"ABCD"
    with pytest.raises(codec.CorruptObject, match="a bsdiff patch"):
        codec.decode("bsdiff", codec.compress(patch, 3), 4, region)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=64), st.integers(1, 100))
def test_applying_takes_any_bytes(patch, region, size):
    try:
        out = bsdiff.apply(region, patch, size)
    except bsdiff.PatchError:
        return
    assert len(out) == size


def test_a_patch_of_as_many_controls_as_allowed_is_applied_in_memory_of_about_its_chunk():
    """A signed patch may hold a control per 16 bytes of its chunk (and 16 more); the controls
    are read as they are applied, never held together (~100 bytes each as Python tuples)."""
    size = 1 << 18
    extra = bytes(range(256)) * (size // 256)
    patch = _patch([(0, 16, 0)] * (size // 16), b"", extra)
    tracemalloc.start()
    try:
        out = bsdiff.apply(b"", patch, size)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out == extra
    assert peak < 4 * size, f"{peak} bytes traced for a {size}-byte chunk"


def test_applying_a_bsdiff_patch_is_paid_for_in_cpu_time(trust, tmp_path, monkeypatch):
    """A patch's controls are applied in Python, at a cost the bytes do not tell: its CPU time is
    charged to the install's budget (T-WORK), as re-deflating gzip content is."""
    old, new = edited_executable()
    for name, data, sequence in (("r1", old, 1), ("r2", new, 2)):
        put(tmp_path / name / "platform", "usr/bin/ls", data, 0o755)
        write_release(tmp_path / name, {"platform": (f"{sequence}.0", sequence)})
    keys = ["--key", trust.key("rel1"), "--key", trust.key("rel2")]
    run_cli("bundle", "make", "--release", tmp_path / "r2/release.toml", "--base", tmp_path / "r1/release.toml",
            *keys, "--out", tmp_path / "d12", "--level", "3", check=True)
    manifest = Manifest.from_stored(manifest_path(tmp_path / "d12").read_bytes())
    component = manifest.component("platform")
    assert "bsdiff" in manifest.codecs
    monkeypatch.setattr(WorkBudget, "FREE_CPU_SECONDS", 0.0)
    monkeypatch.setattr(WorkBudget, "CPU_SECONDS_PER_MIB", 0.0)
    with Payload(tmp_path / "d12", manifest) as payload, pytest.raises(WorkExceeded, match="'usr/bin/ls': re-deflating"):
        apply_component(component, payload, tmp_path / "out", base=tmp_path / "r1/platform", set_owner=False)
