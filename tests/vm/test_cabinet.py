"""The reference cabinet in a virtual machine: real GRUB, kernel, systemd, udev and USB sticks.

Each scenario boots build/cabinet.img (``make image``) through its own qcow2 overlay under QEMU
(TCG, OVMF; tests/vm/machine.py) and tells a short story over the driver in tests/vm/cabinet.py:
a stick goes in, the cabinet installs, reboots into the trial, checks its health, commits or rolls
back; or its power is cut. ``make vm-test`` runs them and prints

    vm: N boots, N insertions, N power cuts, 0 unbootable, 0 lost environments

counted from what the machines did: boots from GRUB's ``cabinet: booting`` lines, insertions and
power cuts from the harness, unbootable from boots that never reached a shell, lost environments
from checks that found the environment the state names missing or differing from the digests its
signed manifests gave. ``make vm-test VM_SELECT=smoke`` runs the one scenario CI can afford.

Time under TCG on 2 cores: a full boot ~40-70 s, a scenario 3-7 min, a power cut with its
recovery and the finishing insertion ~6 min, so the 50 cuts take about five hours;
``VM_POWER_CUTS=N`` runs fewer (a quick look), ``BUNDLE_VM_BUILD=DIR`` another build folder.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.sim.summary import count_summary
from tests.vm import debian, sticks
from tests.vm.cabinet import (NOTHING, REBOOTING_TEXT, REFUSED, STAGED, TIMINGS, WRITE, Cabinet, Image,
                              Releases)
from tests.vm.machine import Boot

pytestmark = pytest.mark.vm

SUMMARY = "vm: {boots} boots, {insertions} insertions, {power_cuts} power cuts, {unbootable} unbootable, " \
          "{lost} lost environments"
POWER_CUTS = int(os.environ.get("VM_POWER_CUTS", "50"))
GAME = "game/demo"
GAME_STARTED = re.compile(r"Started cabinet-game\.service")  # systemd's console line; boot-check follows it


@pytest.fixture(scope="session")
def image() -> Image:
    if os.geteuid() != 0:
        pytest.skip("the VM scenarios make stick images with loop devices: needs root")
    debian.need(*debian.QEMU, *debian.GRUB, "exfatprogs", "exfat-fuse", "fuse")
    return Image.load()


@pytest.fixture(scope="session")
def releases(image, tmp_path_factory) -> Releases:
    return Releases(image, tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="session")
def game_2(releases):
    """A delta of the demo game, release 1 -> 2 (the cheapest update)."""
    return releases.bundle("game-2", releases.game("game-2", 2))


@pytest.fixture
def cabinet(image, releases, tmp_path, request):
    """A cabinet at release 1, powered on, its shell answering; counted into the summary after."""
    started = time.monotonic()
    device = Cabinet(image, tmp_path / "cabinet")
    device.known = releases.known_digests
    try:
        assert device.power_on() == Boot("env-1", trial=False)
        yield device
    finally:
        machine = device.machine
        count_summary("vm", SUMMARY, boots=len(machine.boots()), insertions=machine.insertions,
                      power_cuts=machine.power_cuts, unbootable=device.unbootable, lost=device.lost)
        TIMINGS["a full boot (power on to a root shell)"].extend(device.boot_seconds)
        TIMINGS[request.node.name].append(time.monotonic() - started)
        device.close()


def committed_to(device: Cabinet, env: str, components: dict[str, int]) -> None:
    """The running kernel, the state and the environment itself all say ``env`` with these sequences."""
    status = device.status()
    assert f"bundle.env={env}" in device.cmdline().split()
    assert status["committed_environment"] == env, status
    assert status["pending"] is None, status
    assert {n: c["sequence"] for n, c in status["components"].items()} == components, status
    assert "N" in next(e["flags"] for e in status["environments"] if e["name"] == env), status
    assert "R" in next(e["flags"] for e in status["environments"] if e["name"] == env), status
    device.verify()


# --- insertion, trial, commit ------------------------------------------------------------------------


def test_smoke_a_fat32_stick_installs_a_game_update_through_a_trial(cabinet, releases, game_2):
    since = cabinet.machine.mark()
    assert cabinet.install(releases.stick("game-2", game_2)) == Boot("env-2", trial=True)
    assert cabinet.settle(since) == Boot("env-2", trial=True)  # committed during this very boot
    committed_to(cabinet, "env-2", {"platform": 1, GAME: 2})
    assert "passed its health check and is committed" in cabinet.status()["last_result"]["message"]


def test_an_exfat_stick_installs_a_platform_update(cabinet, releases):
    bundle = releases.bundle("platform-2", releases.platform("platform-2", 2))
    since = cabinet.machine.mark()
    assert cabinet.install(releases.stick("platform-2-exfat", bundle, filesystem="exfat")) == Boot("env-2", True)
    cabinet.settle(since)
    committed_to(cabinet, "env-2", {"platform": 2, GAME: 1})
    assert cabinet.sh("cat /usr/share/cabinet-release") == "platform release platform-2, sequence 2"


# --- trials that fail ------------------------------------------------------------------------------


@pytest.mark.parametrize("health, why", [("echo 'demo: broken on purpose' >&2; exit 1", "health"),
                                         ("exec sleep 100000", "health")],
                         ids=["fails", "never-finishes"])
def test_a_trial_whose_health_check_fails_or_hangs_brings_back_the_previous_environment(
        cabinet, releases, health, why):
    name = f"game-sick-{len(health)}"
    bundle = releases.bundle(name, releases.game(name, 2, health=health))
    since = cabinet.machine.mark()
    cabinet.install(releases.stick(name, bundle))  # the trial may fail before its shell answers
    assert cabinet.settle(since) == Boot("env-1", trial=False)
    assert [b for b in cabinet.machine.boots(since)] == [Boot("env-2", True), Boot("env-1", False)]
    committed_to(cabinet, "env-1", {"platform": 1, GAME: 1})
    result = cabinet.status()["last_result"]
    assert result["outcome"] != "committed" and why in result["message"], result
    assert cabinet.sh("systemctl is-active cabinet-game.service") == "active"


def test_a_trial_whose_userland_never_starts_falls_back_through_grub_alone(cabinet):
    # No agent: a snapshot of env-1 whose /sbin/init exits (the kernel panics, panic=10 reboots),
    # and trial_env written into both blocks with coreutils, as a technician could.
    cabinet.sh("btrfs -q subvolume snapshot /pool/envs/env-1 /pool/envs/env-broken && "
               "ln -sfn /bin/false /pool/envs/env-broken/usr/sbin/init")
    for block in ("env-b", "env-a"):  # the copy first, as the agent writes them
        path = f"/boot/efi/EFI/BOOT/{block}/grubenv"
        cabinet.sh(f"printf '# GRUB Environment Block\\ndefault_env=env-1\\ntrial_env=env-broken\\n' > /tmp/block && "
                   f"head -c $((1024 - $(stat -c %s /tmp/block))) /dev/zero | tr '\\0' '#' >> /tmp/block && "
                   f"dd if=/tmp/block of={path} conv=notrunc,fsync status=none && sync")
    since = cabinet.machine.mark()
    cabinet.machine.type("systemctl reboot")
    cabinet.machine.wait_for("Kernel panic", 600, since=since)
    assert cabinet.up(cabinet.machine.mark()) == Boot("env-1", trial=False)  # panic=10: no one touches it
    assert cabinet.machine.boots(since) == [Boot("env-broken", True), Boot("env-1", False)]
    cabinet.settle(since)
    committed_to(cabinet, "env-1", {"platform": 1, GAME: 1})
    assert "trial_env=\n" in cabinet.sh("cat /boot/efi/EFI/BOOT/env-a/grubenv") + "\n"


# --- sticks that must change nothing --------------------------------------------------------------


def test_a_stick_pulled_out_mid_install_changes_nothing_and_the_next_insertion_works(cabinet, releases, game_2):
    # A whole platform is a long install: time enough to pull the stick while the agent stages it.
    big = releases.bundle("platform-2-full", releases.platform("platform-2-full", 2), full=True)
    before = cabinet.status()
    name = cabinet.plug(releases.stick("platform-2-full", big))
    # The agent's audit record "staging environment=..." (also a journal line) opens the new
    # environment; a few seconds later it is writing the platform into it.
    cabinet.machine.shell("until journalctl -b -o cat -t bundle-agent | grep -q '^staging '; do sleep 1; done",
                          timeout=900)
    time.sleep(5)
    cabinet.machine.pull_stick(name)
    cabinet.machine.shell("until journalctl -b -o cat -t bundle-agent-insert | grep -q ' exited '; do sleep 1; done",
                          timeout=600)
    journal = cabinet.journal("bundle-agent-insert")
    assert " exited 0" not in journal and f" exited {STAGED}" not in journal, journal
    after = cabinet.status()
    assert (after["committed_environment"], after["environments"], after["pending"], after["components"]) == \
        (before["committed_environment"], before["environments"], None, before["components"]), after
    since = cabinet.machine.mark()
    assert cabinet.install(releases.stick("game-2", game_2)) == Boot("env-2", trial=True)
    cabinet.settle(since)
    committed_to(cabinet, "env-2", {"platform": 1, GAME: 2})


@pytest.mark.parametrize("attack", ["dot-dot-path", "flipped-volume-byte"])
def test_a_hostile_stick_is_refused_and_the_game_keeps_running(cabinet, releases, game_2, attack):
    how = {"dot-dot-path": sticks.dot_dot_path(GAME), "flipped-volume-byte": sticks.flipped_volume_byte}[attack]
    before = cabinet.status()
    insertion = cabinet.insert(releases.hostile_stick(attack, game_2, how))
    assert insertion.exit == REFUSED and insertion.boot is None, insertion
    assert cabinet.sh("systemctl is-active cabinet-game.service") == "active"
    after = cabinet.status()
    assert (after["committed_environment"], after["environments"], after["components"], after["pending"]) == \
        (before["committed_environment"], before["environments"], before["components"], None)
    assert len(cabinet.machine.boots()) == 1, "no reboot"


# --- power cuts ----------------------------------------------------------------------------------------


def test_power_cuts_over_staging_the_trial_reboot_the_trial_boot_and_the_commit(cabinet, releases):
    """Each cut: install the next game release (a whole game, so it applies to whatever is
    installed), kill the machine at a planned moment, power on; then the machine must boot an
    environment that verifies and is the one the state names, and the same stick inserted again
    must finish the update.

    The moments: the agent's own durable writes while it stages (it prints each one on the
    console as it comes to it, keys/crashpoint.py; the grubenv and state writes are always
    among them), then times after the stick went in (the reboot into the trial) and after GRUB
    announced the trial (its boot, boot-check, the commit), measured by one uncut install."""
    sticks_made = {}

    def stick(sequence: int):
        if sequence not in sticks_made:
            name = f"game-{sequence}-whole"
            bundle = releases.bundle(name, releases.game(name, sequence), full=True)
            sticks_made[sequence] = releases.stick(name, bundle)
        return sticks_made[sequence]

    cabinet.trace_writes = True
    cabinet._trace_agent_writes()
    # Calibration: the same kind of install without a cut.
    since = cabinet.machine.mark()
    plugged = time.monotonic()
    cabinet.plug(stick(2))
    cabinet.machine.wait_for(REBOOTING_TEXT, 900, since=since)
    to_reset = time.monotonic() - plugged
    trial = cabinet.machine.wait_boot(900, since=since)
    to_trial = time.monotonic() - plugged
    assert trial == Boot("env-2", True)
    writes = WRITE.findall(cabinet.machine.text(since))
    assert writes, "the agent printed none of its writes: is BUNDLE_CRASH_TRACE honoured?"
    cabinet.machine.pull_stick(f"stick{cabinet._stick}")
    grub_line = time.monotonic()
    cabinet.machine.wait_for(GAME_STARTED, 900, since=since)
    game_started = time.monotonic()
    to_game = game_started - grub_line
    cabinet.settle(since)
    to_commit = time.monotonic() - game_started  # an upper bound; the journal's clock says better:
    committed_to(cabinet, "env-2", {"platform": 1, GAME: 2})
    started = cabinet.sh("journalctl -b -o short-monotonic --no-pager | grep -m1 'Started cabinet-game.service' "
                         "|| true")
    committed = cabinet.sh("journalctl -b -o short-monotonic --no-pager | grep -m1 'committed environment=' || true")
    if started and committed:
        to_commit = seconds_of(committed) - seconds_of(started)
    TIMINGS["an install, stick in to the trial's GRUB line"].append(to_trial)
    TIMINGS["a trial boot, GRUB line to the game started"].append(to_game)
    TIMINGS["boot-check, the game started to committed"].append(to_commit)

    plan = cut_plan(POWER_CUTS, [(int(n), name) for n, name in writes], to_reset, to_trial, to_game, to_commit)
    sequence = 2
    for number, (phase, at) in enumerate(plan, 1):
        sequence += 1
        cut_once(cabinet, stick(sequence), phase, at)
        cabinet.verify(f"power cut {number} ({phase} {at})")
        finish(cabinet, stick(sequence), sequence)
    assert cabinet.machine.power_cuts == len(plan) >= min(POWER_CUTS, 50)
    assert cabinet.unbootable == 0 and cabinet.lost == 0


def spread(items: list, count: int) -> list:
    """``count`` items taken evenly from ``items`` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[round(i * (len(items) - 1) / max(count - 1, 1))] for i in range(count)]


def seconds_of(line: str) -> float:
    """The monotonic time of a ``journalctl -o short-monotonic`` line: ``[   52.123456] ...``."""
    return float(re.match(r"\[\s*(\d+\.\d+)\]", line.strip()).group(1))


def cut_plan(count: int, writes: list[tuple[int, str]], to_reset: float, to_trial: float, to_game: float,
             to_commit: float) -> list[tuple[str, object]]:
    """``count`` moments: two fifths at the agent's writes while staging (every write to the
    environment block and to journal.json, then others evenly), one tenth in the reboot into the
    trial, a quarter in the trial's boot (after its GRUB line) and the rest while boot-check runs
    and commits (after the game started: boot-check is ordered after it)."""
    at_writes = count * 2 // 5
    in_reboot = max(count // 10, 1)
    in_boot = max(count // 4, 1)
    key = [w for w in writes if w[1].startswith("grubenv") or "state.json" in w[1] or "journal.json" in w[1]]
    others = [w for w in writes if w not in key]
    chosen = sorted(spread(key, at_writes) + spread(others, max(at_writes - len(key), 0)))
    plan: list[tuple[str, object]] = [("at write", f"{n} {name}") for n, name in chosen]
    at_commit = count - len(chosen) - in_reboot - in_boot  # fewer writes than planned: more here
    start = max(to_reset - 15, 1)  # the shutdown: the agent asked for the reboot a little before the reset
    plan += [("after the stick went in, s:", round(start + (to_trial - start) * i / max(in_reboot - 1, 1), 1))
             for i in range(in_reboot)]
    plan += [("after the trial's GRUB line, s:", round(to_game * i / in_boot, 1)) for i in range(in_boot)]
    plan += [("after the trial's game started, s:", round((to_commit + 2) * i / max(at_commit - 1, 1), 1))
             for i in range(at_commit)]
    return plan


def cut_once(cabinet: Cabinet, stick_image, phase: str, at) -> None:
    since = cabinet.machine.mark()
    name = cabinet.plug(stick_image)
    if phase == "at write":
        number, kind = at.split()[:2]
        cabinet.machine.wait_for(rf"(?:^|\s){number} {re.escape(kind)} ", 900, since=since)
    elif phase.startswith("after the stick"):
        time.sleep(at)
    else:
        cabinet.machine.wait_boot(900, since=since)
        cabinet.machine.pull_stick(name)
        if "game" in phase:
            cabinet.machine.wait_for(GAME_STARTED, 900, since=since)
        time.sleep(at)
    cut = cabinet.machine.mark()
    cabinet.machine.power_cut()  # the stick is gone with the power: it goes in again in finish()
    cabinet.up(cut)
    cabinet.settle(cut)


def finish(cabinet: Cabinet, stick_image, sequence: int) -> None:
    """Insert the stick again: it must finish the update (or find it finished already)."""
    since = cabinet.machine.mark()
    insertion = cabinet.insert(stick_image)
    if insertion.boot is not None:
        cabinet.settle(since)
    else:
        assert insertion.exit == NOTHING, insertion
    status = cabinet.status()
    assert status["components"][GAME]["sequence"] == sequence, status
    assert status["pending"] is None, status
    cabinet.verify()
