"""The agent's logs (docs/AGENT.md, "Logs"): every audit record also goes to the system log
through ``logging`` (a real datagram socket stands in for journald's /dev/log here); the audit
log keeps its rotated parts within ``[log] keep_bytes``; ``bundle-agent log`` reads it back."""

from __future__ import annotations

import fcntl
import json
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent import system_log
from agent.audit import AuditLog, part_size
from agent.cli.main import main
from tests.sim.device import STAGED, Cabinet


@pytest.fixture
def syslog_socket():
    """A datagram socket where syslogd or journald would listen; short path (108 bytes at most)."""
    directory = Path(tempfile.mkdtemp(prefix="log-"))
    path = directory / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)
    try:
        yield path, server
    finally:
        server.close()
        shutil.rmtree(directory)


def received(server: socket.socket) -> list[str]:
    lines = []
    while True:
        try:
            lines.append(server.recv(65536).decode("utf-8"))
        except BlockingIOError:
            return lines


def with_log_table(cabinet: Cabinet, table: str) -> Cabinet:
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text() + "[log]\n" + table)
    return cabinet


def test_decisions_and_failures_reach_the_system_log(world, tmp_path, syslog_socket):
    path, server = syslog_socket
    cabinet = with_log_table(Cabinet(world, tmp_path / "device"), f'syslog = "{path}"\n')
    cabinet.provision()
    assert cabinet.agent("install", world.bundles / "d12").returncode == STAGED
    cabinet.set_health(False)
    cabinet.agent("boot", check=True)
    assert cabinet.agent("boot-check").returncode == 3
    lines = received(server)
    # <PRI>: facility daemon (3 x 8) + info (6) or warning (4); the tag names the program and its pid.
    tags = [line.split(": ", 1)[0] for line in lines]
    assert all(tag.startswith(("<30>bundle-agent[", "<28>bundle-agent[")) for tag in tags), lines
    messages = [line.split(": ", 1)[1] for line in lines]
    events = [message.split(" ", 1)[0] for message in messages]
    assert events[:3] == ["examined", "identity-created", "provisioned"] and "booted" in events
    assert events[-6:] == ["examined", "staging", "trial-armed", "booted", "health-check", "rolled-back"], events
    rolled_back = lines[events.index("rolled-back")]
    assert rolled_back.startswith("<28>") and "reason=health hook" in rolled_back and "reels do not spin" in rolled_back
    armed = messages[events.index("trial-armed")]
    assert armed.startswith("trial-armed environment=env-2 installed=") and "\n" not in armed
    # The same records, in the same order, as the audit log keeps.
    audit = [json.loads(line)["event"] for line in (cabinet.dir / "state/audit.log").read_text().splitlines()]
    assert audit == events


def test_without_a_system_log_the_agent_works_the_same(world, tmp_path):
    cabinet = with_log_table(Cabinet(world, tmp_path / "device"), f'syslog = "{tmp_path / "no-such-socket"}"\n')
    cabinet.provision()
    result = cabinet.agent("install", world.bundles / "d12")
    assert result.returncode == STAGED and result.stderr == "", result.stderr


def test_the_audit_log_keeps_its_parts_within_keep_bytes(tmp_path):
    keep = 256 << 10
    log = AuditLog.kept_within(tmp_path / "audit.log", keep)
    assert log.max_bytes == part_size(keep) == 64 << 10
    for number in range(6000):
        log.record("examined", number=number, source="x" * 100)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "audit.log" and len(names) >= 4, names  # several rotated parts are kept
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= keep
    numbers = [record["number"] for record in log.newest()]
    assert numbers[0] == 5999, "the newest record is kept"
    assert numbers == list(range(5999, 5999 - len(numbers), -1)), "newest first, none lost between parts"
    assert len(numbers) > 1000  # three full parts at least: three quarters of keep_bytes hold records
    assert [r["number"] for r in log.newest(3)] == [5999, 5998, 5997]


def test_a_part_left_by_a_power_cut_during_rotation_is_read_in_order(tmp_path):
    """Parts move up oldest first; a cut between two renames leaves a gap in the numbers, no loss."""
    log = AuditLog(tmp_path / "audit.log", max_bytes=4096, keep_bytes=5 * 4096)
    for number in range(200):
        log.record("examined", number=number, source="x" * 100)
    parts = log.parts()
    parts[-1].rename(log.part(int(parts[-1].name.rsplit(".", 1)[1]) + 1))  # the oldest moved, the others not yet
    numbers = [record["number"] for record in log.newest()]
    assert numbers == list(range(199, 199 - len(numbers), -1))
    for number in range(200, 260):
        log.record("examined", number=number, source="x" * 100)
    numbers = [record["number"] for record in log.newest()]
    assert numbers == list(range(259, 259 - len(numbers), -1))
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 5 * 4096


def test_keep_bytes_comes_from_the_configuration(world, tmp_path):
    cabinet = with_log_table(Cabinet(world, tmp_path / "device"), "keep_bytes = 262144\n")
    cabinet.provision()
    audit = cabinet.dir / "state/audit.log"
    audit.write_bytes(b'{"event": "filler", "time": "2026-01-01T00:00:00Z"}\n' * 1300)  # 66 KB: past one part
    cabinet.agent("install", world.bundles / "d12")
    assert (cabinet.dir / "state/audit.log.1").exists()  # rotated at 64 KiB, not at 4 MiB


def test_the_log_command_shows_the_newest_records_first(world, cabinet):
    cabinet.agent("install", world.bundles / "d12")
    result = cabinet.agent("log", "-n", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(len(line) <= 80 for line in lines), lines
    assert [line.split()[1] for line in lines] == ["trial-armed", "staging", "examined"]
    assert lines[0].endswith("...")  # its details are longer than a line: cut, the log has them whole
    document = json.loads(cabinet.agent("log", "--json", "-n", "2").stdout)
    assert document["ok"] is True and document["version"] == 1
    assert [r["event"] for r in document["records"]] == ["trial-armed", "staging"]
    assert document["records"][0]["environment"] == "env-2"
    everything = json.loads(cabinet.agent("log", "--json", "-n", "1000").stdout)["records"]
    assert [r["event"] for r in everything][-3:] == ["provisioned", "identity-created", "examined"]


def test_a_device_that_cannot_be_opened_is_logged_on_the_default_socket(tmp_path, syslog_socket, monkeypatch):
    """No configuration to read, so no [log] syslog: the platform's socket gets the failure,
    since an unattended command's standard error may reach nobody (FreeBSD's devd)."""
    path, server = syslog_socket
    monkeypatch.setattr(system_log, "DEFAULT_ADDRESS", str(path))
    monkeypatch.setattr(system_log, "_chosen", False)  # as in a fresh process
    try:
        result = CliRunner().invoke(main, ["--config", str(tmp_path / "missing.toml"), "status"],
                                    prog_name="bundle-agent")
    finally:
        system_log.attach("")  # this process's later tests log nowhere, as before
    assert result.exit_code == 1, result.output
    [line] = received(server)
    assert line.startswith("<28>bundle-agent[") and ": failed command=bundle-agent status error=" in line, line
    assert f"where={tmp_path / 'missing.toml'}" in line and " hint=" in line


def test_a_device_held_by_another_agent_is_logged_where_the_configuration_says(world, tmp_path, syslog_socket):
    path, server = syslog_socket
    cabinet = with_log_table(Cabinet(world, tmp_path / "device"), f'syslog = "{path}"\n')
    cabinet.provision()
    received(server)
    with open(cabinet.dir / "state/agent.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = cabinet.agent("on-insert", world.bundles / "d12")
    assert result.returncode == 1 and "another bundle-agent is changing this device" in result.stderr
    lines = received(server)
    assert len(lines) == 1, [l[:150] for l in lines]
    line = lines[0]
    assert line.startswith("<28>bundle-agent[") and ": failed command=bundle-agent on-insert error=another" in line
