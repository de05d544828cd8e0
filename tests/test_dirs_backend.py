"""The dirs backend's own part of the interface: settings, names it never makes twice, the loader role."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.boot import BootError, open_backend
from agent.space import tree_usage
from tests.sim.device import Cabinet, World
from tests.sim.disks import tmpfs_mounted


def test_names_are_never_made_twice(tmp_path):
    boot = open_backend("dirs", {"root": "/envs"}, tmp_path)
    assert boot.root == tmp_path / "envs"  # taken below the system root
    assert boot.new_name() == "env-1"
    boot.create_empty("env-1")
    boot.commit("env-1")
    boot.clone("env-1", boot.new_name())
    assert [e.name for e in boot.environments()] == ["env-1", "env-2"]
    boot.destroy("env-2")  # a failed trial
    assert boot.new_name() == "env-3"  # env-2 may be in somebody's records: it names nothing again
    with pytest.raises(BootError, match="env-2 was made before"):
        boot.clone("env-1", "env-2")
    (boot.root / "made").unlink()  # lost: the names still there are the floor
    assert boot.new_name() == "env-2"
    boot.clone("env-1", "factory")  # not the agent's name: never pruned, no number recorded
    assert [(e.name, e.identity, e.made_by_agent) for e in boot.environments()] == [
        ("env-1", "env-1", True), ("factory", "factory", False)]


def test_a_clone_holds_nothing_of_the_filesystems_mounted_in_its_source(tmp_path):
    """A running environment may have filesystems mounted in it (a launcher's /tmp, /proc for a
    chroot). Like a snapshot, the clone has their mount points, empty (agent/staging.py leaves
    such mounts out of its check of the clone), and the space a clone needs leaves them out."""
    boot = open_backend("dirs", {"root": "/envs"}, tmp_path)
    boot.create_empty("env-1")
    (boot.root / "env-1/etc").mkdir()
    (boot.root / "env-1/etc/motd").write_text("welcome\n")
    with tmpfs_mounted(boot.root / "env-1/tmp"):
        (boot.root / "env-1/tmp/session").write_text("a program's temporary file\n")
        clone = boot.clone("env-1", "env-2")
        assert tree_usage(boot.root / "env-1")[1] == 3  # etc, etc/motd, tmp
    assert (clone / "etc/motd").read_text() == "welcome\n"
    assert list((clone / "tmp").iterdir()) == []


def test_an_environment_with_a_filesystem_mounted_inside_is_not_destroyed_and_the_commit_stands(tmp_path):
    """Removing it would empty that filesystem too (a launcher's data bound into an old
    environment). Pruning leaves it, says why in the audit log, and the commit it follows stands."""
    world = World(tmp_path / "world")
    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    stick = world.stick(tmp_path / "stick", "d12")
    for command in (("on-insert", stick), ("boot",), ("boot-check",), ("rollback",), ("boot",), ("on-insert", stick),
                    ("boot",)):
        cabinet.agent(*command, check=True)
    assert cabinet.environments() == ["env-1", "env-2", "env-3"]
    data = cabinet.dir / "envs/env-2/data"
    with tmpfs_mounted(data):
        (data / "credits").write_text("1200\n")
        result = cabinet.agent("boot-check")  # commits env-3; keep = 2 would prune env-2, rolled back from
        assert result.returncode == 0, result.stdout + result.stderr
        assert cabinet.status()["committed_environment"] == "env-3"
        assert cabinet.environments() == ["env-1", "env-2", "env-3"] and (data / "credits").read_text() == "1200\n"
        failed = [json.loads(line) for line in (cabinet.dir / "state/audit.log").read_text().splitlines()
                  if '"prune-failed"' in line]
        assert [(r["environment"], r["reason"]) for r in failed] == [
            ("env-2", f"dirs backend: cannot destroy env-2: another filesystem is mounted at {data}")]
    open_backend("dirs", {"root": "/envs"}, cabinet.dir).destroy("env-2")  # unmounted: it goes
    assert cabinet.environments() == ["env-1", "env-3"]


@pytest.mark.parametrize("settings, message", [
    ({}, "[boot] root (the directory holding the environments) is required"),
    ({"root": 5}, "[boot] root (the directory holding the environments) is required, as a path"),
    ({"root": "/envs", "beroot": "zroot/ROOT"}, "unknown [boot] setting(s) beroot"),
])
def test_settings_are_checked(settings, message, tmp_path):
    with pytest.raises(BootError) as caught:
        open_backend("dirs", settings, tmp_path)
    assert str(caught.value).startswith("dirs backend: ") and message in str(caught.value)


def test_only_a_backend_that_plays_the_boot_loader_boots(tmp_path):
    dirs = open_backend("dirs", {"root": "/envs"}, tmp_path)
    assert dirs.plays_boot_loader
    dirs.create_empty(dirs.new_name())
    dirs.commit("env-1")
    assert dirs.boot().path == tmp_path / "envs/env-1"
    bectl = open_backend("bectl", {"bectl": str(tmp_path / "no-bectl")}, Path("/"))
    assert not bectl.plays_boot_loader
    with pytest.raises(BootError, match="the real boot loader chooses"):
        bectl.boot()
