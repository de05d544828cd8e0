"""The reference cabinet in a VM, as a short story's driver: power it on, plug in a stick, watch
it install, reboot into the trial and commit, cut its power, look at what it says.

* :class:`Image` - build/cabinet.img and the facts ``make image`` wrote beside it (image.json);
* :class:`Releases` - later releases, their bundles and their sticks, made on the host with the
  real tools (``bundle make --base``, ``bundle write``, mkfs.vfat/mtools, mkfs.exfat/exfat-fuse);
* :class:`Cabinet` - one scenario's machine (a qcow2 overlay of the image) and what a technician
  would do with it, every step through the serial console, QMP or the power switch.

The cabinet's own messages (the insert helper's, the agent's) go to its journal; the driver reads
them with ``journalctl`` in the root shell on ttyS0, and watches the console for GRUB's
``cabinet: booting ENV`` line to see a reboot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.format.bundle_dir import MANIFEST
from agent.format.manifest import Manifest
from tests.sim.summary import count_summary
from tests.sim.tools import run_cli
from tests.vm import sticks
from tests.vm.esp import REPO, run
from tests.vm.machine import REBOOTING, Boot, Machine, MachineError, overlay

# GRUB announces the environment 12-20 s after a reboot is asked for (shutdown included), 30-40 s
# with three machines on two cores; silence far beyond that is a hang.
GRUB_SECONDS = 120
FIRMWARE_RESETS = 3  # in one wait for a boot: a firmware that hangs after each is broken, not unlucky
BOOT_SECONDS = 600  # a full systemd boot takes ~60 s under TCG here; a loaded CI machine is slower
INSTALL_SECONDS = 900  # an insertion, from plugging in to the helper's exit or the reboot
JUDGE_SECONDS = 600  # boot-check: the health hooks (60 s timeout each) and the commit
STAGED, REFUSED, NOTHING = 4, 3, 0  # the agent's exit codes (docs/AGENT.md)
GUEST_CHECK = Path(__file__).with_name("guest_check.py")
AGENT_PYTHON = "/opt/bundle-agent/bin/python"
_EXITED = re.compile(r"bundle-agent on-insert \S+ exited (\d+)")
# The agent's runs print their writes on the console (trace_agent_writes). Through /dev/console,
# not /dev/ttyS0: the serial getty hangs ttyS0 up as it starts (vhangup), and a later write by a
# process that opened ttyS0 fails with EIO - boot-check, tracing its commit while the getty
# started, failed between two of its writes; the kernel never hangs up a /dev/console opener.
TRACE = "BUNDLE_CRASH_TRACE=/dev/console"
# A line of keys/crashpoint.py's trace: the number of the durable write in this process, and its name.
WRITE = re.compile(r"(?:^|\s)(\d+) ((?:write|fsync|fsync-dir|rename|sync|grubenv|clone|stage|audit|rotate) \S+)")
REBOOTING_TEXT = re.compile(REBOOTING.pattern.decode())
FOLLOWED = "insert-journal: "  # the prefix of the insert helper's journal lines copied to the console
# The end of an insertion on the console: the helper's exit code, or the machine going down for
# the reboot into a trial.
INSERTION_END = re.compile(rf"{FOLLOWED}bundle-agent-insert: bundle-agent on-insert \S+ exited (\d+)|"
                           rf"{REBOOTING_TEXT.pattern}")
# Seconds measured by the scenarios, printed as "vm timing:" lines at the end (tests/vm/conftest.py).
TIMINGS: dict[str, list[float]] = defaultdict(list)
# FIRMWARE_HANG: now and then OVMF or GRUB (under TCG, with a stick on the xHCI bus) hangs at a
# reset before the kernel: 1 in ~30 warm reboots here, with no install involved, while machines
# had two CPUs. Mostly OVMF, its CPU spinning with interrupts off (waiting for the second CPU:
# tests/vm/machine.py; machines have one since); GRUB has also stopped after "Welcome to GRUB!" with
# interrupts on, once for 4 minutes before it booted, once for good (its script reads two small
# files and never a stick: system/linux/grub/grub.cfg). A cabinet's board watchdog resets such a
# hang, so the harness does the same after GRUB_SECONDS of silence, and counts it apart from the
# boots of the summary, with the CPU's state in the console log. A warm reset has not always
# cleared it: the firmware has hung again after each of three, twice with the stick already
# pulled, while no power-on of a new QEMU has ever hung. So from the second reset of one boot on,
# the harness switches the machine off and on (QEMU restarted), as a watchdog that power-cycles
# the board or a technician would; the stick goes with it. No boot reads a stick.
FIRMWARE_SUMMARY = ("vm: {hangs} hangs of the firmware or GRUB before the kernel, {cycled} of them power-cycled "
                    "after a warm reset did not clear them (OVMF under TCG; FIRMWARE_HANG)")
SUMMARY = "vm: {boots} boots, {insertions} insertions, {power_cuts} power cuts, {unbootable} unbootable, " \
          "{lost} lost environments"
GAME = "game/demo"


@dataclass(frozen=True)
class Image:
    """The reference image and what ``make image`` says about it (build/image/image.json)."""

    disk: Path
    keys: Path
    root: Path
    release_key: Path
    release: Path  # release 1's release.toml
    bundle: Path  # full-1, provisioned at the factory
    facts: dict

    @classmethod
    def load(cls, build: Path | None = None) -> "Image":
        """The image in ``build`` (default: $BUNDLE_VM_BUILD, else the repository's build/).
        Raises FileNotFoundError saying to run ``make image`` when it is not there."""
        build = Path(build or os.environ.get("BUNDLE_VM_BUILD") or REPO / "build").resolve()
        facts_file = build / "image" / "image.json"
        if not facts_file.exists():
            raise FileNotFoundError(f"{facts_file} is missing: run `make image` first")
        facts = json.loads(facts_file.read_text())
        base = build.parent  # image.json's paths are relative to the repository (build/...)
        paths = {key: base / value for key, value in facts["paths"].items()}
        return cls(disk=base / facts["image"], keys=paths["keys"], root=paths["root"],
                   release_key=paths["release_key"], release=paths["release"], bundle=paths["bundle"], facts=facts)

    @property
    def product(self) -> str:
        return self.facts["product"]

    def digests(self, bundle: Path) -> dict[str, tuple[int, str]]:
        """(sequence, tree digest) of each component a bundle brings, from its signed manifest."""
        manifest = Manifest.from_stored((bundle / MANIFEST).read_bytes(), where=bundle)
        return {c.name: (c.sequence, c.tree_digest) for c in manifest.components}


class Releases:
    """Releases after release 1, made from its trees in ``directory``; bundles and sticks of them."""

    def __init__(self, image: Image, directory: Path):
        self.image = image
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.release_1 = image.release
        self.tree_1 = image.release.parent

    def game(self, name: str, sequence: int, *, health: str | None = None) -> Path:
        """release.toml of a game-only release: release 1's platform (its tree named where it is), the
        demo game at ``sequence``
        with a new line in its run script, and (``health``) an executable ``health`` script."""
        release = self.dir / name
        game = release / "games" / "demo"
        shutil.copytree(self.tree_1 / "games" / "demo", game)
        with open(game / "run", "a") as run:
            run.write(f"# release {name}\n")
        if health is not None:
            (game / "health").write_text(f"#!/bin/sh\n{health}\n")
            (game / "health").chmod(0o755)
        return self._toml(release, platform=self.tree_1 / "platform", platform_sequence=1, game_sequence=sequence)

    def platform(self, name: str, sequence: int, *, change: Callable[[Path], None] | None = None) -> Path:
        """release.toml of a platform release: a copy of release 1's platform with a release note
        (``change`` edits it further), release 1's game."""
        release = self.dir / name
        release.mkdir()
        # cp -a: owners, modes, hard links and extended attributes as they are (copytree would
        # make root the owner of everything, a change of the platform of its own).
        run("cp", "-a", "--reflink=auto", self.tree_1 / "platform", release / "platform")
        note = release / "platform" / "usr" / "share" / "cabinet-release"
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(f"platform release {name}, sequence {sequence}\n")
        if change:
            change(release / "platform")
        return self._toml(release, platform=Path("platform"), platform_sequence=sequence,
                          game=self.tree_1 / "games" / "demo", game_sequence=1)

    def _toml(self, release: Path, *, platform: Path, platform_sequence: int, game_sequence: int,
              game: Path = Path("games/demo")) -> Path:
        release.mkdir(parents=True, exist_ok=True)
        path = release / "release.toml"
        path.write_text(f'''product = "{self.image.product}"
hardware = ["{self.image.facts["hardware"]}"]
[components.platform]
path = "{platform}"
version = "1.0.{platform_sequence - 1}"
sequence = {platform_sequence}
[components."game/demo"]
path = "{game}"
version = "1.{game_sequence - 1}"
sequence = {game_sequence}
''')
        return path

    def bundle(self, name: str, release: Path, *, base: Path | None = None, full: bool = False) -> Path:
        """``bundle make`` of ``release`` (a delta from ``base``, default release 1, unless ``full``)."""
        out = self.dir / "bundles" / name
        if not out.exists():
            args = ["bundle", "make", "--release", release, "--base", base or self.release_1, "--key",
                    self.image.release_key, "--out", out, "--level", "3"]
            run_cli(*map(str, args + (["--full"] if full else [])), check=True)
        return out

    def stick(self, name: str, *bundles: Path, filesystem: str = "fat32") -> Path:
        """A stick image (``fat32`` or ``exfat``) holding these bundles and the trust root."""
        image = self.dir / "sticks" / f"{name}.img"
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            folder = sticks.write_folder(self.dir / "sticks" / name, list(bundles), [self.image.root])
            sticks.MAKERS[filesystem](folder, image)
        return image

    def known_digests(self) -> set[str]:
        """The tree digests of every component of every bundle made so far, release 1's included."""
        bundles = [self.image.bundle, *(self.dir / "bundles").glob("*")] if (self.dir / "bundles").exists() \
            else [self.image.bundle]
        return {digest for bundle in bundles for _, digest in self.image.digests(bundle).values()}

    def hostile_stick(self, name: str, bundle: Path, attack) -> Path:
        """A FAT32 stick holding ``bundle`` after ``attack`` (tests/vm/sticks.py)."""
        image = self.dir / "sticks" / f"{name}.img"
        honest = sticks.write_folder(self.dir / "sticks" / f"{name}-honest", [bundle], [self.image.root])
        folder = sticks.hostile_folder(self.dir / "sticks" / name, honest, bundle, self.image.keys,
                                       self.image.product, attack)
        return sticks.fat32(folder, image)


@dataclass(frozen=True)
class Insertion:
    """What became of a stick: the helper's exit code (None when the machine rebooted first) and
    whether the machine then rebooted (``boot``: the boot that followed)."""

    exit: int | None
    boot: Boot | None
    seconds: float


class Cabinet:
    """One scenario's cabinet: a qcow2 overlay of the image in its own QEMU (module docstring)."""

    def __init__(self, image: Image, directory: Path):
        self.image = image
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.machine = Machine(self.dir / "vm", [overlay(image.disk, self.dir / "disk.qcow2")],
                               noise=f"^{FOLLOWED}")
        self.boot_seconds: list[float] = []  # power on (or reset) to a root shell, per boot
        self.unbootable = 0
        self.firmware_hangs = 0  # resets of a firmware or GRUB hung before the kernel (FIRMWARE_HANG)
        self.power_cycles_at_hangs = 0  # of those, the ones that switched it off and on (QEMU restarted)
        self.lost = 0  # checks that found the state's environment missing or not what was signed
        self.known: Callable[[], set[str]] = lambda: set()  # tree digests of every signed manifest made
        self._stick = 0

    # --- power ------------------------------------------------------------------------------------

    def power_on(self) -> Boot:
        since = self.machine.mark()
        self.machine.start()
        return self.up(since)

    def power_cut(self) -> Boot:
        """Cut the power, switch it on again, and wait for the shell of the boot that follows."""
        since = self.machine.mark()
        self.machine.power_cut()
        return self.up(since)

    def up(self, since: int) -> Boot:
        """The boot after ``since``, once a root shell answers (the last boot, should the machine
        have rebooted again meanwhile). Counts the machine unbootable when it does not come up."""
        start = time.monotonic()
        while True:
            try:
                self.wait_boot(since, BOOT_SECONDS)
            except MachineError:
                self.unbootable += 1
                raise
            try:
                self.machine.login(BOOT_SECONDS, since=since)
                break
            except MachineError:
                reboot = self.machine.rebooting()
                if reboot is None or reboot < since:
                    self.unbootable += 1
                    raise
                since, start = reboot, time.monotonic()  # it rebooted (a rollback) before the shell answered
        self.boot_seconds.append(time.monotonic() - start)
        # The insert helper's journal lines, copied to the console as they come: an insertion is
        # watched there, never by typing (keys typed just before an agent's reboot would reach
        # GRUB after the reset and stop it at its menu).
        self.sh(f"(journalctl -f -n0 -o cat -t bundle-agent-insert | sed -u 's/^/{FOLLOWED}/' > /dev/ttyS0 2>&1 &)")
        return self.machine.boots(since)[-1]

    def wait_boot(self, since: int, timeout: float) -> Boot:
        """The next boot GRUB announces after ``since`` (an install before the reset included,
        within ``timeout`` s). A console silent for ``GRUB_SECONDS`` after a reset, before GRUB
        announced a boot, is a hang of the firmware or of GRUB (FIRMWARE_HANG): reset, as a
        board's watchdog would, and waited for again."""
        deadline = time.monotonic() + timeout
        resets = 0  # of ours in this wait: the firmware may hang again right after one
        while True:
            try:
                return self.machine.wait_boot(max(1.0, min(30.0, deadline - time.monotonic())), since=since)
            except MachineError:
                reset = self.machine.rebooting()
                after_reset = resets > 0 or (reset is not None and reset >= since)
                silent = after_reset and self.machine.silent_seconds() >= GRUB_SECONDS
                if resets >= FIRMWARE_RESETS or not silent:  # installing or booting: wait on
                    if time.monotonic() >= deadline:
                        raise
                    continue
                self.firmware_hangs += 1
                resets += 1
                self.machine.note(f"\n--- vm: hung before the kernel ---\n{self.machine.cpu_state()}\n")
                since = self.machine.mark()
                if resets == 1:
                    self.machine.reset()
                else:
                    self.power_cycles_at_hangs += 1
                    self.machine.power_cycle()
                deadline = time.monotonic() + timeout

    def trace_agent_writes(self) -> None:
        """From now on, have every run of the agent print each durable write on the serial console
        as it comes to it (keys/crashpoint.py: BUNDLE_CRASH_TRACE), so a power cut can be timed to
        one. In this boot by a runtime drop-in for the insert service (in /run: gone at the next
        boot); in every later boot, boot-check's runs too, by ``systemd.setenv=`` on the kernel
        command line, appended to the ``linux`` line of this machine's grub.cfg on its ESP (the
        one change made to the script under test; an environment is left as it was signed)."""
        folder = "/run/systemd/system/bundle-agent-insert@.service.d"
        self.sh(f"mkdir -p {folder} && printf '[Service]\\nEnvironment={TRACE}\\n' "
                f"> {folder}/vm-trace.conf && systemctl daemon-reload")
        script = "/boot/efi/EFI/BOOT/grub.cfg"
        self.sh(f"sed -i 's|bundle\\.env=\\$boot_env |&systemd.setenv={TRACE} |' {script} && sync && "
                f"grep -c 'systemd.setenv={TRACE}' {script}")

    def settle(self, since: int, timeout: float = JUDGE_SECONDS * 2) -> Boot:
        """Follow the machine from ``since`` until a boot whose boot-check has finished and after
        which no reboot is under way (a rollback reboots: that boot is followed too).

        One command waits inside the cabinet, so nothing is typed while it may be going down
        (keys typed then would reach GRUB after the reset): boot-check asks for its reboot before
        it ends, and ten seconds later systemd is "stopping" or the shell is gone."""
        deadline = time.monotonic() + timeout
        wait = ("until s=$(systemctl is-active bundle-agent-boot-check.service); "
                "[ \"$s\" = active ] || [ \"$s\" = failed ]; do sleep 2; done; sleep 10; systemctl is-system-running")
        while True:
            try:
                running = self.machine.shell(wait, timeout=JUDGE_SECONDS).output.strip().splitlines()
                if self.machine.rebooting() is None and running and running[-1] in ("running", "degraded"):
                    return self.machine.boots(since)[-1]
            except MachineError:
                if self.machine.rebooting() is None:
                    raise
            if time.monotonic() > deadline:
                raise self.machine.error(f"the machine did not settle within {timeout:.0f} s")
            reboot = self.machine.rebooting()
            if reboot is not None:
                self.up(reboot)  # the next boot's shell

    def close(self) -> None:
        """Stop the machine and keep its console beside the image (build/vm-logs/), where the
        next test run does not delete it as pytest does its old temporary folders."""
        self.machine.close()
        logs = self.image.disk.parent / "vm-logs"
        logs.mkdir(exist_ok=True)
        shutil.copyfile(self.machine.dir / "serial.log", logs / f"{self.dir.parent.name}-{self.dir.name}.log")

    def count(self, label: str, seconds: float) -> None:
        """Add what this machine did to the summary line, and its timings (``label``: the scenario)."""
        count_summary("vm", SUMMARY, boots=len(self.machine.boots()), insertions=self.machine.insertions,
                      power_cuts=self.machine.power_cuts, unbootable=self.unbootable, lost=self.lost)
        if self.firmware_hangs:
            count_summary("vm-firmware", FIRMWARE_SUMMARY, hangs=self.firmware_hangs,
                          cycled=self.power_cycles_at_hangs)
        TIMINGS["a full boot (power on to a root shell)"].extend(self.boot_seconds)
        TIMINGS[label].append(seconds)

    # --- looking at it ------------------------------------------------------------------------------

    def sh(self, command: str, timeout: float = 120) -> str:
        """A command's output; raises MachineError when it fails."""
        return self.machine.shell(command, timeout, check=True).output

    def status(self) -> dict:
        """``bundle-agent status --json`` (it must succeed: the state parses)."""
        # Without the write trace (trace_agent_writes): its lines would land in the output.
        return json.loads(self.sh("env -u BUNDLE_CRASH_TRACE bundle-agent status --json"))

    def cmdline(self) -> str:
        return self.sh("cat /proc/cmdline")

    def journal(self, *identifiers: str, timeout: float = 120) -> str:
        """This boot's journal lines of these syslog identifiers (message text only)."""
        ids = " ".join(f"-t {i}" for i in identifiers)
        return self.sh(f"journalctl -b --no-pager -o cat {ids}", timeout=timeout)

    def check(self) -> dict:
        """tests/vm/guest_check.py run by the agent's Python in the cabinet: one JSON report."""
        if self.machine.shell("test -f /run/vm-check.py").status != 0:
            self.machine.put_file("/run/vm-check.py", GUEST_CHECK.read_bytes())
        return json.loads(self.sh(f"{AGENT_PYTHON} /run/vm-check.py", timeout=900))

    def verify(self, when: str = "") -> dict:
        """The checks after every scenario and power cut: the state parses, the machine runs the
        environment the state names, that environment exists and each component's tree has the
        digest the state recorded, which is a digest a signed manifest gave. Counts a lost
        environment and raises AssertionError (saying ``when``) otherwise; returns the report."""
        report = self.check()
        where = f" after {when}" if when else ""
        assert "state_error" not in report, f"the state does not parse{where}: {report}"
        problems = []
        if report["committed"] not in report["environments"]:
            problems.append(f"the committed environment {report['committed']} is gone")
        else:
            if report["booted"] != report["committed"]:
                problems.append(f"the machine runs {report['booted']}, the state names {report['committed']}")
            known = self.known()
            for name, component in report["components"].items():
                if component["tree"] != component["state"]:
                    problems.append(f"{name} in {report['booted']} differs from the digest in the state")
                elif known and component["state"] not in known:
                    problems.append(f"{name}'s digest in the state is no signed manifest's")
        if problems:
            self.lost += 1
            raise AssertionError(f"{'; '.join(problems)}{where}: {report}")
        return report

    def committed_to(self, env: str, components: dict[str, int]) -> None:
        """The running kernel, the state and the environment itself all say ``env`` with these sequences."""
        status = self.status()
        assert f"bundle.env={env}" in self.cmdline().split()
        assert status["committed_environment"] == env, status
        assert status["pending"] is None, status
        assert {n: c["sequence"] for n, c in status["components"].items()} == components, status
        flags = next(e["flags"] for e in status["environments"] if e["name"] == env)
        assert "N" in flags and "R" in flags, status
        self.verify()

    # --- sticks -------------------------------------------------------------------------------------

    def plug(self, stick: Path) -> str:
        """Plug the stick in; its QMP id."""
        self._stick += 1
        name = f"stick{self._stick}"
        self.machine.insert_stick(stick, name)
        return name

    def insert(self, stick: Path, timeout: float = INSTALL_SECONDS) -> Insertion:
        """Plug the stick in, wait until the insert helper has exited or the machine reboots, and
        pull the stick out again (a trial must not boot with it: the stick would be offered
        again); after a reboot, wait for the shell of the boot that follows."""
        since = self.machine.mark()
        start = time.monotonic()
        name = self.plug(stick)
        found = self.machine.wait_for(INSERTION_END, timeout, since=since)
        exit_code = int(found.group(1)) if found.group(1) else None
        seconds = time.monotonic() - start
        if exit_code not in (STAGED, None):
            self.machine.pull_stick(name)
            return Insertion(exit_code, None, seconds)
        if exit_code == STAGED:  # its reboot follows in a moment
            self.machine.wait_for(REBOOTING_TEXT, 300, since=since)
        reboot = self.machine.rebooting()
        # Pulled once GRUB has chosen: QEMU does not finish unplugging a USB device while the
        # machine resets, and the kernel has not looked at the bus yet.
        self.wait_boot(reboot, BOOT_SECONDS)
        self.machine.pull_stick(name)
        return Insertion(exit_code, self.up(reboot), seconds)

    def install(self, stick: Path) -> Boot:
        """Insert a stick whose update must stage: the trial boot it reboots into."""
        insertion = self.insert(stick)
        if insertion.boot is None:
            raise self.machine.error(f"{stick.name}: the insert helper exited {insertion.exit}, no update staged:\n"
                                     f"{self.journal('bundle-agent-insert')[-3000:]}")
        return insertion.boot
