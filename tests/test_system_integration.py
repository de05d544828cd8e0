"""The operating-system integration in system/: udev rule, systemd units, the insert helpers, the
FreeBSD devd snippet and rc.d script (system/README.md).

What runs for real here and what stands in (STYLE.md 14):
- systemd units: the real ``systemd-analyze verify`` (syntax, dependencies, executables), with
  the agent's path pointed at a stand-in; their settings are read back with a small parser. The
  trial deadline's shell logic and the insert unit's last-resort unmount run for real, with a
  ``systemctl`` stand-in for the former.
- the udev rule: no udevd runs here, so a small evaluator in this file applies the rule to the
  properties udev gives real devices (a USB FAT32 partition, an exFAT stick without partition
  table, a SATA disk, ...).
- the Linux helper: the real script, as root, on loop devices holding real filesystem images,
  with the real blkid, mount, findmnt and umount; only the agent is a stand-in that records what
  it was given and saw. The helper accepts only sd*/mmcblk* names, so a test links ``sdz`` to the
  loop device in a directory named by ``BUNDLE_AGENT_DEV``: the allow-list stays as shipped.
  This machine's kernel has no vfat or exfat driver: for those, blkid still identifies a real
  image, and a mount(8) stand-in on PATH records the call (options included) and fails as mount
  does.
- FreeBSD: devd.conf is parsed by a small recursive parser; the helper runs under this machine's
  sh with stand-ins for fstyp, mount, umount and logger; the rc.d script is parsed (rc.subr is
  FreeBSD's).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from tests.sim.tools import debian_tools

SYSTEM = Path(__file__).resolve().parents[1] / "system"
LINUX = SYSTEM / "linux"
FREEBSD = SYSTEM / "freebsd"
UNITS = LINUX / "systemd"
RULE = LINUX / "udev/90-bundle-agent.rules"
HELPER = LINUX / "libexec/bundle-agent-insert"
BSD_HELPER = FREEBSD / "libexec/bundle-agent-insert"
DEVD = FREEBSD / "devd/bundle-agent.conf"
RC_SCRIPT = FREEBSD / "rc.d/bundle_agent_boot_check"

MEDIA = "/run/bundle-agent/media"  # the Linux helper's mount root, named by the unit too
VFAT_OPTIONS = "ro,nosuid,nodev,noexec,noatime,uid=0,gid=0,fmask=0133,dmask=0022"
MiB = 1 << 20


# --- systemd unit files ---------------------------------------------------------------------------


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys repeat: After=, ExecStart=), lines
    ending in a backslash joined to the next as systemd.syntax(7) says."""
    sections: dict[str, dict[str, list[str]]] = {}
    current, pending = None, ""
    for number, line in enumerate((UNITS / name).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            assert not pending, f"{name}:{number}: a comment or an empty line inside a continued line"
            continue
        if line.endswith("\\"):  # systemd.syntax(7): continued on the next line, after a space
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            assert line.endswith("]"), f"{name}:{number}: {line}"
            current = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and current is not None and re.fullmatch(r"[A-Za-z]+", key), f"{name}:{number}: {line}"
        current.setdefault(key, []).append(value.strip())
    return sections


def words(values: list[str]) -> list[str]:
    """A dependency list (After=a b, After=c) as its unit names."""
    return [word for value in values for word in value.split()]


def systemd_unescape(value: str) -> str:
    """An Exec line as the shell gets it: ``$$`` is ``$``, ``%%`` is ``%`` (systemd.service(5))."""
    return value.replace("$$", "$").replace("%%", "%")


def test_the_units_pass_systemd_analyze_verify(tmp_path):
    """Syntax, known settings, dependencies and executables, as systemd itself checks them. The
    agent is not installed on this machine: its path is pointed at a stand-in, and the insert unit
    at the helper in this tree."""
    analyze = debian_tools("systemd", "systemd-analyze")[0]
    agent = tmp_path / "bundle-agent"
    agent.write_text("#!/bin/sh\n")
    agent.chmod(0o755)
    for path in UNITS.iterdir():
        text = path.read_text().replace("/usr/sbin/bundle-agent", str(agent))
        (tmp_path / path.name).write_text(text.replace("/usr/libexec/bundle-agent-insert", str(HELPER)))
    # The template is verified through an instance, as udev starts it: %i, %I and dev-%i.device resolved.
    names = ["bundle-agent-insert@sdb1.service", "bundle-agent-boot-check.service",
             "bundle-agent-trial-deadline.timer", "bundle-agent-trial-deadline.service"]
    result = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / name) for name in names)],
                            capture_output=True, text=True, timeout=120)
    # verify exits 0 on an unknown key or a bad value ("ignoring"): any message is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout + result.stderr


def test_the_insert_unit_mounts_runs_on_insert_and_stops_with_the_stick():
    insert = unit("bundle-agent-insert@.service")
    assert insert["Unit"]["BindsTo"] == ["dev-%i.device"]  # a pulled stick stops the unit
    assert "dev-%i.device" in words(insert["Unit"]["After"])
    service = insert["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/usr/libexec/bundle-agent-insert %I"]
    assert "4" in words(service["SuccessExitStatus"])  # staged: the reboot policy reboots
    assert service.get("Restart", ["no"]) == ["no"]
    assert service["TimeoutStartSec"] and service["SyslogIdentifier"] == ["bundle-agent-insert"]
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the helper, which forwards it and unmounts
    # Nothing that would give the service a mount namespace of its own (the stick's mount
    # would be invisible outside it).
    for setting in ("PrivateMounts", "PrivateNetwork", "ProtectSystem", "PrivateDevices", "ProtectHome"):
        assert setting not in service
    assert service.get("PrivateTmp", ["no"]) == ["no"]
    [stop_post] = service["ExecStopPost"]
    assert "umount -l" in stop_post and stop_post.endswith(f" {MEDIA}/%I")
    # The helper's own default mount root is the one the unit cleans up.
    assert f"media=${{BUNDLE_AGENT_MEDIA:-{MEDIA}}}" in HELPER.read_text()


def test_the_last_resort_unmount_of_the_insert_unit(tmp_path):
    """ExecStopPost, run as systemd would after a helper killed with its stick still mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    [stop_post] = unit("bundle-agent-insert@.service")["Service"]["ExecStopPost"]
    target = tmp_path / "media/sdz"
    target.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stick", target], check=True)
    try:
        command = shlex.split(systemd_unescape(stop_post.removeprefix("-")).replace(f"{MEDIA}/%I", str(target)))
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert not mounted(target) and not target.exists()
        # And on a clean stop, with nothing left to do, it succeeds quietly.
        assert subprocess.run(command, capture_output=True, text=True, timeout=30).returncode == 0
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


def test_the_boot_check_unit_runs_after_the_game_and_every_boot():
    boot_check = unit("bundle-agent-boot-check.service")
    service = boot_check["Service"]
    assert service["ExecStart"] == ["/usr/sbin/bundle-agent boot-check"]
    assert service["Type"] == ["oneshot"] and service["RemainAfterExit"] == ["yes"]
    assert service["TimeoutStartSec"]
    after = words(boot_check["Unit"]["After"])
    assert "cabinet-game.service" in after
    assert "multi-user.target" not in after  # with WantedBy=multi-user.target: an ordering cycle
    assert not {"Wants", "Requires", "BindsTo"} & boot_check["Unit"].keys()
    assert boot_check["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_trial_deadline_only_exists_on_a_trial_boot():
    timer = unit("bundle-agent-trial-deadline.timer")
    service = unit("bundle-agent-trial-deadline.service")
    # grub.cfg appends bundle.trial=1; a bare key matches key=value (systemd.unit(5)).
    assert timer["Unit"]["ConditionKernelCommandLine"] == ["bundle.trial"]
    assert service["Unit"]["ConditionKernelCommandLine"] == ["bundle.trial"]
    assert timer["Timer"]["OnBootSec"] == ["15min"]
    deadline = "bundle-agent-trial-deadline.service"
    assert timer["Timer"].get("Unit", [deadline]) == [deadline]
    assert timer["Install"]["WantedBy"] == ["timers.target"]
    assert "Install" not in service  # the timer starts it
    # The deadline must be later than boot-check's own limit, or a slow but healthy check is cut off.
    limit = unit("bundle-agent-boot-check.service")["Service"]["TimeoutStartSec"][0]
    assert int(limit.removesuffix("min")) < 15


@pytest.mark.parametrize("state, reboots", [("active", False), ("activating", True), ("failed", True),
                                            ("inactive", True)])
def test_the_trial_deadline_reboots_unless_boot_check_has_finished(tmp_path, state, reboots):
    """The deadline service's command, run by sh with a systemctl stand-in that answers for
    boot-check and records the reboot it is asked for."""
    (tmp_path / "systemctl").write_text(
        '#!/bin/sh\necho "$*" >> "$SYSTEMCTL_LOG"\n'
        'if [ "$1" = is-active ]; then\n'
        '    [ "$2" = --quiet ] || echo "$BOOT_CHECK_STATE"\n'
        '    [ "$BOOT_CHECK_STATE" = active ]; exit\nfi\n')
    (tmp_path / "systemctl").chmod(0o755)
    [start] = unit("bundle-agent-trial-deadline.service")["Service"]["ExecStart"]
    command = shlex.split(systemd_unescape(start))
    assert command[:2] == ["/bin/sh", "-c"]
    log = tmp_path / "systemctl.log"
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "SYSTEMCTL_LOG": str(log),
           "BOOT_CHECK_STATE": state}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert any(call.startswith("is-active") and "bundle-agent-boot-check.service" in call for call in calls)
    assert ("reboot --force" in calls) is reboots
    if reboots:  # the journal says why
        assert f"has not finished 15 minutes after boot (it is {state})" in result.stdout
    else:
        assert "nothing to do" in result.stdout


# --- the udev rule ------------------------------------------------------------------------------------

_UDEV_KEYS = {"ACTION", "DEVPATH", "KERNEL", "SUBSYSTEM", "DRIVER", "ENV", "TAG", "ATTR", "KERNELS",
              "SUBSYSTEMS", "DRIVERS", "ATTRS", "TAGS", "TEST", "PROGRAM", "RESULT", "NAME", "SYMLINK",
              "OWNER", "GROUP", "MODE", "OPTIONS", "RUN", "IMPORT", "LABEL", "GOTO", "SYSCTL", "CONST"}
_UDEV_KEYS_WITH_ATTRIBUTE = {"ENV", "ATTR", "ATTRS", "IMPORT", "TEST", "SYSCTL", "CONST"}
_UDEV_PAIR = re.compile(r'([A-Z_]+)(?:\{([^}]*)\})?\s*(==|!=|\+=|-=|:=|=)\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class Device:
    """What udev knows of a device while it runs the rules: the event and its properties."""

    action: str
    subsystem: str
    kernel: str
    env: dict[str, str]
    tags: set[str] = field(default_factory=set)


def udev_rules(path: Path) -> list[list[tuple[str, str | None, str, str]]]:
    """The rules of ``path``, each a list of (key, {attribute}, operator, value), as udev(7) spells
    them: comma-separated KEY op "value" pairs on one line."""
    rules = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pairs, position = [], 0
        while True:
            match = _UDEV_PAIR.match(line, position)
            assert match, f"{path.name}:{number}: cannot parse from column {position + 1}: {line[position:]}"
            key, attribute, operator, value = match.groups()
            assert key in _UDEV_KEYS, f"{path.name}:{number}: unknown key {key}"
            assert (attribute is not None) == (key in _UDEV_KEYS_WITH_ATTRIBUTE), f"{path.name}:{number}: {key}"
            pairs.append((key, attribute, operator, value))
            position = match.end()
            if line[position:].strip() == "":
                break
            separator = re.compile(r"\s*,\s*").match(line, position)
            assert separator, f"{path.name}:{number}: expected ',' at column {position + 1}"
            position = separator.end()
        rules.append(pairs)
    return rules


def apply_rules(rules, device: Device) -> Device:
    """Run the rules on ``device`` the way udevd does: a rule applies when all its matches hold;
    its assignments then change the properties and tags (``%k``: the kernel's name)."""
    for rule in rules:
        matches = [pair for pair in rule if pair[2] in ("==", "!=")]
        if not all(_matches(device, *pair) for pair in matches):
            continue
        for key, attribute, operator, value in rule:
            if operator in ("==", "!="):
                continue
            value = value.replace("%k", device.kernel).replace("$kernel", device.kernel)
            assert key in ("ENV", "TAG"), f"the evaluator does not model {key}{operator}"
            if key == "TAG":
                assert operator == "+=", "TAG= would drop the tags other rules set"
                device.tags.add(value)
            elif operator == "+=" and device.env.get(attribute):
                device.env[attribute] += " " + value
            else:
                device.env[attribute] = value
    return device


def _matches(device: Device, key, attribute, operator, pattern) -> bool:
    actual = {"ACTION": device.action, "SUBSYSTEM": device.subsystem, "KERNEL": device.kernel}.get(key)
    if key == "ENV":
        actual = device.env.get(attribute, "")
    assert actual is not None, f"the evaluator does not model {key}"
    hit = any(fnmatchcase(actual, alternative) for alternative in pattern.split("|"))  # udev(7): | is "or"
    return hit if operator == "==" else not hit


def block(kernel: str, bus: str | None = "usb", fs_type: str | None = None, usage: str = "filesystem",
          action: str = "add") -> Device:
    """A block device as 60-persistent-storage.rules has described it by the time 90-* runs."""
    env = {"DEVNAME": f"/dev/{kernel}", "DEVTYPE": "partition" if kernel[-1].isdigit() else "disk"}
    if bus:
        env["ID_BUS"] = bus
    if fs_type:
        env.update(ID_FS_TYPE=fs_type, ID_FS_USAGE=usage)
    elif env["DEVTYPE"] == "disk":
        env["ID_PART_TABLE_TYPE"] = "dos"
    return Device(action, "block", kernel, env)


@pytest.mark.parametrize("device", [
    block("sdb1", fs_type="vfat"),  # a FAT32 partition on a USB stick
    block("sdb", fs_type="exfat"),  # an exFAT stick without a partition table ("superfloppy")
    block("sdc1", fs_type="ext4"),  # an ext4 partition
], ids=["usb-vfat-partition", "usb-exfat-whole-disk", "usb-ext4-partition"])
def test_the_udev_rule_asks_systemd_for_the_insert_service(device):
    done = apply_rules(udev_rules(RULE), device)
    assert done.env["SYSTEMD_WANTS"] == f"bundle-agent-insert@{device.kernel}.service"
    assert "systemd" in done.tags  # without the tag systemd makes no device unit of it
    assert done.env["UDISKS_AUTO"] == "0"  # the agent mounts it, not a desktop
    assert (UNITS / "bundle-agent-insert@.service").is_file()  # the template it names


@pytest.mark.parametrize("device", [
    block("sda1", bus="ata", fs_type="ext4"),  # the cabinet's own SATA disk
    block("vda2", bus=None, fs_type="vfat"),  # a virtio disk (the ESP of a VM)
    block("sdb1", fs_type="ntfs"),  # a USB stick with NTFS
    block("sdb1", fs_type="swap", usage="other"),
    block("sdb1", fs_type="crypto_LUKS", usage="crypto"),
    block("sdb"),  # a partitioned stick's disk: no filesystem of its own
    block("sdb1", fs_type="vfat", action="remove"),  # the stick pulled out
    block("sdb1", fs_type="vfat", action="change"),
], ids=["sata-ext4", "virtio-vfat", "usb-ntfs", "usb-swap", "usb-luks", "usb-no-filesystem", "remove",
        "change"])
def test_the_udev_rule_leaves_other_devices_and_events_alone(device):
    done = apply_rules(udev_rules(RULE), device)
    assert "SYSTEMD_WANTS" not in done.env and "UDISKS_AUTO" not in done.env and not done.tags


def test_the_udev_rule_runs_and_mounts_nothing():
    """udev(7): programs started from a rule are killed when the event is handled, and its mounts
    land in udevd's private namespace."""
    for rule in udev_rules(RULE):
        for key, attribute, operator, value in rule:
            assert key not in ("RUN", "PROGRAM", "IMPORT"), f"{key}{operator}{value}"
            assert "mount" not in value.lower()


# --- the Linux helper, for real on loop devices --------------------------------------------------------

AGENT_STANDIN = """#!/bin/sh
# bundle-agent stand-in: records its arguments, its standard input and the mount it was given.
record=$STANDIN_RECORD
printf '%s\\n' "$@" > "$record/argv"
readlink /proc/self/fd/0 > "$record/stdin"
findmnt -no FSTYPE,OPTIONS --mountpoint "$2" > "$record/mount"
if [ -n "${STANDIN_WAIT-}" ]; then  # an install in progress until SIGTERM, then a second of undoing
    trap 'kill "$sleeper"; sleep 1; findmnt -no FSTYPE --mountpoint "$2" > "$record/mount-while-undoing"; exit 143' TERM
    sleep 60 & sleeper=$!
    : > "$record/waiting"
    wait "$sleeper"
fi
exit "${STANDIN_EXIT:-4}"
"""

_MKFS = {  # kind -> (Debian package, command, size); sizes are each mkfs's minimum or more
    "ext4": ("e2fsprogs", ["mkfs.ext4", "-q", "-F"], 32 * MiB),
    "vfat": ("dosfstools", ["mkfs.vfat", "-F", "32"], 64 * MiB),
    "exfat": ("exfatprogs", ["mkfs.exfat"], 16 * MiB),
    "btrfs": ("btrfs-progs", ["mkfs.btrfs", "-q"], 128 * MiB),
    "xfs": ("xfsprogs", ["mkfs.xfs", "-q"], 300 * MiB),
    "blank": (None, None, 16 * MiB),
}


@dataclass
class Stick:
    """A stick image on a loop device, and the helper's world: its /dev, mount root and agent."""

    dir: Path
    loop: str  # /dev/loopN

    @property
    def record(self) -> Path:
        return self.dir / "record"

    @property
    def target(self) -> Path:
        return self.dir / "media/sdz"

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "BUNDLE_AGENT": str(self.dir / "bundle-agent"), "BUNDLE_AGENT_DEV": str(self.dir / "dev"),
                "BUNDLE_AGENT_MEDIA": str(self.dir / "media"), "STANDIN_RECORD": str(self.record), **extra}

    def insert(self, name: str = "sdz", **extra: str) -> subprocess.CompletedProcess:
        """The helper as the unit runs it, for the stick linked as /dev/``name``."""
        return subprocess.run([str(HELPER), name], env=self.env(**extra), capture_output=True, text=True,
                              timeout=120)

    def agent_ran(self) -> bool:
        return (self.record / "argv").exists()


def world(directory: Path) -> None:
    """The helper's /dev, the agent stand-in and the directory it records into."""
    (directory / "dev").mkdir()
    (directory / "record").mkdir()
    (directory / "bundle-agent").write_text(AGENT_STANDIN)
    (directory / "bundle-agent").chmod(0o755)


@contextmanager
def stick(tmp_path: Path, kind: str) -> Iterator[Stick]:
    """A fresh ``kind`` image (or a blank one) on a loop device, linked as ``dev/sdz``."""
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    package, mkfs, size = _MKFS[kind]
    debian_tools("mount", "losetup", "mount", "umount", "findmnt")
    debian_tools("util-linux", "blkid")
    image = tmp_path / f"{kind}.img"
    with open(image, "wb") as handle:
        handle.truncate(size)
    if mkfs:
        debian_tools(package, mkfs[0])
        made = subprocess.run([*mkfs, image], capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
    attached = subprocess.run(["losetup", "--find", "--show", image], capture_output=True, text=True)
    if attached.returncode != 0:
        pytest.skip(f"no loop device available: {attached.stderr.strip()}")
    loop = attached.stdout.strip()
    world(tmp_path)
    (tmp_path / "dev/sdz").symlink_to(loop)
    try:
        yield Stick(tmp_path, loop)
    finally:
        while mounted(tmp_path / "media/sdz"):  # whatever a failing test left
            subprocess.run(["umount", "-l", tmp_path / "media/sdz"], capture_output=True)
        subprocess.run(["losetup", "-d", loop], capture_output=True)
        image.unlink()


def mounted(path: Path) -> bool:
    return subprocess.run(["findmnt", "--mountpoint", str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("agent_exit", [4, 3, 0])
def test_an_ext4_stick_is_mounted_read_only_for_the_agent_and_unmounted(tmp_path, agent_exit):
    with stick(tmp_path, "ext4") as usb:
        result = usb.insert(STANDIN_EXIT=str(agent_exit))
        assert result.returncode == agent_exit, result.stderr  # 4: staged, the unit's success
        assert (usb.record / "argv").read_text().splitlines() == ["on-insert", str(usb.target)]
        assert (usb.record / "stdin").read_text().strip() == "/dev/null"  # nothing can wait for an answer
        fstype, options = (usb.record / "mount").read_text().split()
        # findmnt shows ext4's noload as its other name, norecovery: the journal was not replayed.
        assert fstype == "ext4"
        assert {"ro", "nosuid", "nodev", "noexec", "noatime", "norecovery"} <= set(options.split(","))
        assert not mounted(usb.target) and not usb.target.exists()
        assert (usb.dir / "media").stat().st_mode & 0o777 == 0o700
        assert all(line.startswith("bundle-agent-insert: ") for line in result.stderr.splitlines())
        assert f"exited {agent_exit}" in result.stderr


def test_a_mount_left_behind_is_removed_before_the_stick_is_mounted(tmp_path):
    with stick(tmp_path, "ext4") as usb:
        usb.target.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "stale", usb.target], check=True)
        result = usb.insert()
        assert result.returncode == 4, result.stderr
        assert (usb.record / "mount").read_text().split()[0] == "ext4"  # the stick, not the old mount
        assert not mounted(usb.target)


@pytest.mark.parametrize("kind", ["vfat", "exfat"])
def test_fat_and_exfat_sticks_get_owner_and_mask_options(tmp_path, kind):
    """blkid identifies a real image; this kernel has neither driver, so a mount(8) stand-in
    records the call and fails as mount does (exit 32): the agent must not run then."""
    with stick(tmp_path, kind) as usb:
        standins = tmp_path / "bin"
        standins.mkdir()
        (standins / "mount").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$STANDIN_RECORD/mount-call"\n'
                                        'echo "mount: unknown filesystem type" >&2\nexit 32\n')
        (standins / "mount").chmod(0o755)
        result = usb.insert(PATH=f"{standins}{os.pathsep}{os.environ['PATH']}")
        assert (usb.record / "mount-call").read_text().splitlines() == [
            "-t", kind, "-o", VFAT_OPTIONS, str(usb.dir / "dev/sdz"), str(usb.target)]
        assert result.returncode == 1 and "could not mount" in result.stderr
        assert not usb.agent_ran() and not usb.target.exists()


@pytest.mark.parametrize("kind", ["btrfs", "xfs", "blank"])
def test_other_filesystems_are_refused_and_nothing_is_mounted(tmp_path, kind):
    with stick(tmp_path, kind) as usb:
        result = usb.insert()
        assert result.returncode == 1, result.stderr
        device = usb.dir / "dev/sdz"
        expected = f"no filesystem found on {device}" if kind == "blank" else f"{device} holds {kind}"
        assert f"bundle-agent-insert: refused: {expected}" in result.stderr
        assert "FAT32, exFAT or ext4" in result.stderr
        assert not usb.agent_ran() and not mounted(usb.target) and not usb.target.exists()


@pytest.mark.parametrize("name", ["loop0", "sdz/../loop0", "../sdz", "sdz1;true", "sdz 1", "sdz1\nsda",
                                  "", "SDZ", "nvme0n1", "mmcblk0", "sdz-1", "-sdz"])
def test_names_that_are_not_usb_sticks_are_refused(tmp_path, name):
    world(tmp_path)
    result = subprocess.run([str(HELPER), name], capture_output=True, text=True, timeout=30,
                            env={**os.environ, "BUNDLE_AGENT": str(tmp_path / "bundle-agent"),
                                 "BUNDLE_AGENT_DEV": str(tmp_path / "dev"),
                                 "BUNDLE_AGENT_MEDIA": str(tmp_path / "media"),
                                 "STANDIN_RECORD": str(tmp_path / "record")})
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("bundle-agent-insert: refused: ")
    assert not (tmp_path / "record/argv").exists() and not (tmp_path / "media").exists()


def test_the_helper_takes_exactly_one_name_and_a_block_device(tmp_path):
    world(tmp_path)
    env = {**os.environ, "BUNDLE_AGENT": str(tmp_path / "bundle-agent"), "BUNDLE_AGENT_DEV": str(tmp_path / "dev"),
           "BUNDLE_AGENT_MEDIA": str(tmp_path / "media"), "STANDIN_RECORD": str(tmp_path / "record")}
    for arguments in ([], ["sdb1", "sdc1"]):
        result = subprocess.run([str(HELPER), *arguments], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "usage: bundle-agent-insert NAME" in result.stderr
    (tmp_path / "dev/sdz1").write_text("not a device")
    result = subprocess.run([str(HELPER), "sdz1"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "is not a block device" in result.stderr
    assert not (tmp_path / "record/argv").exists() and not (tmp_path / "media").exists()


def test_sigterm_reaches_the_agent_and_the_stick_is_still_unmounted(tmp_path):
    """A pulled stick: BindsTo= stops the unit and systemd sends SIGTERM to the helper alone
    (KillMode=mixed). The agent must get it, be given the time to undo its install with the stick
    still mounted, and the helper must then unmount and exit with the agent's code."""
    with stick(tmp_path, "ext4") as usb:
        process = subprocess.Popen([str(HELPER), "sdz"], env=usb.env(STANDIN_WAIT="1"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not (usb.record / "waiting").exists():
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        assert process.returncode == 143, stderr
        assert "bundle-agent-insert: SIGTERM: stopping" in stderr and "exited 143" in stderr
        assert (usb.record / "mount-while-undoing").read_text().strip() == "ext4"
        assert not mounted(usb.target) and not usb.target.exists()


# --- FreeBSD: devd, the helper, rc.d --------------------------------------------------------------------


@dataclass
class Statement:
    """One devd.conf statement: ``keyword args... [{ body }] ;``."""

    keyword: str
    args: list[str]
    body: list[Statement] | None = None


_DEVD_TOKEN = re.compile(r'\s+|#[^\n]*|//[^\n]*|"((?:[^"\\]|\\.)*)"|([{};])|([^\s{};"]+)')


def devd_config(text: str) -> list[Statement]:
    """devd.conf(5) parsed: nested blocks of statements, each ended by a semicolon."""
    tokens, position = [], 0
    while position < len(text):
        match = _DEVD_TOKEN.match(text, position)
        assert match, f"devd.conf: cannot read {text[position:position + 20]!r}"
        string, punctuation, word = match.groups()
        if string is not None:
            tokens.append(("string", string))
        elif punctuation or word:
            tokens.append((punctuation or "word", punctuation or word))
        position = match.end()
    statements, rest = _statements(tokens)
    assert not rest, f"devd.conf: unexpected {rest[0][1]!r}"
    return statements


def _statements(tokens):
    statements = []
    while tokens and tokens[0][0] != "}":
        kind, keyword = tokens[0]
        assert kind == "word", f"devd.conf: a statement starts with a keyword, not {keyword!r}"
        tokens, args, body = tokens[1:], [], None
        while tokens and tokens[0][0] in ("word", "string"):
            args.append(tokens[0][1])
            tokens = tokens[1:]
        if tokens and tokens[0][0] == "{":
            body, tokens = _statements(tokens[1:])
            assert tokens and tokens[0][0] == "}", "devd.conf: a block is not closed"
            tokens = tokens[1:]
        assert tokens and tokens[0][0] == ";", f"devd.conf: no ';' after {keyword}"
        statements.append(Statement(keyword, args, body))
        tokens = tokens[1:]
    return statements, tokens


def devd_notify() -> tuple[dict[str, str], str]:
    """The snippet's one notify block: its matches {variable: regex} and its action."""
    [notify] = devd_config(DEVD.read_text())
    assert notify.keyword == "notify" and len(notify.args) == 1 and notify.args[0].isdigit()  # its priority
    assert notify.body is not None
    matches, actions = {}, []
    for statement in notify.body:
        assert statement.keyword in ("match", "action") and statement.body is None, statement
        if statement.keyword == "match":
            variable, expression = statement.args
            matches[variable] = expression
        else:
            [action] = statement.args
            actions.append(action)
    [action] = actions
    return matches, action


def test_devd_runs_the_helper_in_the_background_on_each_new_usb_disk():
    matches, action = devd_notify()
    assert {key: matches[key] for key in ("system", "subsystem", "type")} == {
        "system": "GEOM", "subsystem": "DEV", "type": "CREATE"}
    # devd matches with regexec(3): a search, POSIX extended syntax.
    cdev = re.compile(matches["cdev"])
    for name in ("da0", "da0s1", "da1p2", "da12", "da3s4"):
        assert cdev.search(name), name
    for name in ("ada0", "nvd0", "nda0", "cd0", "da0s1a", "da0p1.eli", "msdosfs/STICK", "gpt/efiboot0", "xda0"):
        assert not cdev.search(name), name
    # devd expands $cdev and hands the line to sh; the & keeps its event loop going during an install.
    assert shlex.split(action) == ["/usr/local/libexec/bundle-agent-insert", "$cdev", "&"]
    assert matches["cdev"] in BSD_HELPER.read_text()  # the helper's own allow-list says the same


@pytest.mark.parametrize("script", [HELPER, BSD_HELPER, RC_SCRIPT], ids=lambda path: str(path.relative_to(SYSTEM)))
def test_the_shell_scripts_parse_and_are_executable(script):
    assert script.read_text().startswith("#!/bin/sh\n") and os.access(script, os.X_OK)
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")


def bsd_world(directory: Path, fstyp_says: str) -> dict[str, str]:
    """The FreeBSD helper's surroundings: stand-ins for fstyp(8), mount(8), umount(8) and logger(1)
    that record their calls, a /dev whose da0s1 is a character device, the agent stand-in."""
    world(directory)
    (directory / "dev/da0s1").symlink_to("/dev/null")  # FreeBSD's disks are character devices
    standins = directory / "bin"
    standins.mkdir()
    for tool, body in {
        "fstyp": '[ -n "$FSTYP_SAYS" ] || exit 1\necho "$FSTYP_SAYS"',
        "mount": 'printf "%s\\n" "$@" > "$STANDIN_RECORD/mount-call"',
        "umount": 'echo "$*" >> "$STANDIN_RECORD/umount-calls"',
        "logger": 'echo "$*" >> "$STANDIN_RECORD/syslog"',
    }.items():
        (standins / tool).write_text(f"#!/bin/sh\n{body}\n")
        (standins / tool).chmod(0o755)
    return {**os.environ, "PATH": f"{standins}{os.pathsep}{os.environ['PATH']}", "FSTYP_SAYS": fstyp_says,
            "BUNDLE_AGENT": str(directory / "bundle-agent"), "BUNDLE_AGENT_DEV": str(directory / "dev"),
            "BUNDLE_AGENT_MEDIA": str(directory / "media"), "STANDIN_RECORD": str(directory / "record")}


def test_the_freebsd_helper_mounts_fat32_read_only_and_runs_on_insert(tmp_path):
    env = bsd_world(tmp_path, "msdosfs")
    result = subprocess.run([str(BSD_HELPER), "da0s1"], env=env, capture_output=True, text=True, timeout=60)
    target = tmp_path / "media/da0s1"
    assert result.returncode == 4, result.stderr  # the agent's code; its reboot policy reboots
    assert (tmp_path / "record/mount-call").read_text().splitlines() == [
        "-t", "msdosfs", "-o", "ro,noexec,nosuid,noatime", str(tmp_path / "dev/da0s1"), str(target)]
    assert (tmp_path / "record/argv").read_text().splitlines() == ["on-insert", str(target)]
    assert (tmp_path / "record/umount-calls").read_text().splitlines()[-1] == str(target)
    assert not target.exists()
    assert "-t bundle-agent-insert -- mounted" in (tmp_path / "record/syslog").read_text()  # devd gives no terminal


@pytest.mark.parametrize("fstyp_says", ["ufs", "exfat", ""])
def test_the_freebsd_helper_takes_fat32_only(tmp_path, fstyp_says):
    env = bsd_world(tmp_path, fstyp_says)
    result = subprocess.run([str(BSD_HELPER), "da0s1"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "FreeBSD cabinets take FAT32 sticks" in result.stderr
    assert not (tmp_path / "record/mount-call").exists() and not (tmp_path / "record/argv").exists()


@pytest.mark.parametrize("cdev", ["ada0", "da0s1a", "../da0", "da0;true", "msdosfs/STICK", ""])
def test_the_freebsd_helper_refuses_other_names(tmp_path, cdev):
    env = bsd_world(tmp_path, "msdosfs")
    result = subprocess.run([str(BSD_HELPER), cdev], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("bundle-agent-insert: refused: ")
    assert not (tmp_path / "record/mount-call").exists() and not (tmp_path / "record/argv").exists()


def rc_script() -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The rc.d script's rcorder(8) header, its variables and its start function's agent call."""
    text = RC_SCRIPT.read_text()
    # rcorder takes every such comment line: one of each, or a stray line adds requirements.
    lines = re.findall(r"^#\s*(PROVIDE|REQUIRE|BEFORE|KEYWORD):(.*)$", text, re.M)
    header = {keyword: value.strip() for keyword, value in lines}
    assert len(header) == len(lines), lines
    variables = {name: shlex.split(value)[0] for name, value in re.findall(r'^(\w+)=(\S+)$', text, re.M)}
    body = re.search(r"^%s\(\)\n\{\n(.*?)^\}" % re.escape(variables["start_cmd"]), text, re.M | re.S)
    assert body, "no start function"
    [call] = [shlex.split(line) for line in body.group(1).splitlines() if "bundle-agent" in line and "echo" not in line]
    return header, variables, call


def test_the_rc_script_runs_boot_check_like_the_linux_unit():
    header, variables, call = rc_script()
    assert header["PROVIDE"] == variables["name"] == RC_SCRIPT.name == "bundle_agent_boot_check"
    assert header["REQUIRE"].split()[0] == "LOGIN" and "nojail" in header["KEYWORD"].split()
    assert variables["rcvar"] == "bundle_agent_boot_check_enable"
    assert "run_rc_command" in RC_SCRIPT.read_text() and ". /etc/rc.subr" in RC_SCRIPT.read_text()
    [linux] = unit("bundle-agent-boot-check.service")["Service"]["ExecStart"]
    linux_call = linux.split()
    assert call[0] == "/usr/local/sbin/bundle-agent"  # the FreeBSD prefix
    assert [Path(call[0]).name, *call[1:]] == [Path(linux_call[0]).name, *linux_call[1:]]
    assert call[1:] == ["boot-check"]


def test_both_helpers_call_the_agent_the_same_way():
    """The runs above prove each helper's argv; here, that both spell it the same and run nothing else
    of the agent's."""
    for helper, installed in ((HELPER, "/usr/sbin/bundle-agent"), (BSD_HELPER, "/usr/local/sbin/bundle-agent")):
        text = helper.read_text()
        assert f"agent=${{BUNDLE_AGENT:-{installed}}}" in text  # where each system installs the agent
        calls = re.findall(r'"\$agent"[^\n]*', text)
        assert len(calls) == 1 and calls[0].startswith('"$agent" on-insert "$target" </dev/null'), (helper, calls)


def test_every_file_in_system_is_described_in_the_readme():
    readme = (SYSTEM / "README.md").read_text()
    for path in (RULE, HELPER, BSD_HELPER, DEVD, RC_SCRIPT, *UNITS.iterdir()):
        assert f"`{path.relative_to(SYSTEM)}`" in readme, path
