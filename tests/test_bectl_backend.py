"""The ``bectl`` backend against the bectl(8) stand-in in tests/bin (docs/BECTL.md).

FreeBSD, ZFS and its loader cannot run here, so ``tests/bin/bectl`` answers bectl's documented
command line with real directory trees; its header lists what it models and what it does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.boot import BootError, open_backend
from agent.boot.bectl import BectlBackend
from agent.cli.technician import EXIT_NOT_CLEAN
from agent.format.tree import tree_digest
from agent.scan import scan_tree
from tests.sim.device import BECTL_STANDIN as STANDIN, BEROOT, STAGED, Cabinet, World
from tests.sim.disks import tmpfs_mounted
from tests.sim.releases import write_release
from tests.sim.tools import BIN


def bectl(*args, check: bool = True) -> subprocess.CompletedProcess:
    """The stand-in as a process; BECTL_STANDIN_ROOT comes from the environment."""
    result = subprocess.run([str(STANDIN), *map(str, args)], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"bectl {args} exited {result.returncode}: {result.stdout}{result.stderr}")
    return result


@pytest.fixture
def machine(tmp_path, monkeypatch) -> Path:
    """A machine the FreeBSD installer set up: one environment, ``default``, booted (N) and default (R)."""
    root = tmp_path / "zfs"
    monkeypatch.setenv("BECTL_STANDIN_ROOT", str(root))
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")  # its python3, without shims
    image = tmp_path / "image"
    (image / "platform").mkdir(parents=True)
    (image / "platform/kernel").write_bytes(b"kernel 1\n")
    bectl("__install", "default", image)
    bectl("-r", BEROOT, "activate", "default")
    assert bectl("__reboot").stdout.strip() == "default"
    return root


def backend(tmp_path: Path, **settings) -> BectlBackend:
    return open_backend("bectl", {"bectl": str(STANDIN), "mount_dir": str(tmp_path / "mnt"), **settings})


def flags(backend: BectlBackend) -> dict[str, str]:
    return {e.name: e.flags for e in backend.environments()}


# --- the backend ---------------------------------------------------------------------------


def test_clone_trial_commit_destroy(machine, tmp_path):
    boot = backend(tmp_path)
    [default] = boot.environments()
    assert (default.name, default.flags, default.path) == ("default", "NR", machine / "rootfs")

    staged = boot.clone("default", "env-2")
    assert staged == tmp_path / "mnt/env-2"
    assert (staged / "platform/kernel").read_bytes() == b"kernel 1\n"
    (staged / "platform/kernel").write_bytes(b"kernel 2\n")  # writable, and a copy
    assert (machine / "rootfs/platform/kernel").read_bytes() == b"kernel 1\n"
    assert boot.get("env-2").path == staged and flags(boot) == {"default": "NR", "env-2": ""}

    boot.activate_once("env-2")  # unmounted first: nothing writes to a verified tree
    assert flags(boot) == {"default": "NR", "env-2": "T"}
    assert boot.get("env-2").path is None and not staged.exists()
    boot.cancel_once()
    assert flags(boot) == {"default": "NR", "env-2": ""}
    boot.cancel_once()  # nothing pending: a no-op

    boot.activate_once("env-2")
    assert bectl("__reboot").stdout.strip() == "env-2"  # the loader consumes T
    assert flags(boot) == {"default": "R", "env-2": "N"}
    assert (boot.booted().path / "platform/kernel").read_bytes() == b"kernel 2\n"
    boot.commit("env-2")
    assert flags(boot) == {"default": "", "env-2": "NR"}

    boot.destroy("default")
    assert flags(boot) == {"env-2": "NR"}
    with pytest.raises(BootError, match=r"^bectl backend: boot environment env-2 is booted or the default"):
        boot.destroy("env-2")


def test_commit_of_a_pending_trial_clears_the_one_time_boot(machine, tmp_path):
    boot = backend(tmp_path)
    boot.clone("default", "env-2")
    boot.activate_once("env-2")
    boot.commit("env-2")
    assert flags(boot) == {"default": "N", "env-2": "R"}


def test_destroy_unmounts_a_staging_environment_and_cancels_its_trial(machine, tmp_path):
    boot = backend(tmp_path)
    boot.clone("default", "env-2")
    boot.destroy("env-2")  # still mounted: bectl destroy -F
    assert flags(boot) == {"default": "NR"} and not (tmp_path / "mnt/env-2").exists()
    boot.clone("default", "env-3")
    boot.activate_once("env-3")
    boot.destroy("env-3")
    assert flags(boot) == {"default": "NR"}
    assert bectl("__reboot").stdout.strip() == "default"  # no one-time choice left behind


def test_environments_are_listed_oldest_first(machine, tmp_path):
    boot = backend(tmp_path, beroot=BEROOT)  # every call as bectl -r zroot/ROOT
    for name in ("env-9", "env-10", "a-last"):
        boot.clone("default", name)
    assert [e.name for e in boot.environments()] == ["default", "env-9", "env-10", "a-last"]


def test_clone_of_an_inactive_environment_uses_e(machine, tmp_path):
    boot = backend(tmp_path)
    staged = boot.clone("default", "env-2")
    (staged / "platform/extra").write_text("only in env-2\n")
    boot.activate_once("env-2")
    again = boot.clone("env-2", "env-3")  # bectl create -e env-2 env-3
    assert (again / "platform/extra").read_text() == "only in env-2\n"


def test_a_failed_mount_leaves_no_environment_behind(machine, tmp_path):
    boot = backend(tmp_path)
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt/env-2").write_text("in the way\n")
    with pytest.raises(BootError, match=r"^bectl backend: cannot prepare the mount point"):
        boot.clone("default", "env-2")
    assert flags(boot) == {"default": "NR"}


def test_create_empty_is_refused_with_the_way_forward(machine, tmp_path):
    boot = backend(tmp_path)
    with pytest.raises(BootError) as caught:
        boot.create_empty("env-1")
    assert str(caught.value).startswith("bectl backend: cannot create an empty boot environment env-1")
    assert "installer" in caught.value.hint
    assert flags(boot) == {"default": "NR"}


def test_list_output_of_the_real_bectl_is_parsed(tmp_path):
    """Lines exactly as bectl_list.c prints them with -H; the booted environment is at /."""
    fake = tmp_path / "bectl"
    lines = ["default\tNR\t/\t2.49G\t2024-05-01 10:00", "env-2\tT\t-\t8.50M\t2024-05-02 11:00",
             "old\t-\t/tmp/be_mount.c6Sf\t1.2G\t2024-04-01 09:00", "odd\tNRT\t/\t1K\t2024-06-01 00:00"]
    printed = "".join(f"printf '{line}\\n'\n" for line in lines)
    fake.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\n{printed}')
    fake.chmod(0o755)
    boot = open_backend("bectl", {"bectl": str(fake), "beroot": "tank/ROOT"})
    got = [(e.name, e.flags, e.path) for e in boot.environments()]
    assert got == [("default", "NR", Path("/")), ("env-2", "T", None), ("old", "", Path("/tmp/be_mount.c6Sf")),
                   ("odd", "NRT", Path("/"))]
    assert (tmp_path / "args").read_text().split() == ["-r", "tank/ROOT", "list", "-H", "-c", "creation"]
    # The identity is the name with its creation time: a name destroyed and made again in another
    # minute is another environment. Only env-N are the agent's, and the next name is above them.
    assert [(e.identity, e.made_by_agent) for e in boot.environments()] == [
        ("default@2024-05-01 10:00", False), ("env-2@2024-05-02 11:00", True), ("old@2024-04-01 09:00", False),
        ("odd@2024-06-01 00:00", False)]
    assert boot.new_name() == "env-3"
    fake.write_text("#!/bin/sh\nprintf 'BE Active Mountpoint Space Created\\n'\n")  # a header: not -H output
    with pytest.raises(BootError, match=r"^bectl backend: cannot read this line of `bectl list -H`"):
        boot.environments()
    fake.write_text("#!/bin/sh\nprintf 'x\\tNQ\\t-\\t1K\\t2024-06-01 00:00\\n'\n")
    with pytest.raises(BootError, match=r"^bectl backend: unexpected Active column 'NQ'"):
        boot.environments()


def test_bectl_errors_are_quoted_under_the_backend_name(machine, tmp_path):
    wrong_root = backend(tmp_path, beroot="tank/ROOT")
    with pytest.raises(BootError) as caught:
        wrong_root.environments()
    assert str(caught.value).startswith("bectl backend: cannot list boot environments: -r tank/ROOT list")
    assert 'libbe_init("tank/ROOT") failed.' in str(caught.value) and caught.value.hint

    missing = open_backend("bectl", {"bectl": str(tmp_path / "no-such-bectl")})
    with pytest.raises(BootError, match=r"^bectl backend: cannot list boot environments: the command .* not found"):
        missing.environments()

    boot = backend(tmp_path)
    with pytest.raises(BootError, match=r"^bectl backend: boot environment nope does not exist"):
        boot.clone("nope", "env-2")
    with pytest.raises(BootError, match=r"^bectl backend: invalid boot environment name 'a b'"):
        boot.activate_once("a b")
    with pytest.raises(BootError, match=r"^bectl backend: boot environment default already exists"):
        boot.clone("default", "default")


@pytest.mark.parametrize("settings, message", [
    ({"root": "/zroot/ROOT"}, "[boot] root is the dirs backend's directory setting"),
    ({"mountdir": "/mnt"}, "unknown [boot] setting(s) mountdir"),
    ({"mount_dir": "relative/be"}, "must be an absolute path"),
    ({"beroot": "zroot"}, "is not a dataset name like zroot/ROOT"),
    ({"bectl": ""}, "[boot] bectl must be the command to run"),
])
def test_settings_are_checked(settings, message):
    with pytest.raises(BootError) as caught:
        open_backend("bectl", settings)
    assert str(caught.value).startswith("bectl backend: ") and message in str(caught.value)


# --- the stand-in keeps to bectl's command line ----------------------------------------------


@pytest.mark.parametrize("args, code, message", [
    (["frob"], 64, "Unknown command: frob"),
    (["-q", "list"], 64, "bectl: illegal option -- q"),
    (["activate", "-x", "default"], 64, "bectl activate: unknown option '-x'"),
    (["activate", "-t", "-T", "default"], 64, "Usage:"),
    (["activate"], 64, "bectl activate: wrong number of arguments"),
    (["create", "-e"], 64, "bectl: option requires an argument -- e"),
    (["list", "extra"], 64, "bectl list: extra argument provided"),
    (["destroy"], 64, "bectl destroy: wrong number of arguments"),
    (["mount"], 64, "bectl mount: missing argument(s)"),
    (["activate", "nope"], 3, "specified boot environment does not exist"),
    (["create", "default"], 2, "boot environment name already taken"),
    (["create", "a b"], 1, "invalid boot environment name"),
    (["destroy", "default"], 5, "cannot destroy active boot environment"),
    (["mount", "default", "/nonexistent/x"], 12, "boot environment is already mounted"),
    (["umount", "default"], 8, "specified path is busy"),
    (["-r", "tank/ROOT", "list"], 255, 'libbe_init("tank/ROOT") failed.'),
    (["export", "default"], 70, "is not modelled"),
    (["create", "default@snap"], 70, "is not modelled"),
])
def test_standin_refuses_like_bectl(machine, args, code, message):
    result = bectl(*args, check=False)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout + result.stderr


def test_standin_mounts_destroys_and_reboots_like_bectl(machine, tmp_path):
    assert bectl("create", "env-2").stdout == ""
    here, there = tmp_path / "here", tmp_path / "there"
    assert bectl("mount", "env-2", here).stdout.strip() == str(here)
    refused = bectl("mount", "env-2", there, check=False)
    assert refused.returncode == 12 and "Failed to mount bootenv env-2 at" in refused.stderr
    refused = bectl("destroy", "env-2", check=False)
    assert refused.returncode == 6 and "cannot destroy mounted boot env unless forced" in refused.stderr
    bectl("umount", "env-2")
    assert here.is_dir() and not any(here.iterdir())  # the mount point stays, empty
    temporary = Path(bectl("mount", "env-2").stdout.strip())
    assert temporary.name.startswith("be_mount.") and (temporary / "platform/kernel").is_file()
    bectl("activate", "-t", "env-2")
    rows = [line.split("\t") for line in bectl("list", "-H").stdout.splitlines()]
    assert [(r[0], r[1], r[2]) for r in rows] == [("default", "NR", str(machine / "rootfs")),
                                                 ("env-2", "T", str(temporary))]
    # The loader consumes T before booting it; a trial that crashes comes back to R.
    assert bectl("__reboot").stdout.strip() == "env-2"
    assert bectl("__reboot").stdout.strip() == "default"
    bectl("activate", "env-2")
    refused = bectl("destroy", "env-2", check=False)  # the default, though not booted
    assert refused.returncode == 5
    assert "Temporary activation removed" in bectl("activate", "-T").stdout


# --- the agent end to end, with ``[boot] backend = "bectl"`` --------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture
def cabinet(world, tmp_path) -> Cabinet:
    return Cabinet(world, tmp_path / "device", backend="bectl")


def test_provision_without_a_booted_environment_is_refused_and_changes_nothing(cabinet, world):
    result = cabinet.agent("provision", world.bundles / "full-1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "error: bectl backend: no booted environment to provision from" in result.stderr
    assert "hint: boot the installer-made system, then provision" in result.stderr
    assert not (cabinet.dir / "state/state.json").exists()
    assert cabinet.bectl("-r", BEROOT, "list", "-H") == ""


def test_provision_clones_the_installer_environment(cabinet, world, tmp_path):
    """The FreeBSD installer made "default"; provisioning clones it into env-1, puts the
    components in, and makes env-1 the default; "default" itself is left alone."""
    installer = tmp_path / "installer"
    (installer / "etc").mkdir(parents=True)
    (installer / "etc/rc.conf").write_text('hostname="cabinet"\n')
    cabinet.bectl("__install", "default", installer)
    cabinet.bectl("-r", BEROOT, "activate", "default")
    assert cabinet.bectl("__reboot") == "default"
    cabinet.agent("provision", world.bundles / "full-1", check=True)
    assert cabinet.flags() == {"default": "N", "env-1": "R"}
    assert cabinet.bectl("__reboot") == "env-1"
    status = cabinet.status()
    assert status["committed_environment"] == "env-1"
    assert status["components"]["platform"] == {"version": "13.2.0", "sequence": 6}


# The agent's own layout, and FreeBSD's: the platform is the boot environment's root, games nested.
# (configuration, the platform's path, nested games, directories kept only to hold the games)
LAYOUTS = {"subdirectories": (None, "platform", (), ()),
           "platform-is-root": ({"platform": ".", "games": "usr/local/games"}, ".", ("usr/local/games",),
                                ("usr/local",))}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_install_trial_boot_and_commit(world, tmp_path, layout):
    table, platform, nested, holders = LAYOUTS[layout]
    cabinet = Cabinet(world, tmp_path / "device", layout=table, backend="bectl")
    cabinet.provision()
    status = cabinet.status()
    assert status["committed_environment"] == "env-1" and cabinet.flags() == {"env-1": "NR"}

    result = cabinet.agent("install", world.bundles / "d12")
    assert result.returncode == STAGED, result.stdout + result.stderr
    status = cabinet.status()
    assert status["pending"]["phase"] == "trial" and status["pending"]["environment"] == "env-2"
    assert {e["name"]: (e["flags"], e["path"]) for e in status["environments"]} == {
        "env-1": ("NR", str(cabinet.standin / "rootfs")), "env-2": ("T", None)}  # staged, unmounted, armed

    assert cabinet.bectl("__reboot") == "env-2"  # the loader boots the trial once
    assert cabinet.flags() == {"env-1": "R", "env-2": "N"}
    result = cabinet.agent("boot-check")
    assert result.returncode == 0 and "env-2 passed its health check and is committed" in result.stdout
    status = cabinet.status()
    assert cabinet.flags() == {"env-1": "", "env-2": "NR"}
    assert status["pending"] is None and status["committed_environment"] == "env-2"
    assert status["components"] == {"platform": {"version": "13.2.1", "sequence": 7},
                                    "game/lucky-sevens": {"version": "2.0", "sequence": 3},
                                    "game/fortune-wheel": {"version": "1.0", "sequence": 1}}
    platform_tree = [e for e in scan_tree(cabinet.standin / "rootfs" / platform, exclude=nested)
                     if e.path not in holders]
    assert tree_digest(platform_tree) == tree_digest(scan_tree(world.dir / "r2/platform"))
    refused = cabinet.agent("boot")  # the real loader chooses; `boot` is the dirs backend's
    assert refused.returncode == 1 and "bectl backend: the real boot loader chooses" in refused.stderr


def test_filesystems_mounted_in_the_live_root_do_not_block_an_update_or_an_audit(world, tmp_path):
    """The booted environment is the live "/", with filesystems mounted in it that a ZFS clone does
    not hold (the stand-in clones with `cp -ax`). The platform drifted since it was installed (a
    file the vendor's tool wrote), so staging a game compares the clone with the running tree:
    /tmp's files must not count. Before, the update was refused ("the clone of platform differs
    from the running environment"), and the audit listed /tmp's files as unexpected."""
    game = world.dir / "fortune-wheel-only"
    if not game.exists():
        shutil.copytree(world.dir / "r2/games/fortune-wheel", game / "games/fortune-wheel")
        write_release(game, {"game/fortune-wheel": ("1.0", 1)})
        world.make("fortune-wheel-1", "fortune-wheel-only")
    cabinet = Cabinet(world, tmp_path / "device", layout=LAYOUTS["platform-is-root"][0], backend="bectl")
    cabinet.provision()
    live = cabinet.standin / "rootfs"
    (live / "etc/motd").write_text("set by the vendor's tool\n")
    with tmpfs_mounted(live / "tmp"):
        (live / "tmp/session").write_text("a program's temporary file\n")
        audited = cabinet.agent("technician", "audit", "--json")
        assert audited.returncode == EXIT_NOT_CLEAN, audited.stdout + audited.stderr  # etc/motd
        platform = json.loads(audited.stdout)["components"]["platform"]
        assert (platform["unexpected"], platform["other_filesystems"]) == (["etc/motd"], ["tmp"])
        text = cabinet.agent("technician", "audit").stdout
        assert "    unexpected etc/motd\n    not audited tmp (another filesystem is mounted there)\n" in text
        result = cabinet.agent("install", world.bundles / "fortune-wheel-1")
        assert result.returncode == STAGED, result.stdout + result.stderr
        assert sorted(p.name for p in (cabinet.standin / "pool/env-2/tmp").iterdir()) == []


def test_a_state_directory_on_the_booted_environments_own_dataset_is_refused(cabinet):
    """There a clone would snapshot the journal ("pending: staging") into the trial it describes
    (docs/BECTL.md). A dataset of its own mounted there is another filesystem, and is fine."""
    cabinet.provision()
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text().replace('state_dir = "/state"', 'state_dir = "/zfs/rootfs/var/db/agent"'))
    for command in (("config", "check"), ("status",)):
        result = cabinet.agent(*command)
        assert result.returncode == 1, result.stdout + result.stderr  # BadConfig
        assert f"state_dir {cabinet.standin}/rootfs/var/db/agent lies inside the boot environments" in result.stderr
        assert "hint: keep the agent's state outside every environment" in result.stderr
    with tmpfs_mounted(cabinet.standin / "rootfs/var/db/agent"):
        cabinet.agent("config", "check", check=True)


def test_cancel_crash_and_failed_health_check_keep_the_old_default(cabinet, world):
    cabinet.provision()
    before = tree_digest(scan_tree(cabinet.standin / "rootfs"))

    # Cancelled before the trial boot: bectl activate -T, and the new environment goes.
    cabinet.agent("install", world.bundles / "d12", check=True)
    assert cabinet.flags() == {"env-1": "NR", "env-2": "T"}
    assert "was cancelled" in cabinet.agent("rollback", check=True).stdout
    assert cabinet.flags() == {"env-1": "NR"}

    # The trial crashes before boot-check: the next boot is back in R by itself.
    cabinet.agent("install", world.bundles / "d12", check=True)
    assert cabinet.bectl("__reboot") == "env-2"
    assert cabinet.bectl("__reboot") == "env-1"
    result = cabinet.agent("boot-check", check=True)
    assert "the trial of env-2 did not reach its health check" in result.stdout
    assert "the failed environment was removed" in result.stdout
    assert cabinet.flags() == {"env-1": "NR"}  # its space is free for the next attempt

    # The trial boots but fails its health check: R stays, T is gone, back to env-1 on reboot.
    cabinet.agent("install", world.bundles / "d12", check=True)
    trial = cabinet.status()["pending"]["environment"]
    assert cabinet.bectl("__reboot") == trial
    cabinet.set_health(False)
    result = cabinet.agent("boot-check")
    assert result.returncode == 3 and "failed its health check" in result.stderr, result.stdout + result.stderr
    assert "reels do not spin" in result.stderr
    assert {n: f for n, f in cabinet.flags().items() if f} == {"env-1": "R", trial: "N"}
    status = cabinet.status()
    assert status["pending"] is None and status["committed_environment"] == "env-1"
    assert cabinet.bectl("__reboot") == "env-1"
    assert tree_digest(scan_tree(cabinet.standin / "rootfs")) == before
    result = cabinet.agent("boot-check", check=True)
    assert f"no trial pending; running env-1; removed the failed trial {trial}" in result.stdout
    assert cabinet.flags() == {"env-1": "NR"}  # the failed trial, no longer running, is removed
