"""What install and on-insert answer (docs/AGENT.md, "Outcomes"): a technician can tell an empty
stick, a stick for another machine and an up-to-date machine apart, in words and in --json; and
the unit that runs on-insert knows from the exit code whether to reboot (4: staged)."""

from __future__ import annotations

import json

import pytest

from tests.sim.device import STAGED


def _answer(cabinet, command: str, medium) -> tuple[int, str, dict]:
    text = cabinet.agent(command, medium)
    document = cabinet.agent(command, "--json", medium)
    assert text.returncode == document.returncode, text.stderr + document.stderr
    return text.returncode, text.stdout, json.loads(document.stdout)


@pytest.mark.parametrize("command", ["install", "on-insert"])
def test_an_empty_stick_a_foreign_stick_and_an_up_to_date_machine_answer_differently(cabinet, world, tmp_path,
                                                                                     command):
    before = cabinet.snapshot()
    empty = tmp_path / "empty-stick"
    empty.mkdir()
    code, text, document = _answer(cabinet, command, empty)
    assert code == 0 and document["outcome"] == "nothing-on-medium"
    assert "no update bundles on this medium; nothing was installed" in text

    code, text, document = _answer(cabinet, command, world.stick(tmp_path / "current", "full-1"))
    assert code == 0 and document["outcome"] == "up-to-date"
    assert "this machine is up to date: nothing on this medium is newer" in text

    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text().replace('product = "demo-cabinet"', 'product = "other-cabinet"'))
    code, text, document = _answer(cabinet, command, world.stick(tmp_path / "foreign", "full-2", "d12"))
    assert code == 0 and document["outcome"] == "not-for-this-machine"
    assert ("the bundles on this medium are for other machines (this one is other-cabinet, hardware cab-a; "
            "the stick holds updates for demo-cabinet); nothing was installed") in text
    # A bundle folder given directly: read, verified, and found to be for another product.
    code, text, document = _answer(cabinet, command, world.bundles / "full-2") if command == "install" else \
        (code, text, document)
    assert code == 0 and document["outcome"] == "not-for-this-machine"
    assert cabinet.snapshot() == before
    events = [json.loads(line)["event"] for line in (cabinet.dir / "state/audit.log").read_text().splitlines()]
    foreign = 4 if command == "install" else 2  # text and --json, of the stick (and of the bundle folder)
    assert events[-4 - foreign:] == ["nothing-on-medium"] * 2 + ["up-to-date"] * 2 + ["not-for-this-machine"] * foreign


@pytest.mark.parametrize("command", ["install", "on-insert"])
def test_a_staged_update_exits_4_and_nothing_to_do_exits_0(cabinet, world, tmp_path, command):
    stick = world.stick(tmp_path / "stick", "d12")
    result = cabinet.agent(command, "--json", stick)
    assert result.returncode == STAGED, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["outcome"] == "staged" and document["environment"] == "env-2"
    assert cabinet.status()["pending"]["phase"] == "trial"
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    again = cabinet.agent(command, stick)
    assert again.returncode == 0 and "this machine is up to date" in again.stdout, again.stdout + again.stderr


def test_the_exit_codes_are_in_the_help(cli):
    text = " ".join(cli("bundle-agent", "--help").stdout.split())
    assert "4 install/on-insert staged an update: a reboot starts its trial" in text.replace("on- insert", "on-insert")


@pytest.mark.parametrize("command", ["install", "on-insert"])
def test_the_reboot_comes_last_once_everything_is_written(cabinet, world, tmp_path, command):
    """A reboot stops the service the agent runs in: asked for in the middle, it would interrupt
    the agent. The configured command runs after the report is printed and every file written."""
    seen = tmp_path / "seen-at-reboot"
    reboot = tmp_path / "reboot"
    reboot.write_text(f"#!/bin/sh\n{{ tail -n 1 '{cabinet.dir}/state/audit.log'; ls -A '{cabinet.dir}/state/spool';"
                      f" echo \"$@\"; }} > '{seen}' 2>/dev/null\n")
    reboot.chmod(0o755)
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text().replace('policy = "never"', f'policy = ["{reboot}", "--now"]'))
    result = cabinet.agent(command, world.stick(tmp_path / "stick", "d12"))
    assert result.returncode == STAGED, result.stdout + result.stderr
    assert "rebooting to start the trial" in result.stdout + result.stderr
    last_record, *spool, arguments = seen.read_text().splitlines()
    assert json.loads(last_record)["event"] == "reboot"  # nothing is recorded after it
    assert spool == [] and arguments == "--now"  # the spool already emptied; the command as configured
