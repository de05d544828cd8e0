"""A file larger than a volume, applied with bounded memory (peak RSS measured in a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.releases import write_release
from tests.sim.tools import BIN

MiB = 1 << 20
SIZE = 256 * MiB

MEASURE = """
import json, resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": result.returncode, "out": result.stdout, "err": result.stderr,
                  "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _measured(*args) -> dict:
    command = [sys.executable, "-c", MEASURE, str(BIN / args[0]), *map(str, args[1:])]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def _random_file(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        for _ in range(size // MiB):
            handle.write(os.urandom(MiB))  # incompressible: the stored data really spans volumes


@pytest.fixture(scope="module")
def big_releases(tmp_path_factory):
    base = tmp_path_factory.mktemp("big")
    r1 = write_release(base / "r1", {"platform": ("1", 1)})
    _random_file(base / "r1/platform/assets.pak", SIZE)
    r2 = write_release(base / "r2", {"platform": ("2", 2)})
    with open(base / "r1/platform/assets.pak", "rb") as old, open(base / "r2/platform/assets.pak", "wb") as new:
        new.write(old.read(50 * MiB))
        new.write(os.urandom(MiB))  # an insertion shifts everything after it
        rest = bytearray(old.read())
        rest[100 * MiB:100 * MiB + 16] = b"edited in place."
        new.write(rest)
        new.write(os.urandom(3 * MiB))  # appended
    return r1, r2


def test_full_bundle_spans_volumes_and_applies_in_bounded_memory(trust, big_releases, tmp_path, cli):
    r1, _ = big_releases
    made = _measured("bundle", "make", "--release", r1, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
                     "--out", tmp_path / "full", "--level", "1", "--volume-size", "64M")
    assert made["rc"] == 0, made["err"]
    volumes = list((tmp_path / "full/payload").iterdir())
    assert len(volumes) >= 4 and all(v.stat().st_size <= 64 * MiB for v in volumes)
    applied = _measured("bundle", "verify", tmp_path / "full", "--root", trust.root, "--apply",
                        "--work-dir", tmp_path)
    assert applied["rc"] == 0, applied["err"]
    assert "every file matches the manifest" in applied["out"]
    print(f"\nfull 256 MiB: make peak {made['peak_mib']:.0f} MiB, apply peak {applied['peak_mib']:.0f} MiB")
    assert applied["peak_mib"] < 160, "apply must not hold the file in memory"
    assert made["peak_mib"] < 600


def test_delta_of_a_shifted_large_file(trust, big_releases, tmp_path):
    r1, r2 = big_releases
    made = _measured("bundle", "make", "--release", r2, "--base", r1, "--key", trust.key("rel1"),
                     "--key", trust.key("rel2"), "--out", tmp_path / "delta", "--level", "3", "--volume-size", "64M")
    assert made["rc"] == 0, made["err"]
    payload = sum(p.stat().st_size for p in (tmp_path / "delta/payload").iterdir())
    # 4 MiB of new random bytes must travel; the 256 MiB that only moved must not.
    assert payload < 8 * MiB, payload
    applied = _measured("bundle", "verify", tmp_path / "delta", "--root", trust.root, "--base",
                        f"platform={r1.parent / 'platform'}", "--work-dir", tmp_path)
    assert applied["rc"] == 0, applied["err"]
    print(f"\ndelta: payload {payload / MiB:.1f} MiB, make peak {made['peak_mib']:.0f} MiB, "
          f"apply peak {applied['peak_mib']:.0f} MiB")
    assert applied["peak_mib"] < 250


def _many_files(tree: Path, count: int, changed_every: int = 0) -> None:
    """``count`` small files, 500 per folder; with ``changed_every``, every so many differ."""
    for number in range(count):
        folder = tree / f"d{number // 500:03d}"
        if number % 500 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = f"file {number} {'x' * (number % 300)}\n"
        if changed_every and number % changed_every == 0:
            data += "changed\n"
        (folder / f"f{number:06d}.txt").write_text(data)


def test_a_delta_at_the_entry_limit_is_made_and_verified_in_under_256_mib(trust, tmp_path):
    """Memory that grows with the number of entries (listings, the trees' stamps, the manifest's
    text) at the most a bundle may list: MAX_ENTRIES over all components. It was 419 MiB to make."""
    from agent.format.manifest import MAX_ENTRIES
    files = MAX_ENTRIES - 1_000  # and a folder per 500 files
    r1 = write_release(tmp_path / "r1", {"platform": ("1", 1)})
    _many_files(tmp_path / "r1/platform", files)
    r2 = write_release(tmp_path / "r2", {"platform": ("2", 2)})
    _many_files(tmp_path / "r2/platform", files, changed_every=100)
    made = _measured("bundle", "make", "--release", r2, "--base", r1, "--key", trust.key("rel1"),
                     "--key", trust.key("rel2"), "--out", tmp_path / "delta")
    assert made["rc"] == 0, made["err"]
    applied = _measured("bundle", "verify", tmp_path / "delta", "--root", trust.root, "--base",
                        f"platform={r1.parent / 'platform'}", "--work-dir", tmp_path)
    assert applied["rc"] == 0, applied["err"]
    assert f"every file matches the manifest ({files + files // 500 + 1} entries)" in applied["out"]
    print(f"\n{files:,} files: make peak {made['peak_mib']:.0f} MiB, verify peak {applied['peak_mib']:.0f} MiB")
    assert made["peak_mib"] < 256 and applied["peak_mib"] < 256
