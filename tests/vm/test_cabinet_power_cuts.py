"""Power cuts in the reference cabinet: at least 50 (``VM_POWER_CUTS``), spread over staging, the
reboot into the trial, the trial's boot and boot-check's commit (docs/DEVICE.md, "Power loss").

Each cut: a stick with the next game release goes in (a whole game, so it applies to whatever is
installed), the machine is killed at a planned moment (QEMU gets SIGKILL; its disk cache mode
loses what the guest did not flush, tests/vm/test_disk_cache.py) and powered on. Then the machine
must boot an environment that is the one the state names and verifies against its signed
manifests (Cabinet.verify), and the same stick inserted again must finish the update.

The moments come from one uncut install, the calibration. Every run of the agent prints each
durable write on the console as it comes to it (Cabinet.trace_agent_writes), so the cuts in
staging and in boot-check land at the agent's own writes - every write to the environment block
and to state.json among them - and the cuts in the reboot, the trial's boot and between
boot-check's writes are timed from the calibration.

Two cabinets share the plan, each taking every other moment: under TCG one machine keeps about
one core busy, so on two cores the sweep takes about half as long (a cut with its recovery and
the finishing install takes each machine 3-5 min here, 5-8 while the other scenarios' machine
runs beside them; the 50 cuts about 2 h). The moments are interleaved across the phases, so a
small VM_POWER_CUTS still reaches every phase.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm.cabinet import GAME, NOTHING, REBOOTING_TEXT, TIMINGS, WRITE, Cabinet, Releases
from tests.vm.machine import Boot

pytestmark = pytest.mark.vm

POWER_CUTS = int(os.environ.get("VM_POWER_CUTS", "50"))
MACHINES = 2
GAME_STARTED = re.compile(r"Started cabinet-game\.service")  # systemd's console line; boot-check follows it
KEY_WRITES = ("grubenv", "state.json", "journal.json")  # the boot choice, the state, the resume journal


@dataclass(frozen=True)
class Moment:
    """When to cut: at a numbered write of the agent (``write``: "N kind", in ``phase`` "staging"
    or "boot-check"), or ``seconds`` after an event of ``phase``: "stick in" (the reboot into the
    trial), "trial GRUB line" (the trial's boot), "game started" (boot-check)."""

    phase: str
    write: str | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        return f"{self.phase} at write {self.write}" if self.write else f"{self.seconds} s after {self.phase}"


@dataclass(frozen=True)
class Calibration:
    """What one uncut install looked like: the agent's writes while staging and in boot-check,
    and seconds from the stick going in to the reset, to the trial's GRUB line, from there to
    the game started, and from there to the commit."""

    staging_writes: list[str]
    boot_check_writes: list[str]
    to_reset: float
    to_trial: float
    to_game: float
    to_commit: float


class Sticks:
    """A stick per game release, made once and copied for each cabinet (QEMU locks a disk image
    it has open: two machines cannot share one)."""

    def __init__(self, releases: Releases):
        self.releases = releases
        self._made: dict[int, Path] = {}
        self._lock = threading.Lock()

    def make(self, sequence: int) -> Path:
        with self._lock:
            if sequence not in self._made:
                name = f"game-{sequence}-whole"
                bundle = self.releases.bundle(name, self.releases.game(name, sequence), full=True)
                self._made[sequence] = self.releases.stick(name, bundle)
            return self._made[sequence]

    def for_cabinet(self, cabinet: Cabinet, sequence: int) -> Path:
        copy = cabinet.dir / f"game-{sequence}.img"
        if not copy.exists():
            shutil.copyfile(self.make(sequence), copy)
        return copy


def test_power_cuts_over_staging_the_trial_reboot_the_trial_boot_and_the_commit(image, releases, tmp_path):
    sticks = Sticks(releases)
    # Every stick the sweep needs, made before any machine verifies against the bundles made so far.
    for sequence in range(2, POWER_CUTS // MACHINES + 4):
        sticks.make(sequence)
    plan: Future = Future()
    stop = threading.Event()

    def run(index: int) -> int:
        """One cabinet's share of the plan; its number of cuts."""
        started = time.monotonic()
        cabinet = Cabinet(image, tmp_path / f"cabinet-{index + 1}")
        cabinet.known = releases.known_digests
        try:
            assert cabinet.power_on() == Boot("env-1", trial=False)
            cabinet.trace_agent_writes()
            sequence = 1
            if index == 0:
                sequence = 2
                plan.set_result(cut_plan(POWER_CUTS, calibrate(cabinet, sticks.for_cabinet(cabinet, sequence))))
            for number, moment in list(enumerate(plan.result(), 1))[index::MACHINES]:
                if stop.is_set():
                    break
                sequence += 1
                stick = sticks.for_cabinet(cabinet, sequence)
                cut_once(cabinet, stick, moment)
                cabinet.verify(f"power cut {number} ({moment})")
                finish(cabinet, stick, sequence)
            return cabinet.machine.power_cuts
        except BaseException as error:
            if not plan.done():  # the other machine waits for the plan
                plan.set_exception(error)
            raise
        finally:
            cabinet.count("a power-cut cabinet", time.monotonic() - started)
            cabinet.close()

    with ThreadPoolExecutor(MACHINES) as pool:
        runs = [pool.submit(run, index) for index in range(MACHINES)]
        wait(runs, return_when=FIRST_EXCEPTION)
        stop.set()  # a failure stops the other machine after its current cut
        cuts = sum(run.result() for run in runs)
    assert cuts == len(plan.result()) >= min(POWER_CUTS, 50)


def calibrate(cabinet: Cabinet, stick: Path) -> Calibration:
    """An install without a cut, the agent narrating its writes (module docstring)."""
    machine = cabinet.machine
    since = machine.mark()
    plugged = time.monotonic()
    name = cabinet.plug(stick)
    machine.wait_for(REBOOTING_TEXT, 900, since=since)
    to_reset = time.monotonic() - plugged
    assert cabinet.wait_boot(since, 900) == Boot("env-2", True)
    to_trial = time.monotonic() - plugged
    trial = machine.mark()
    machine.pull_stick(name)
    machine.wait_for(GAME_STARTED, 900, since=trial)
    game_started = time.monotonic()
    cabinet.settle(since)
    to_commit = time.monotonic() - game_started  # an upper bound; the journal's clock says better:
    cabinet.committed_to("env-2", {"platform": 1, GAME: 2})
    started, committed = (cabinet.sh(f"journalctl -b -o short-monotonic --no-pager | grep -m1 '{line}' || true")
                          for line in ("Started cabinet-game.service", "committed environment="))
    if started and committed:
        to_commit = seconds_of(committed) - seconds_of(started)
    calibration = Calibration(
        staging_writes=[f"{n} {name}" for n, name in WRITE.findall(machine.text(since, trial))],
        boot_check_writes=[f"{n} {name}" for n, name in WRITE.findall(machine.text(trial))],
        to_reset=to_reset, to_trial=to_trial, to_game=game_started - plugged - to_trial, to_commit=to_commit)
    assert calibration.staging_writes, "the agent printed none of its writes: is BUNDLE_CRASH_TRACE honoured?"
    assert calibration.boot_check_writes, "boot-check printed none of its writes: is systemd.setenv= on the " \
                                          "kernel command line?"
    TIMINGS["an install, stick in to the trial's GRUB line"].append(to_trial)
    TIMINGS["a trial boot, GRUB line to the game started"].append(calibration.to_game)
    TIMINGS["boot-check, the game started to committed"].append(to_commit)
    return calibration


def seconds_of(line: str) -> float:
    """The monotonic time of a ``journalctl -o short-monotonic`` line: ``[   52.123456] ...``."""
    return float(re.match(r"\[\s*(\d+\.\d+)\]", line.strip()).group(1))


def spread(items: list, count: int) -> list:
    """``count`` items taken evenly from ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def at_writes(phase: str, writes: list[str], count: int) -> list[Moment]:
    """``count`` of ``writes``: every write to the environment block, the state and the journal
    first (evenly, should there be more of them), then others evenly."""
    key = [w for w in writes if any(k in w for k in KEY_WRITES)]
    others = [w for w in writes if w not in key]
    chosen = spread(key, count) + spread(others, max(count - len(key), 0))
    return [Moment(phase, write=w) for w in sorted(chosen, key=lambda w: int(w.split()[0]))]


def timed(phase: str, start: float, end: float, count: int) -> list[Moment]:
    return [Moment(phase, seconds=round(start + (end - start) * i / max(count - 1, 1), 1)) for i in range(count)]


def cut_plan(count: int, calibration: Calibration) -> list[Moment]:
    """``count`` moments: three tenths at staging's writes, a fifth at boot-check's, a tenth in
    the reboot into the trial, a fifth in the trial's boot before the game starts, and the rest
    timed over boot-check (between and around its writes). Fewer writes than planned: more
    timed cuts."""
    moments = at_writes("staging", calibration.staging_writes, max(count * 3 // 10, 1))
    moments += at_writes("boot-check", calibration.boot_check_writes, max(count // 5, 1))
    in_reboot, in_boot = max(count // 10, 1), max(count // 5, 1)
    # The shutdown: the agent asked for the reboot a little before the reset.
    moments += timed("stick in", max(calibration.to_reset - 15, 1), calibration.to_trial, in_reboot)
    moments += timed("trial GRUB line", 0, calibration.to_game, in_boot)
    moments += timed("game started", 0, calibration.to_commit + 2, max(count - len(moments), 0))
    return interleaved(moments)


def interleaved(moments: list[Moment]) -> list[Moment]:
    """The moments taken from each phase in turn, so that a sweep cut short (or a quick look with
    a small VM_POWER_CUTS) still reaches every phase; within a phase the order stays."""
    phases: dict[str, list[Moment]] = {}
    for moment in moments:
        phases.setdefault(moment.phase, []).append(moment)
    queues = list(phases.values())
    ordered = []
    while any(queues):
        for queue in queues:
            if queue:
                ordered.append(queue.pop(0))
    return ordered


def cut_once(cabinet: Cabinet, stick: Path, moment: Moment) -> None:
    """Insert the stick and cut the power at ``moment``; wait for the shell of the boot after."""
    machine = cabinet.machine
    since = machine.mark()
    name = cabinet.plug(stick)
    if moment.phase != "staging" and moment.phase != "stick in":
        cabinet.wait_boot(since, 900)  # the trial's GRUB line
        since = machine.mark()
        machine.pull_stick(name)
        if moment.phase == "game started":
            machine.wait_for(GAME_STARTED, 900, since=since)
    if moment.write:
        number, kind = moment.write.split()[:2]  # the kind, not the name: names hold environments
        machine.wait_for(rf"(?:^|\s){number} {re.escape(kind)} ", 900, since=since)
    time.sleep(moment.seconds)
    cut = machine.mark()
    machine.power_cut()  # the stick is gone with the power: it goes in again in finish()
    cabinet.up(cut)
    cabinet.settle(cut)


def finish(cabinet: Cabinet, stick: Path, sequence: int) -> None:
    """Insert the stick again: it must finish the update (or find it finished already)."""
    since = cabinet.machine.mark()
    insertion = cabinet.insert(stick)
    if insertion.boot is not None:
        cabinet.settle(since)
    else:
        assert insertion.exit == NOTHING, insertion
    status = cabinet.status()
    assert status["components"][GAME]["sequence"] == sequence, status
    assert status["pending"] is None, status
    cabinet.verify()
