"""The agent on real filesystems: a disk that fills up while staging, and reflink clones (docs/AGENT.md).

Each test loop-mounts its own image (root only) and puts the whole device on it - configuration,
state and environments - as on a machine with one data partition. Images are sparse and deleted
in teardown; every mount and loop device is released even when a test fails.

The reflink measurements are printed; ``pytest -rP -k reflink`` shows them.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import struct
import threading
from pathlib import Path

import pytest

import agent.install
from agent.install import StagingFailed
from agent.boot.base import BootError
from agent.device import Device
from keys.errors import UpdateError
from tests.sim.device import STAGED, Cabinet, World
from tests.sim.disks import MiB, fill, loop_mounted
from tests.sim.releases import put, write_release


_TEMPORARY = (".staging", ".tmp-", ".partial-", ".bundle-new-")  # the agent's and keys/files.py's names


def leftovers(cabinet: Cabinet) -> list[str]:
    """Half-built trees and temporary files the agent must never leave behind."""
    found = []
    for directory, subdirectories, files in os.walk(cabinet.dir):
        for name in subdirectories + files:
            if name.endswith(".old") or any(mark in name for mark in _TEMPORARY):
                found.append(os.path.relpath(os.path.join(directory, name), cabinet.dir))
    return found


def committed(cabinet: Cabinet) -> tuple[bytes, dict | None]:
    """The committed state file's bytes (a failed install never touches it) and the journal's
    pending install (a failed one is cleared)."""
    journal = cabinet.dir / "state/journal.json"
    pending = json.loads(journal.read_bytes())["pending"] if journal.exists() else None
    return (cabinet.dir / "state/state.json").read_bytes(), pending


# --- releases with big files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


def _release_after_r2(world: World, name: str, files: dict[str, bytes]) -> None:
    """Release 2 with a newer platform (13.3.0, sequence 8) holding extra ``files``."""
    shutil.copytree(world.dir / "r2", world.dir / name, symlinks=True)
    write_release(world.dir / name, {"platform": ("13.3.0", 8), "game/lucky-sevens": ("2.0", 3),
                                     "game/fortune-wheel": ("1.0", 1)})
    for path, data in files.items():
        put(world.dir / name / "platform", path, data)


@pytest.fixture(scope="module")
def too_big(world) -> Path:
    """A full bundle whose platform carries 24 MiB that no compressor can shrink."""
    _release_after_r2(world, "r3", {"usr/share/cabinet/attract.mp4": random.Random(3).randbytes(24 * MiB)})
    return world.make("full-3", "r3", None, ("rel1", "rel2"), "--level", "1")


@pytest.fixture(scope="module")
def many_files(world) -> Path:
    """A full bundle whose platform adds 400 tiny files: a few KiB, but 400 inodes."""
    _release_after_r2(world, "r4", {f"usr/share/locale/l{i:03}/cabinet.mo": b"msgid\n" for i in range(400)})
    return world.make("full-4", "r4")


# --- the disk fills up --------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    with loop_mounted("ext4", 64 * MiB, tmp_path) as mounted:
        yield mounted


@pytest.fixture
def provisioned(world, small_disk) -> Cabinet:
    cabinet = Cabinet(world, small_disk.path)
    cabinet.provision()
    return cabinet


def test_an_update_that_cannot_fit_is_refused_before_anything_is_written(provisioned, small_disk, too_big):
    cabinet = provisioned
    ballast = fill(small_disk, leave=16 * MiB)
    before, used = cabinet.snapshot(), small_disk.used()
    result = cabinet.agent("install", too_big)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "not enough space to stage the update" in result.stderr and "hint: free space" in result.stderr
    assert cabinet.snapshot() == before  # same running tree, same state bytes, no new environment
    assert small_disk.used() - used < 64 * 1024  # the audit log's lines, nothing else
    assert leftovers(cabinet) == []
    # The technician frees space; the same update now installs.
    ballast.unlink()
    result = cabinet.agent("install", too_big)
    assert result.returncode == STAGED, result.stdout + result.stderr
    assert cabinet.status()["pending"]["environment"] == "env-2"
    assert leftovers(cabinet) == []


@pytest.mark.parametrize("runs_out_in", ["spool", "clone", "staging", "everything"])
def test_disk_full_during_the_install_leaves_the_running_system_alone(provisioned, small_disk, too_big,
                                                                      monkeypatch, runs_out_in):
    """The free-space checks are skipped (in-process) so the real ENOSPC paths run: the disk fills
    up while the update is copied from the medium, while the running environment is cloned, while a
    component is staged, or it is full before anything can be written at all."""
    cabinet = provisioned
    payload = sum(p.stat().st_size for p in (too_big / "payload").iterdir())
    leave = {"spool": payload - 8 * MiB, "clone": payload + 256 * 1024, "staging": payload + 6 * MiB,
             "everything": 0}[runs_out_in]
    ballast = fill(small_disk, leave)
    before, state_before = cabinet.snapshot(), committed(cabinet)
    monkeypatch.setattr(agent.install, "check_staging_space", lambda *args: None)
    monkeypatch.setattr(agent.install, "check_spool_space", lambda *args: None)
    device = Device.open(cabinet.config)
    with pytest.raises((OSError, UpdateError)) as raised:
        agent.install.install(device, too_big)
    error = raised.value
    if runs_out_in in ("spool", "everything"):
        assert isinstance(error, StagingFailed), repr(error)
        assert "copying the update from the medium failed: No space left on device" in str(error)
    elif runs_out_in == "staging":
        assert isinstance(error, StagingFailed) and "No space left on device" in str(error), repr(error)
        assert "free space" in error.hint
    else:
        assert isinstance(error, BootError) and "No space left on device" in str(error), repr(error)
        assert error.hint == "check free space on the environments' filesystem"
    after = cabinet.snapshot()
    assert after[0] == before[0], "the running environment was written to"
    assert after[2] == ["env-1"], "the half-built environment was not removed"
    assert committed(cabinet) == state_before
    assert after[1] == before[1]  # the committed state file is never touched by a failed install
    if runs_out_in != "everything":
        result = json.loads((cabinet.dir / "state/result.json").read_bytes())
        assert result["last_result"]["outcome"] == "failed"
        assert "No space left on device" in result["last_result"]["message"]
        event = "spool-failed" if runs_out_in == "spool" else "staging-failed"
        assert f'"event": "{event}"' in (cabinet.dir / "state/audit.log").read_text()
    assert leftovers(cabinet) == []
    # Space freed, the real agent installs the same bundle.
    monkeypatch.undo()
    ballast.unlink()
    result = cabinet.agent("install", too_big)
    assert result.returncode == STAGED, result.stdout + result.stderr
    # A staging that began used its name (env-2); names are never made twice (agent/boot/dirs.py).
    staged_before = runs_out_in in ("clone", "staging")
    assert cabinet.status()["pending"]["environment"] == ("env-3" if staged_before else "env-2")
    assert leftovers(cabinet) == []


def test_inodes_run_out(world, tmp_path, many_files, monkeypatch):
    """400 tiny files need few bytes but 400 inodes: the check counts inodes and refuses before
    writing; without the check, the real ENOSPC while staging leaves the device as it was."""
    with loop_mounted("ext4", 64 * MiB, tmp_path, "-N", "256") as disk:
        cabinet = Cabinet(world, disk.path)
        cabinet.provision()
        assert os.statvfs(disk.path).f_ffree < 400
        before, state_before = cabinet.snapshot(), committed(cabinet)
        result = cabinet.agent("install", many_files)
        output = result.stdout + result.stderr
        assert result.returncode == 3 and "not enough inodes" in output, output
        assert cabinet.snapshot() == before and committed(cabinet) == state_before
        monkeypatch.setattr(agent.install, "check_staging_space", lambda *args: None)
        monkeypatch.setattr(agent.install, "check_spool_space", lambda *args: None)
        with pytest.raises(StagingFailed, match="No space left on device"):
            agent.install.install(Device.open(cabinet.config), many_files)
        assert cabinet.snapshot()[0] == before[0] and cabinet.snapshot()[2] == ["env-1"]
        assert committed(cabinet) == state_before
        assert '"event": "staging-failed"' in (cabinet.dir / "state/audit.log").read_text()
        assert leftovers(cabinet) == []
        assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")


# --- reflink clones ---------------------------------------------------------------------------------

_FS_IOC_FIEMAP = 0xC020660B  # linux/fs.h: _IOWR('f', 11, struct fiemap)
_FIEMAP_FLAG_SYNC, _EXTENT_LAST, _EXTENT_SHARED = 0x1, 0x1, 0x2000


def shared_bytes(path: Path) -> int:
    """Bytes of ``path`` in extents the filesystem reports as shared with another file (FIEMAP)."""
    shared, start, count = 0, 0, 256
    with open(path, "rb") as handle:
        while True:
            request = bytearray(struct.pack("=QQLLLL", start, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, count, 0)
                                + bytes(56 * count))
            fcntl.ioctl(handle.fileno(), _FS_IOC_FIEMAP, request)
            mapped = struct.unpack_from("=L", request, 20)[0]
            if mapped == 0:
                return shared
            for i in range(mapped):
                logical, _, length = struct.unpack_from("=QQQ", request, 32 + 56 * i)
                flags = struct.unpack_from("=L", request, 32 + 56 * i + 40)[0]
                if flags & _EXTENT_SHARED:
                    shared += length
                if flags & _EXTENT_LAST:
                    return shared
            start = logical + length


BIG_UNCHANGED = 64 * MiB  # platform: usr/share/cabinet/attract.bin, the same in both releases
BIG_PATCHED = 16 * MiB  # platform: usr/lib/cabinet/engine.img, 8 bytes differ
GAME_ART = 32 * MiB  # game/lucky-sevens: art.bin, a component the update leaves alone


@pytest.fixture(scope="module")
def big_releases(world) -> tuple[Path, Path]:
    """Releases b1 and b2 (the platform patched in 8 bytes of one file): full-b1, delta db12."""
    rng = random.Random(7)
    b1 = world.dir / "b1"
    write_release(b1, {"platform": ("20.0", 20), "game/lucky-sevens": ("5.0", 5)})
    put(b1 / "platform", "usr/share/cabinet/attract.bin", rng.randbytes(BIG_UNCHANGED))
    put(b1 / "platform", "usr/lib/cabinet/engine.img", rng.randbytes(BIG_PATCHED))
    put(b1 / "platform", "etc/cabinet.conf", "payout_table = standard\n")
    put(b1 / "games/lucky-sevens", "art.bin", rng.randbytes(GAME_ART))
    put(b1 / "games/lucky-sevens", "paytable.json", '{"777": 500}\n')
    b2 = world.dir / "b2"
    shutil.copytree(b1, b2)
    write_release(b2, {"platform": ("20.1", 21), "game/lucky-sevens": ("5.0", 5)})
    with open(b2 / "platform/usr/lib/cabinet/engine.img", "r+b") as handle:
        handle.seek(BIG_PATCHED // 2)
        handle.write(b"PATCHED!")
    return (world.make("full-b1", "b1", None, ("rel1", "rel2"), "--level", "1"),
            world.make("db12", "b2", "b1"))


@pytest.mark.parametrize("kind", ["btrfs", "xfs", "ext4"])
def test_reflink_clone_writes_only_what_changed(world, tmp_path, big_releases, kind):
    """A delta that patches 8 bytes of one 16 MiB platform file, next to 96 MiB that stay the same.

    On btrfs and xfs the untouched component and the unchanged files of the updated one share
    their blocks with the running environment (the clone is ``cp --reflink``; the apply engine
    keeps or FICLONEs unchanged files): the install writes about the patched file, which the
    engine rebuilds whole. ext4 has no reflinks: its numbers are printed for contrast, not
    asserted. The image is 512 MiB because the free-space check asks for a full copy of the
    running environment plus the whole updated component (192 MiB here) even where reflinks
    make the install cost about 16 MiB.
    """
    full, delta = big_releases
    with loop_mounted(kind, 512 * MiB, tmp_path) as disk:
        cabinet = Cabinet(world, disk.path)
        cabinet.agent("provision", full, check=True)
        cabinet.agent("boot", check=True)
        used, written = disk.used(), disk.written()
        samples = [used]
        done = threading.Event()

        def sample() -> None:  # peak use while the install runs, as df shows it (no sync; btrfs
            # counts data only once written back, so its peak reads low)
            while not done.wait(0.005):
                samples.append(disk.used_now())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = cabinet.agent("install", delta)
        finally:
            done.set()
            sampler.join()
        assert result.returncode == STAGED, result.stdout + result.stderr
        grown, wrote, peak = disk.used() - used, disk.written() - written, max(samples) - used
        new = disk.path / "envs/env-2"
        shared = {name: shared_bytes(new / name) for name in
                  ("platform/usr/share/cabinet/attract.bin", "games/lucky-sevens/art.bin",
                   "platform/usr/lib/cabinet/engine.img")}
        print(f"{kind}: install of the delta: filesystem use +{grown / MiB:.1f} MiB (peak sampled "
              f"+{peak / MiB:.1f} MiB), {wrote / MiB:.1f} MiB written to the device; shared extents: "
              + ", ".join(f"{Path(n).name} {s / MiB:.1f} MiB" for n, s in shared.items()))
        assert leftovers(cabinet) == []
        if kind == "ext4":
            return
        # Unchanged component (cp --reflink) and unchanged file of the updated one (FICLONE): shared.
        assert shared["games/lucky-sevens/art.bin"] == GAME_ART
        assert shared["platform/usr/share/cabinet/attract.bin"] == BIG_UNCHANGED
        # Written: the patched file, the journal/state and metadata; far below the 96 MiB unchanged.
        slack = 8 * MiB
        assert grown < BIG_PATCHED + slack, f"{kind}: the filesystem grew by {grown} bytes"
        assert wrote < BIG_PATCHED + slack, f"{kind}: {wrote} bytes written"
