"""The grub-btrfs backend (agent/boot/grub_btrfs.py) on a real btrfs disk, through the real agent.

A cabinet here is tests/sim/grub_cabinet.py: subvolumes on a loop-mounted btrfs image, the
running environment mounted read-only, GRUB's environment blocks in an ESP folder. The GRUB
script itself is proven in GRUB (tests/vm/test_grub_script.py) and the whole machine in a VM
(make vm-test); here the agent's side: what it writes, what it believes, what survives a kill.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.boot import grubenv
from agent.boot.grub_btrfs import GrubBtrfsBackend
from tests.sim.disks import MiB
from tests.sim.grub_cabinet import GrubCabinet, write_release
from tests.sim.power_cut import sample
from tests.sim.summary import count_summary
from tests.sim.tools import debian_tools, run_cli

STAGED = 4
DISK = 320 * MiB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop-mounting a btrfs image needs root")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Keys, a trust root (1 of 1), releases 1, 2 and a sick 2, and their bundles."""
    debian_tools("btrfs-progs", "mkfs.btrfs", "btrfs")
    world = tmp_path_factory.mktemp("world")
    keys = world / "keys"
    for name in ("root1", "rel1"):
        run_cli("bundle", "keys", "new", name, "--dir", keys, "--no-passphrase", check=True)
    run_cli("bundle", "root", "new", "--out", keys / "root.json", "--root-key", keys / "root1.pub",
            "--signer", keys / "rel1.pub", check=True)
    run_cli("bundle", "root", "sign", keys / "root.json", "--key", keys / "root1.key", check=True)
    releases = {name: write_release(world / name, version, sequence, sick=sick)
                for name, version, sequence, sick in (("r1", "1.0.0", 1, False), ("r2", "2.0.0", 2, False),
                                                     ("r2-sick", "2.0.1", 2, True))}
    for out, release, base in (("full-1", "r1", None), ("d12", "r2", "r1"), ("d12-sick", "r2-sick", "r1")):
        args = ["bundle", "make", "--release", releases[release], "--out", world / "bundles" / out,
                "--key", keys / "rel1.key", "--level", "3"]
        run_cli(*args, *(("--base", releases[base]) if base else ()), check=True)
    for bundle in ("d12", "d12-sick"):
        (world / "sticks" / bundle).mkdir(parents=True)
        run_cli("bundle", "write", world / "sticks" / bundle, world / "bundles" / bundle, "--root",
                keys / "root.json", check=True)
    return world


def _trust(world: Path) -> list[Path]:
    return sorted((world / "keys").glob("root.json*"))


@contextlib.contextmanager
def attached(image: Path):
    device = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    assert device.returncode == 0, device.stderr
    try:
        yield device.stdout.strip()
    finally:
        subprocess.run(["losetup", "-d", device.stdout.strip()])


@pytest.fixture(scope="module")
def provisioned(world, tmp_path_factory) -> Path:
    """A disk image of a cabinet provisioned with release 1 (copied per test)."""
    directory = tmp_path_factory.mktemp("template")
    image = directory / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(DISK)
    made = subprocess.run(["mkfs.btrfs", "-q", str(image)], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    with attached(image) as device:
        cabinet = GrubCabinet.lay_out(device, directory / "work", _trust(world))
        result = cabinet.provision(world / "bundles/full-1")
        assert result.returncode == 0, result.stdout + result.stderr
    return directory


@contextlib.contextmanager
def cabinet_from(template: Path, directory: Path, world: Path):
    shutil.copytree(template, directory, symlinks=True)
    with attached(directory / "disk.img") as device:
        cabinet = GrubCabinet(device, directory / "work", _trust(world))
        try:
            yield cabinet
        finally:
            cabinet.unmount()


@pytest.fixture
def cabinet(provisioned, world, tmp_path):
    with cabinet_from(provisioned, tmp_path / "cabinet", world) as cabinet:
        yield cabinet


def _engine(cabinet: GrubCabinet, name: str) -> bytes:
    return (cabinet.pool() / "envs" / name / "usr/bin/cabinet-engine").read_bytes()


def _flags(cabinet: GrubCabinet) -> dict[str, str]:
    return {e["name"]: e["flags"] for e in cabinet.status()["environments"]}


def test_provisioned_environment_is_the_grub_default(cabinet):
    assert cabinet.boot() == "env-1"
    for which in (0, 1):
        assert cabinet.variables(which) == {"default_env": "env-1", "trial_env": ""}
    status = cabinet.status()
    assert _flags(cabinet) == {"env-1": "NR"}
    assert status["committed_environment"] == "env-1"
    uuid = subprocess.run(["btrfs", "subvolume", "show", str(cabinet.pool() / "envs/env-1")],
                          capture_output=True, text=True).stdout
    backend = GrubBtrfsBackend({"pool": "/pool", "grubenv": "/boot/efi/EFI/BOOT/env-a/grubenv",
                                "grubenv_copy": "/boot/efi/EFI/BOOT/env-b/grubenv"}, cabinet.running)
    identity = backend.environments()[0].identity
    assert "UUID:" in uuid and identity in uuid  # the subvolume's own UUID


def test_insert_trial_commit(cabinet, world):
    cabinet.boot()
    before = _engine(cabinet, "env-1")
    result = cabinet.agent("on-insert", world / "sticks/d12")
    assert result.returncode == STAGED, result.stdout + result.stderr
    for which in (0, 1):  # both copies, as GRUB reads them
        assert cabinet.variables(which) == {"default_env": "env-1", "trial_env": "env-2"}
    listed = subprocess.run(["grub-editenv", str(cabinet.block(0)), "list"], capture_output=True, text=True).stdout
    assert "trial_env=env-2" in listed
    assert _flags(cabinet) == {"env-1": "NR", "env-2": "T"}
    assert _engine(cabinet, "env-1") == before  # the running environment was never written
    assert b"2.0.0" in _engine(cabinet, "env-2")
    for local in ("etc/machine-id", "etc/fstab", "etc/bundle-agent.toml"):  # [layout] preserve
        assert (cabinet.pool() / "envs/env-2" / local).read_bytes() == (cabinet.running / local).read_bytes()

    assert cabinet.boot() == "env-2"  # the trial, consumed by the boot loader before it starts
    for which in (0, 1):
        assert cabinet.variables(which)["trial_env"] == ""
    check = cabinet.agent("boot-check")
    assert check.returncode == 0, check.stdout + check.stderr
    for which in (0, 1):
        assert cabinet.variables(which)["default_env"] == "env-2"
    assert _flags(cabinet) == {"env-1": "", "env-2": "NR"}
    assert cabinet.status()["committed_environment"] == "env-2"
    assert cabinet.boot() == "env-2"


def test_trial_that_never_reaches_its_check_falls_back(cabinet, world):
    cabinet.boot()
    assert cabinet.agent("on-insert", world / "sticks/d12").returncode == STAGED
    assert cabinet.boot() == "env-2"  # ... and it hangs before boot-check: power off
    assert cabinet.boot() == "env-1"  # GRUB alone brings the committed environment back
    check = cabinet.agent("boot-check")
    assert check.returncode == 0, check.stderr
    status = cabinet.status()
    assert status["committed_environment"] == "env-1" and _flags(cabinet) == {"env-1": "NR"}  # the failed trial is gone
    assert "env-2" in json.dumps(status["last_result"]) or "trial" in json.dumps(status)


def test_failing_health_check_rolls_back(cabinet, world):
    cabinet.boot()
    assert cabinet.agent("on-insert", world / "sticks/d12-sick").returncode == STAGED
    assert cabinet.boot() == "env-2"
    check = cabinet.agent("boot-check")
    assert check.returncode != 0 or "roll" in check.stdout.lower()
    assert "etc/sick is present" in check.stdout + check.stderr
    for which in (0, 1):
        assert cabinet.variables(which) == {"default_env": "env-1", "trial_env": ""}
    assert cabinet.boot() == "env-1"
    assert cabinet.agent("boot-check").returncode == 0
    assert cabinet.status()["committed_environment"] == "env-1"


def test_a_torn_first_block_is_read_from_the_copy_and_repaired(cabinet, world):
    cabinet.block(0).write_bytes(os.urandom(grubenv.SIZE))  # what a torn write could leave
    assert cabinet.boot() == "env-1"
    assert _flags(cabinet) == {"env-1": "NR"}  # the agent reads the copy, as GRUB does
    assert cabinet.agent("on-insert", world / "sticks/d12").returncode == STAGED
    for which in (0, 1):
        assert cabinet.variables(which) == {"default_env": "env-1", "trial_env": "env-2"}


def test_a_block_that_cannot_be_rewritten_in_place_changes_nothing(cabinet, world):
    cabinet.boot()
    cabinet.block(1).write_bytes(cabinet.block(1).read_bytes()[:512])  # not a block: refused, not recreated
    result = cabinet.agent("on-insert", world / "sticks/d12")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "env-b/grubenv is 512 bytes" in result.stderr and "grub-editenv" in result.stderr
    assert len(cabinet.block(1).read_bytes()) == 512
    assert cabinet.variables(0) == {"default_env": "env-1", "trial_env": ""}
    assert sorted(os.listdir(cabinet.pool() / "envs")) == ["env-1"]  # the staged environment is gone


def test_names_and_identities(cabinet, world):
    """A name made again after a failed trial is a new subvolume with a new identity."""
    cabinet.boot()
    backend = lambda: GrubBtrfsBackend({}, cabinet.running)  # noqa: E731 - the defaults are the cabinet's paths
    assert cabinet.agent("on-insert", world / "sticks/d12-sick").returncode == STAGED
    first = backend().identity_of("env-2")
    cabinet.boot()
    cabinet.agent("boot-check")  # rolled back
    cabinet.boot()
    cabinet.agent("boot-check")  # the failed trial, no longer booted, is destroyed
    assert backend().get("env-2") is None
    assert cabinet.agent("on-insert", world / "sticks/d12").returncode == STAGED
    again = backend().identity_of(backend().environments()[-1].name)
    assert again and again != first
    with pytest.raises(Exception, match="booted or the default"):
        backend().destroy("env-1")


def test_settings_are_checked():
    from agent.boot import BootError
    for settings, words in (({"pool": "pool"}, "absolute"), ({"grubenv": "/a", "grubenv_copy": "/a"}, "same file"),
                            ({"root": "/x"}, "unknown"), ({"btrfs": ""}, "command")):
        with pytest.raises(BootError, match=words):
            GrubBtrfsBackend(settings, Path("/"))


# --- power cuts ------------------------------------------------------------------------------

SUMMARY = "grub-btrfs power cuts: {injected} injected, {unbootable} unbootable, {lost} lost environments"


def _trace(cabinet: GrubCabinet, *args, trace: Path, code: int) -> list[str]:
    result = cabinet.agent(*args, env={"BUNDLE_CRASH_TRACE": str(trace)})
    assert result.returncode == code, result.stdout + result.stderr
    return [line.partition(" ")[2] for line in trace.read_text().splitlines()]


def test_power_cuts_during_install_trial_and_commit(provisioned, world, tmp_path):
    """Kill the agent at every durable write of an insertion and of the trial's check (a sample in
    make test, all in make crash-test): the machine boots a complete environment that is the one
    the state names, and inserting the stick again finishes the update."""
    with cabinet_from(provisioned, tmp_path / "trace", world) as cabinet:
        cabinet.boot()
        install = _trace(cabinet, "on-insert", world / "sticks/d12", trace=tmp_path / "install.txt", code=STAGED)
        cabinet.boot()
        check = _trace(cabinet, "boot-check", trace=tmp_path / "check.txt", code=0)
    # One numbering over both runs, so the sample spreads over staging, the trial and the commit.
    points = [(n, f"{name} (on-insert)") for n, name in enumerate(install, 1)]
    points += [(len(install) + n, f"{name} (boot-check)") for n, name in enumerate(check, 1)]
    chosen = sample(points, 6, records=False)
    assert any("grubenv" in name for _, name in chosen), chosen
    failures = []
    for number, name in chosen:
        with cabinet_from(provisioned, tmp_path / f"cut-{number}", world) as cabinet:
            problem = _cut_and_finish(cabinet, world, number, len(install))
            count_summary("grub-btrfs", SUMMARY, injected=1, unbootable=int(problem.startswith("unbootable")),
                          lost=int(problem.startswith("lost")))
            if problem:
                failures.append(f"{number} {name}: {problem}")
        shutil.rmtree(tmp_path / f"cut-{number}")
    assert not failures, failures


def _cut_and_finish(cabinet: GrubCabinet, world: Path, number: int, install_points: int) -> str:
    """The problem found after a kill at point ``number``, or ""."""
    cabinet.boot()
    if number <= install_points:
        killed = cabinet.agent("on-insert", world / "sticks/d12", env={"BUNDLE_CRASH_AT": str(number)})
    else:
        assert cabinet.agent("on-insert", world / "sticks/d12").returncode == STAGED
        cabinet.boot()
        killed = cabinet.agent("boot-check", env={"BUNDLE_CRASH_AT": str(number - install_points)})
    if killed.returncode != -9:
        return f"harness: not killed at {number} (exit {killed.returncode})"
    for _ in range(3):  # power back on, as often as the machine reboots itself
        try:
            booted = cabinet.boot()
        except AssertionError as error:
            return f"unbootable: {error}"
        engine = _engine(cabinet, booted)
        if b"1.0.0" not in engine and b"2.0.0" not in engine:
            return f"unbootable: {booted} holds neither release"
        cabinet.agent("boot-check")
        status = cabinet.agent("status", "--json")
        if status.returncode != 0:
            return f"unparsable: {status.stderr}"
        state = json.loads(status.stdout)
        if state["committed_environment"] == booted:
            break
    else:
        return f"inconsistent: the state names {state['environment']}, the machine boots {booted}"
    if state["committed_environment"] == "env-1" or b"2.0.0" not in _engine(cabinet, booted):
        if "env-1" not in os.listdir(cabinet.pool() / "envs"):
            return "lost: env-1"
        again = cabinet.agent("on-insert", world / "sticks/d12")  # the stick again finishes the update
        if again.returncode != STAGED:
            return f"retry: exit {again.returncode}: {again.stdout} {again.stderr}"
        cabinet.boot()
        if cabinet.agent("boot-check").returncode != 0:
            return "retry: boot-check failed"
    final = cabinet.status()
    booted = cabinet.boot()
    if final["committed_environment"] != booted or b"2.0.0" not in _engine(cabinet, booted):
        return f"retry: the state names {final['environment']}, the machine boots {booted}"
    leftovers = sorted(set(os.listdir(cabinet.pool() / "envs")) - {booted, "env-1"})
    return f"leftover: {leftovers}" if leftovers else ""
