"""What the agent does after a crash, a failed trial or a second agent (docs/AGENT.md, "State and
crash safety"): named cases of what tests/test_power_cuts.py sweeps point by point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.sim.device import Cabinet, World


def _environments(cabinet: Cabinet) -> list[str]:
    return sorted(p.name for p in (cabinet.dir / "envs").iterdir() if p.is_dir())


def _committed_in_r2(cabinet: Cabinet, world: World) -> None:
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    assert "is committed" in cabinet.agent("boot-check", check=True).stdout


# --- manual rollback: journaled, the boot record is the commit point ---------------------------------


def test_rollback_cut_after_the_boot_record_is_finished_by_the_next_boot(cabinet, world):
    _committed_in_r2(cabinet, world)
    # Killed right after the boot record names env-1, before the state says so.
    cabinet.agent_killed_at("rename boot.json", "rollback", after=1)
    assert json.loads((cabinet.dir / "envs/boot.json").read_text())["default"] == "env-1"
    assert cabinet.status()["committed_environment"] == "env-2"  # not yet
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")
    cabinet.agent("boot-check", check=True)
    status = cabinet.status()
    assert status["committed_environment"] == "env-1" and status["pending"] is None
    assert status["components"]["platform"]["sequence"] == 6
    assert _environments(cabinet) == ["env-1", "env-2"]  # the environment rolled back from is kept


def test_rollback_cut_before_the_boot_record_does_not_take_effect(cabinet, world):
    _committed_in_r2(cabinet, world)
    cabinet.agent_killed_at("rename boot.json", "rollback")
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-2")
    result = cabinet.agent("boot-check", check=True)
    assert "no trial pending; running env-2" in result.stdout
    status = cabinet.status()
    assert status["committed_environment"] == "env-2" and status["pending"] is None
    assert status["last_result"]["message"] == "an interrupted rollback to env-1 did not take effect"
    assert "env-1 is the default again" in cabinet.agent("rollback", check=True).stdout  # the technician retries


def test_rollback_while_running_the_trial_cancels_it_not_the_committed_release(cabinet, world):
    cabinet.agent("install", world.bundles / "d12", check=True)
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-2")
    result = cabinet.agent("rollback", check=True)
    assert "the trial of env-2 was cancelled" in result.stdout and "return to env-1" in result.stdout
    status = cabinet.status()
    assert status["committed_environment"] == "env-1" and status["pending"] is None
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")
    assert "removed the failed trial env-2" in cabinet.agent("boot-check", check=True).stdout
    assert _environments(cabinet) == ["env-1"]  # removed once no longer running


# --- provisioning: journaled, committed or undone ---------------------------------------------------


@pytest.fixture
def blank(world, tmp_path) -> Cabinet:
    return Cabinet(world, tmp_path / "blank")


def test_provisioning_cut_before_its_commit_leaves_nothing_bootable_and_is_redone(blank, world):
    blank.agent_killed_at("rename boot.json", "provision", world.bundles / "full-1")
    assert _environments(blank) == ["env-1"]  # half-built, or built but never committed
    refused = blank.agent("boot")
    assert refused.returncode == 1 and "no committed environment" in refused.stderr
    result = blank.agent("provision", world.bundles / "full-1", check=True)
    # The half-built one was destroyed first, and its name is never made again.
    assert "into env-2 (committed)" in result.stdout and _environments(blank) == ["env-2"]
    log = (blank.dir / "state/audit.log").read_text()
    assert '"event": "cleaned-up"' in log


def test_provisioning_cut_after_its_commit_is_finished_by_the_next_command(blank, world):
    blank.agent_killed_at("rename boot.json", "provision", world.bundles / "full-1", after=1)
    assert blank.agent("boot", check=True).stdout.strip().endswith("env-1")
    blank.agent("boot-check", check=True)
    status = blank.status()
    assert status["committed_environment"] == "env-1" and status["pending"] is None
    assert status["components"]["platform"] == {"version": "13.2.0", "sequence": 6}
    again = blank.agent("provision", world.bundles / "full-1")
    assert again.returncode == 3 and "already provisioned" in again.stderr


# --- failed trials do not pile up ----------------------------------------------------------------


def test_failed_trials_are_removed_and_never_accumulate(cabinet, world):
    cabinet.set_health(False)
    for attempt in range(3):
        cabinet.agent("install", world.bundles / "d12", check=True)
        cabinet.agent("boot", check=True)
        assert cabinet.agent("boot-check").returncode == 3  # rolled back
        assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")
        result = cabinet.agent("boot-check", check=True)
        # Each attempt gets a name never used before: no record can mistake it for an earlier one.
        assert f"removed the failed trial env-{attempt + 2}" in result.stdout
        assert _environments(cabinet) == ["env-1"], f"attempt {attempt + 1}"
    log = (cabinet.dir / "state/audit.log").read_text()
    assert log.count('"event": "removed-failed"') == 3


def test_a_trial_that_never_reached_its_check_is_removed(cabinet, world):
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)  # the trial starts and crashes
    cabinet.agent("boot", check=True)
    result = cabinet.agent("boot-check", check=True)
    assert "did not reach its health check" in result.stdout and "the failed environment was removed" in result.stdout
    assert _environments(cabinet) == ["env-1"]


# --- one agent at a time ----------------------------------------------------------------------------


def test_a_second_agent_is_refused_while_one_changes_the_device(cabinet, world):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from agent.lock import hold_device_lock; "
                               "from agent.state_dir import StateDir; hold_device_lock(StateDir(Path(sys.argv[1]))); "
                               "print('held', flush=True); time.sleep(60)",
         str(cabinet.dir / "state")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = cabinet.snapshot()
        result = cabinet.agent("install", world.bundles / "d12")
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"another bundle-agent is changing this device (pid {holder.pid}" in result.stderr
        assert "hint: wait for it to finish, then run the command again" in result.stderr
        assert cabinet.snapshot() == before
        assert cabinet.agent("status", "--json").returncode == 0  # reading needs no lock
    finally:
        holder.kill()
        holder.wait()
    cabinet.agent("install", world.bundles / "d12", check=True)  # the kernel released the lock


# --- what a kill leaves behind ------------------------------------------------------------------------


def test_temporary_files_of_killed_writers_are_removed(cabinet, world):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [cabinet.dir / f"state/.{name}.tmp-{dead.stdout.strip()}" for name in ("result.json", "journal.json")]
    alive = cabinet.dir / f"state/.result.json.tmp-{os.getpid()}"  # a live writer's: left alone
    for path in (*stale, alive):
        path.write_text("half")
    assert "no trial pending" in cabinet.agent("boot-check", check=True).stdout  # writes no state file
    assert not any(path.exists() for path in stale) and alive.exists()


def test_a_torn_audit_line_does_not_swallow_the_next(cabinet, world):
    log = cabinet.dir / "state/audit.log"
    with open(log, "ab") as handle:
        handle.write(b'{"event": "stag')  # a power cut mid-line
    cabinet.agent("install", world.bundles / "d12", check=True)
    lines = log.read_text().splitlines()
    torn = lines.index('{"event": "stag')
    assert all(json.loads(line) for line in lines[torn + 1:])


def test_a_journal_of_the_wrong_shape_is_set_aside_not_acted_on(cabinet, world):
    journal = cabinet.dir / "state/journal.json"
    journal.write_text(json.dumps({"format": 1, "pending": None, "failed_trials": "env-1"}))
    result = cabinet.agent("boot-check", check=True)
    assert "no trial pending; running env-1" in result.stdout
    assert (cabinet.dir / "state/journal.json.corrupt-1").exists()
    assert _environments(cabinet) == ["env-1"]
    assert "journal.json was unreadable" in cabinet.status()["last_result"]["message"]


@pytest.mark.parametrize("damage", [b"\0" * 40, b'{"default": 7}', b'{"default": "../../etc"}'])
def test_a_damaged_boot_record_boots_the_committed_environment_not_the_newest(cabinet, world, damage):
    (cabinet.dir / "envs/env-2").mkdir()  # newer, but half-built: never committed
    record = cabinet.dir / "envs/boot.json"
    record.write_bytes(damage)
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")
    assert (cabinet.dir / "envs/boot.json.corrupt").read_bytes() == damage
    assert json.loads(record.read_text()) == {"booted": "env-1", "default": "env-1", "next_once": None}
