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

Time under TCG on 2 cores: a full boot ~20-70 s, a scenario 2-7 min. The power cuts are in
tests/vm/test_cabinet_power_cuts.py; ``BUNDLE_VM_BUILD=DIR`` tests the image in another build folder.
"""

from __future__ import annotations

import time

import pytest

from tests.vm import sticks
from tests.vm.cabinet import GAME, REFUSED, STAGED
from tests.vm.machine import Boot

pytestmark = pytest.mark.vm


# --- insertion, trial, commit ------------------------------------------------------------------------


def test_smoke_a_fat32_stick_installs_a_game_update_through_a_trial(cabinet, releases, game_2):
    since = cabinet.machine.mark()
    assert cabinet.install(releases.stick("game-2", game_2)) == Boot("env-2", trial=True)
    assert cabinet.settle(since) == Boot("env-2", trial=True)  # committed during this very boot
    cabinet.committed_to("env-2", {"platform": 1, GAME: 2})
    assert "passed its health check and is committed" in cabinet.status()["last_result"]["message"]


def test_an_exfat_stick_installs_a_platform_update(cabinet, releases):
    bundle = releases.bundle("platform-2", releases.platform("platform-2", 2))
    since = cabinet.machine.mark()
    assert cabinet.install(releases.stick("platform-2-exfat", bundle, filesystem="exfat")) == Boot("env-2", True)
    cabinet.settle(since)
    cabinet.committed_to("env-2", {"platform": 2, GAME: 1})
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
    cabinet.committed_to("env-1", {"platform": 1, GAME: 1})
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
    cabinet.committed_to("env-1", {"platform": 1, GAME: 1})
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
    cabinet.committed_to("env-2", {"platform": 1, GAME: 2})


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


