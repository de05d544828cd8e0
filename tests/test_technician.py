"""The technician's recovery mode (docs/TECHNICIAN.md) through the real command line on a cabinet
of the dirs backend: status, a look at a stick, rollback and switch through a trial boot,
downgrades only with a token, audit, repair, a lost state rebuilt, the log, reports, the menu."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.sim.device import STAGED, Cabinet
from tests.sim.tools import BIN, make_unix_socket, run_cli
from tests.test_json_output import schema_errors

SERIAL = "SN0001"
NOT_CLEAN = 5


def tech(cabinet: Cabinet, *args, check: bool = False):
    result = cabinet.agent("technician", *args)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def as_json(cabinet: Cabinet, *args, schema: str, exit_code: int = 0) -> dict:
    result = tech(cabinet, *args, "--json")
    assert result.returncode == exit_code, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert not schema_errors(schema, document), schema_errors(schema, document)
    return document


def updated(cabinet: Cabinet, world, tmp_path) -> Cabinet:
    """The cabinet after release 2 was installed from a stick and committed: env-2 (release 2)
    committed, env-1 (release 1) the previous."""
    assert cabinet.agent("install", world.stick(tmp_path / "d12-stick", "d12")).returncode == STAGED
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    return cabinet


def reboot(cabinet: Cabinet, *, healthy: bool = True) -> subprocess.CompletedProcess:
    """The dirs backend plays the boot loader: boot, then the health check of what booted."""
    cabinet.set_health(healthy)
    cabinet.agent("boot", check=True)
    return cabinet.agent("boot-check")


def token(world, tmp_path, stick, *allow: str, downgrade: dict[str, int] | None = None):
    """A technician token signed by both release signers, put on ``stick``."""
    out = tmp_path / "tokens-made"
    args = ["bundle", "token", "make", "--product", "demo-cabinet", "--serial", SERIAL, "--reason", "field repair",
            "--key", world.keys / "rel1.key", "--key", world.keys / "rel2.key", "--out", out]
    for action in allow:
        args += ["--allow", action]
    for component, sequence in (downgrade or {}).items():
        args += ["--downgrade", f"{component}={sequence}"]
    run_cli(*args, check=True)
    folder = stick / "demo-cabinet" / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    for made in out.iterdir():
        shutil.move(str(made), folder / made.name)


def test_status_shows_floors_every_environment_and_when_each_was_committed(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    status = as_json(cabinet, "status", schema="technician-status.schema.json")
    assert status["committed_environment"] == "env-2" and status["commits"] == 2
    assert status["agent_version"] == version("offline-bundle") and status["trust_root_version"] == 1
    assert status["components"]["platform"] == {"version": "13.2.1", "sequence": 7, "floor": 7}
    assert status["floors"] == {"platform": 7, "game/lucky-sevens": 3, "game/fortune-wheel": 1}
    environments = {e["name"]: e for e in status["environments"]}
    assert (environments["env-2"]["role"], environments["env-2"]["committed_at"]) == ("committed", 2)
    assert (environments["env-1"]["role"], environments["env-1"]["committed_at"]) == ("previous", 1)
    assert environments["env-1"]["holds"]["platform"] == {"version": "13.2.0", "sequence": 6}
    assert status["last_results"][0]["event"] == "committed" and status["problems"] == []
    text = tech(cabinet, "status", check=True).stdout.splitlines()
    assert all(len(line) <= 80 for line in text)
    assert any("env-1" in line and "previous, committed at commit 1" in line for line in text)


def test_a_look_at_a_stick_tells_what_an_install_would_do_and_changes_nothing(cabinet, world, tmp_path):
    before = cabinet.snapshot()
    log = (cabinet.dir / "state/audit.log").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert as_json(cabinet, "stick", empty, schema="technician-stick.schema.json")["verdict"] == "nothing-on-medium"
    current = world.stick(tmp_path / "current", "full-1")
    assert as_json(cabinet, "stick", current, schema="technician-stick.schema.json")["verdict"] == "up-to-date"
    newer = world.stick(tmp_path / "newer", "d12", "full-1")
    (newer / "demo-cabinet/bundles/0123456789abcdef").mkdir()  # a copy that was interrupted
    contents = as_json(cabinet, "stick", newer, "--check-payload", schema="technician-stick.schema.json")
    assert contents["verdict"] == "would-install"
    assert contents["would_install"] == {"platform": 7, "game/lucky-sevens": 3, "game/fortune-wheel": 1}
    rows = {(row["bundle"], row["component"]): row for row in contents["bundles"]}
    assert rows[("0123456789abcdef", None)]["decision"] == "incomplete"
    assert {row["decision"] for row in contents["bundles"] if row["kind"] == "delta"} == {"chosen"}
    moved = tmp_path / "other-product"
    shutil.copytree(newer / "demo-cabinet", moved / "slot-deluxe")
    foreign = as_json(cabinet, "stick", moved, schema="technician-stick.schema.json")
    assert foreign["verdict"] == "nothing-on-medium" and foreign["other_products"] == ["slot-deluxe"]
    assert cabinet.snapshot() == before
    assert (cabinet.dir / "state/audit.log").read_bytes() == log, "a look at a stick is not logged"


def test_rollback_and_switch_go_through_a_trial_and_keep_the_floors(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    armed = as_json(cabinet, "rollback", schema="message.schema.json", exit_code=STAGED)
    assert "env-1 boots once for a trial" in armed["message"]
    assert cabinet.status()["pending"]["phase"] == "switch"
    assert reboot(cabinet).returncode == 0
    status = as_json(cabinet, "status", schema="technician-status.schema.json")
    assert status["committed_environment"] == "env-1" and status["floors"]["platform"] == 7
    assert json.loads((cabinet.dir / "state/state.json").read_text())["floors"]["platform"] == 7
    assert {e["name"]: e["role"] for e in status["environments"]} == {"env-1": "committed", "env-2": "previous"}
    # Release 1 is below the floor now that 2 was committed: only what was rolled back from may
    # come back (by a stick or a switch).
    assert cabinet.agent("install", world.stick(tmp_path / "old", "full-1")).returncode == 0
    assert tech(cabinet, "switch", "env-2").returncode == STAGED
    assert reboot(cabinet).returncode == 0
    assert cabinet.status()["committed_environment"] == "env-2"


def test_a_switch_that_fails_its_health_check_keeps_the_environment(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    assert tech(cabinet, "rollback").returncode == STAGED
    failed = reboot(cabinet, healthy=False)
    assert failed.returncode == 3 and "failed its health check" in failed.stderr
    cabinet.agent("boot", check=True)
    cabinet.set_health(True)
    cabinet.agent("boot-check", check=True)
    assert cabinet.status()["committed_environment"] == "env-2"
    assert "env-1" in cabinet.environments(), "a switch never destroys the environment it tried"


def test_an_unknown_environment_is_refused(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    refused = tech(cabinet, "switch", "env-9")
    assert refused.returncode == 3 and "those it may switch to: env-1" in refused.stderr
    assert cabinet.status()["pending"] is None


def test_audit_repair_and_a_downgrade_that_needs_a_token(world, tmp_path):
    cabinet = Cabinet(world, tmp_path / "device", keep=3)
    cabinet.provision()
    updated(cabinet, world, tmp_path)
    assert as_json(cabinet, "audit", schema="technician-audit.schema.json")["clean"] is True
    engine = cabinet.environments_dir / "env-2/platform/usr/bin/cabinet-engine"
    engine.write_bytes(b"tampered")
    (cabinet.environments_dir / "env-2/platform/usr/bin/extra").write_text("planted\n")
    audit = as_json(cabinet, "audit", schema="technician-audit.schema.json", exit_code=NOT_CLEAN)
    platform = audit["components"]["platform"]
    assert [m["path"] for m in platform["modified"]] == ["usr/bin/cabinet-engine"]
    assert platform["unexpected"] == ["usr/bin/extra"] and audit["clean"] is False
    assert "NOT CLEAN" in tech(cabinet, "audit").stdout

    stick = world.stick(tmp_path / "repair-stick", "full-2")
    repaired = as_json(cabinet, "repair", stick, schema="report.schema.json", exit_code=STAGED)
    assert repaired["environment"] == "env-3" and [d["component"] for d in repaired["decisions"]] == ["platform"]
    assert reboot(cabinet).returncode == 0
    assert as_json(cabinet, "audit", schema="technician-audit.schema.json")["clean"] is True
    assert as_json(cabinet, "repair", stick, schema="report.schema.json")["outcome"] == "nothing-to-repair"

    # env-1 (release 1) is no longer the previous environment: going there is a downgrade.
    refused = tech(cabinet, "switch", "env-1")
    assert refused.returncode == 3 and "below the anti-rollback floor" in refused.stderr
    token(world, tmp_path, stick, "downgrade", downgrade={"platform": 6, "game/lucky-sevens": 2})
    assert tech(cabinet, "switch", "env-1", "--stick", stick).returncode == STAGED
    assert reboot(cabinet).returncode == 0
    status = cabinet.status()
    assert status["committed_environment"] == "env-1"
    used = [json.loads(line) for line in (cabinet.dir / "state/audit.log").read_text().splitlines()]
    assert [r["event"] for r in used if r["event"] == "token-used"] == ["token-used"]
    assert as_json(cabinet, "status", schema="technician-status.schema.json")["floors"]["platform"] == 7
    spent = json.loads((cabinet.dir / "state/tokens-used.json").read_text())["used"]
    assert [entry["action"] for entry in spent] == ["downgrade"], "the token is spent: it cannot be used again"


def test_a_lost_state_is_rebuilt_only_with_a_token_and_never_below_the_floors(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    (cabinet.dir / "state/state.json").unlink()
    stick = world.stick(tmp_path / "stick", "full-1")
    refused = tech(cabinet, "repair", stick)
    assert refused.returncode == 3 and "clear-state" in refused.stderr
    status = as_json(cabinet, "status", schema="technician-status.schema.json")
    assert status["committed_environment"] is None and status["floors"]["platform"] == 7 and status["problems"]
    token(world, tmp_path, stick, "clear-state")
    rebuilt = as_json(cabinet, "repair", stick, schema="report.schema.json")
    assert rebuilt["outcome"] == "state-rebuilt" and rebuilt["environment"] == "env-2"
    state = cabinet.status()
    assert state["committed_environment"] == "env-2"
    assert {n: c["sequence"] for n, c in state["components"].items()} == \
        {"platform": 7, "game/lucky-sevens": 3, "game/fortune-wheel": 1}
    assert cabinet.agent("install", stick).returncode == 0  # release 1: below the floors, nothing to do
    assert tech(cabinet, "repair", stick).returncode == 0  # the state is whole: nothing to repair


def test_the_log_filters_and_fits_80_columns(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    records = as_json(cabinet, "log", "--event", "committed", schema="log.schema.json")["records"]
    assert [r["event"] for r in records] == ["committed"]
    found = as_json(cabinet, "log", "--grep", "ENV-2", "-n", "100", schema="log.schema.json")["records"]
    assert found and all("env-2" in json.dumps(r) for r in found)
    assert all(len(line) <= 80 for line in tech(cabinet, "log", "-n", "100", check=True).stdout.splitlines())


def test_a_report_goes_to_the_stick_and_the_vendor_verifies_it(cabinet, world, tmp_path):
    stick = tmp_path / "stick"
    stick.mkdir()
    written = as_json(cabinet, "report", stick, schema="files.schema.json")
    registry = tmp_path / "devices"
    registry.mkdir()
    (registry / f"{SERIAL}.pub").write_text(cabinet.agent("identity", "--pub", check=True).stdout)
    verified = run_cli("bundle", "report", "verify", written["files"][0], "--devices", registry)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(Path(written["files"][0]).read_text())
    assert report["audit"]["clean"] is True and report["serial"] == SERIAL


def test_on_insert_leaves_a_report_when_the_stick_asks(cabinet, world, tmp_path):
    plain = world.stick(tmp_path / "plain", "full-1")
    assert cabinet.agent("on-insert", plain).returncode == 0
    assert not (plain / "demo-cabinet/reports").exists(), "no report unless the stick asks"
    stick = world.stick(tmp_path / "stick", "d12")
    (stick / "demo-cabinet/reports").mkdir()
    (stick / "demo-cabinet/reports/REQUEST").write_bytes(b"")
    assert cabinet.agent("on-insert", stick).returncode == STAGED
    reports = sorted(p.name for p in (stick / "demo-cabinet/reports").iterdir())
    assert reports == ["REQUEST", f"{SERIAL}-00000001.json", f"{SERIAL}-00000001.json.minisig"]
    report = json.loads((stick / f"demo-cabinet/reports/{SERIAL}-00000001.json").read_text())
    assert report["pending"]["environment"] == "env-2", "written after the install: it says what it did"


def _menu(cabinet: Cabinet, typed: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "bundle-agent"), "--sysroot", str(cabinet.dir), "--config", "/agent.toml",
                           "technician"], input=typed, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TERM": "dumb"})


def test_the_menu_works_on_a_dumb_terminal_and_runs_nothing_typed(cabinet, world, tmp_path):
    result = _menu(cabinet, "1\n\n12\nsh -c 'touch /tmp/owned'\n8\n0\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "1  Status" in out and "9  Export a report to a stick" in out and "0  Leave" in out
    assert "10  Replace the trust root (with a token)" in out
    assert "committed: env-1" in out  # item 1
    assert out.count("type a number from 0 to 10") == 2  # "12" and the command are not choices
    assert " provisioned " in out  # item 8, the log
    assert "\x1b" not in out and all(len(line) <= 80 for line in out.splitlines())


def test_the_menu_leaves_at_the_end_of_input_and_shows_errors_with_what_to_do(cabinet, world, tmp_path):
    assert _menu(cabinet, "").returncode == 0
    result = _menu(cabinet, f"2\n{tmp_path / 'missing'}\n5\nenv-9\nn\ny\n0\n")
    assert result.returncode == 0, result.stderr
    assert "not a mounted folder" in result.stdout
    assert "no other committed environment is kept on this machine" in result.stdout


def test_a_damaged_state_is_shown_not_hidden(cabinet):
    (cabinet.dir / "state/state.json").write_text("{not json")
    result = tech(cabinet, "status", check=True)
    assert "problem: state: the agent state was unreadable" in result.stdout
    assert "floor 6" in result.stdout, "the floors the kept manifests vouch for"


def test_a_downgrade_to_a_named_older_sequence_needs_a_token_and_installs_exactly_that(cabinet, world, tmp_path):
    updated(cabinet, world, tmp_path)
    stick = world.stick(tmp_path / "old-release", "full-1")
    refused = tech(cabinet, "install", stick, "--downgrade", "platform=6")
    assert refused.returncode == 3 and "downgrade" in refused.stderr
    assert cabinet.agent("install", stick).returncode == 0, "without the option: below the floor, nothing to do"
    token(world, tmp_path, stick, "downgrade", downgrade={"platform": 6})
    wrong = tech(cabinet, "install", stick, "--downgrade", "platform=5")
    assert wrong.returncode == 3, "the token names sequence 6, not 5"
    staged = as_json(cabinet, "install", stick, "--downgrade", "platform=6", schema="report.schema.json",
                     exit_code=STAGED)
    assert [d["component"] for d in staged["decisions"] if d["verdict"] == "chosen"] == ["platform"]
    assert reboot(cabinet).returncode == 0
    installed = {n: c["sequence"] for n, c in cabinet.status()["components"].items()}
    assert installed == {"platform": 6, "game/lucky-sevens": 3, "game/fortune-wheel": 1}
    again = tech(cabinet, "install", stick, "--downgrade", "platform=6")
    assert again.returncode == 3, "a token works once"


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_after_the_state_is_lost_no_command_without_a_token_installs_an_older_release(cabinet, world, tmp_path,
                                                                                      damage):
    """Release 2 (platform sequence 7) was committed; then state.json is lost. Every command a
    stick or a person can run, with release 1 (sequence 6) on the stick and no token, must leave
    the machine without release 1 committed, installed or armed."""
    updated(cabinet, world, tmp_path)
    state = cabinet.dir / "state/state.json"
    state.unlink() if damage == "deleted" else state.write_text("{garbage")
    old = world.stick(tmp_path / "release-1", "full-1")
    attempts = [("install", old), ("on-insert", old), ("provision", old), ("provision", world.bundles / "full-1"),
                ("technician", "install", old), ("technician", "install", old, "--downgrade", "platform=6"),
                ("technician", "repair", old), ("technician", "rollback"), ("technician", "switch", "env-1"),
                ("rollback",), ("boot-check",), ("install", old)]
    for attempt in attempts:
        result = cabinet.agent(*attempt)
        assert result.returncode != STAGED, f"{attempt} armed something: {result.stdout}{result.stderr}"
        cabinet.agent("boot", check=True)  # whatever it armed, boot it
        cabinet.agent("boot-check")
        booted = cabinet.agent("boot", check=True).stdout.strip()
        assert booted.endswith("env-2"), f"after {attempt} the machine boots {booted}"
        assert sorted(cabinet.environments()) == ["env-1", "env-2"], f"{attempt} made an environment"
    assert as_json(cabinet, "status", schema="technician-status.schema.json")["floors"]["platform"] == 7


def test_a_fifo_a_program_left_in_a_component_is_repaired(world, tmp_path):
    """No component carries a FIFO: the audit lists it as unexpected, and repair rebuilds the
    component without it."""
    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    os.mkfifo(cabinet.environments_dir / "env-1/games/lucky-sevens/pipe")
    audit = as_json(cabinet, "audit", schema="technician-audit.schema.json", exit_code=NOT_CLEAN)
    assert audit["components"]["game/lucky-sevens"]["unexpected"] == ["pipe"]
    stick = world.stick(tmp_path / "repair-stick", "full-1")
    repaired = as_json(cabinet, "repair", stick, schema="report.schema.json", exit_code=STAGED)
    assert [d["component"] for d in repaired["decisions"]] == ["game/lucky-sevens"]
    assert reboot(cabinet).returncode == 0
    assert as_json(cabinet, "audit", schema="technician-audit.schema.json")["clean"] is True
    assert not (cabinet.environments_dir / "env-2/games/lucky-sevens/pipe").exists()


def test_a_socket_a_program_left_in_a_component_is_removed_by_the_next_update(cabinet, world, tmp_path):
    """Not a refusal of the environment forever: no component carries a socket or a name that is
    not UTF-8, so the apply removes them from the clone."""
    make_unix_socket(cabinet.environments_dir / "env-1/games/lucky-sevens/control.sock")
    (cabinet.environments_dir / "env-1/games/lucky-sevens" / os.fsdecode(b"r\xe9sum\xe9")).mkdir()
    assert cabinet.agent("install", world.stick(tmp_path / "d12-stick", "d12")).returncode == STAGED
    assert reboot(cabinet).returncode == 0
    assert cabinet.status()["committed_environment"] == "env-2"
    assert as_json(cabinet, "audit", schema="technician-audit.schema.json")["clean"] is True
    assert (cabinet.environments_dir / "env-1/games/lucky-sevens/control.sock").is_socket()  # the old one: untouched
