"""agent.toml is strict and explained (docs/AGENT.md, "Configuration"): every mistake is refused
when the configuration is loaded, with a message naming the setting and no traceback, and
``bundle-agent config check`` prints what the configuration resolved to."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.sim.tools import run_cli
from tests.sim.device import MINIMAL_CONFIG as BASE



def machine(directory: Path, text: str = BASE) -> Path:
    """A system root holding agent.toml and an executable health hook; nothing else is needed to check it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "health").write_text("#!/bin/sh\nexit 0\n")
    (directory / "health").chmod(0o755)
    (directory / "agent.toml").write_text(text)
    return directory


def agent(root: Path, *args: str):
    return run_cli("bundle-agent", "--sysroot", str(root), "--config", "/agent.toml", *args)


def refused_with(root: Path, *needles: str, command=("status",)) -> str:
    """The agent refuses the configuration: exit 1, each of ``needles`` in the message, no traceback."""
    result = agent(root, *command)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


# --- strictness: unknown names, with the nearest known one -------------------------------------------

@pytest.mark.parametrize("text, needles", [
    (BASE + "[helth]\ntimeout = 5\n", ("unknown [helth] (did you mean health?)",)),
    (BASE.replace("serial =", "serail ="), ("[device] has an unknown key serail (did you mean serial?)",)),
    (BASE.replace("timeout = 20", "timout = 20"), ("[health] has an unknown key timout (did you mean timeout?)",)),
    (BASE + "[environments]\nkeeep = 3\n", ("(did you mean keep?)",)),
    (BASE + "[log]\nsyslg = \"/dev/log\"\n", ("[log] has an unknown key syslg (did you mean syslog?)",)),
    (BASE.replace('root = "/envs"', 'roots = "/envs"'), ("[boot] has an unknown key roots (did you mean root?)",)),
    (BASE.replace('backend = "dirs"\nroot = "/envs"', 'backend = "bectl"\nmountdir = "/mnt"'),
     ("[boot] has an unknown key mountdir (did you mean mount_dir?)",)),
    ("verbose = true\n" + BASE, ("unknown top-level key verbose",)),
])
def test_unknown_tables_and_keys_are_refused_with_the_nearest_name(tmp_path, text, needles):
    refused_with(machine(tmp_path / "m", text), *needles)


# --- shapes that used to print a traceback ------------------------------------------------------------

@pytest.mark.parametrize("table", ["device", "boot", "layout", "health", "trust", "reboot", "environments"])
def test_a_table_given_as_a_value_is_explained(tmp_path, table):
    text = f'{table} = "cab"\n' + "\n".join(line for line in BASE.splitlines() if line != f"[{table}]") + "\n"
    if table in ("device", "trust", "boot", "health"):  # their keys would land in the table above: drop them
        text = f'{table} = "cab"\n[layout]\n'
    refused_with(machine(tmp_path / "m", text), f'{table} must be a table, not a string ({table} = \'cab\')',
                 f"[{table}] on a line of its own")


def test_a_boot_root_that_is_not_a_path_is_refused_by_the_backend(tmp_path):
    refused_with(machine(tmp_path / "m", BASE.replace('root = "/envs"', "root = 5")),
                 "dirs backend: [boot] root (the directory holding the environments) is required, as a path")


def test_a_state_dir_that_is_a_file_is_refused(tmp_path):
    root = machine(tmp_path / "m")
    (root / "state").write_text("not a directory")
    refused_with(root, "[device] state_dir", "/state is not a directory", "name a directory")
    refused_with(root, "is not a directory", command=("install", str(tmp_path)))


def test_a_relative_state_dir_is_refused(tmp_path):
    refused_with(machine(tmp_path / "m", BASE.replace('state_dir = "/state"', 'state_dir = "state"')),
                 "[device] state_dir must be an absolute path, not 'state'")


def test_a_missing_or_not_executable_health_hook_is_found_at_load(tmp_path):
    """Not at the first trial: there it would roll back every update (docs/AGENT.md, "Trial boot")."""
    root = machine(tmp_path / "m")
    (root / "health").chmod(0o644)
    refused_with(root, f"[health] hook {root / 'health'} is not an executable file", "chmod 755")
    (root / "health").unlink()
    refused_with(root, f"[health] hook {root / 'health'} cannot be found")
    (root / "health").mkdir()
    refused_with(root, "is not an executable file")


@pytest.mark.parametrize("change, needle", [
    (("timeout = 20", 'timeout = "20"'), "[health] timeout must be a number, not '20'"),
    (("timeout = 20", "timeout = 0"), "[health] timeout must be at least 1"),
    (('hooks = ["/health"]', 'hooks = "/health"'), "[health] hooks must be a list, not '/health'"),
    (('root = "/trust/root.json"', 'root = "trust/root.json"'), "[trust] root must be an absolute path"),
])
def test_wrong_values_are_named(tmp_path, change, needle):
    refused_with(machine(tmp_path / "m", BASE.replace(*change)), needle)


def test_log_settings_are_checked(tmp_path):
    refused_with(machine(tmp_path / "m", BASE + "[log]\nkeep_bytes = 1000\n"), "[log] keep_bytes must be at least")
    refused_with(machine(tmp_path / "n", BASE + '[log]\nsyslog = "dev/log"\n'), "[log] syslog must be an absolute path")


# --- config check ---------------------------------------------------------------------------------

def test_config_check_prints_what_was_resolved(tmp_path):
    root = machine(tmp_path / "m", BASE + '[layout]\nplatform = "."\ngames = "usr/local/games"\n'
                                   'preserve = ["etc/ssh"]\n[log]\nsyslog = ""\nkeep_bytes = 1048576\n')
    result = agent(root, "config", "check")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert f"{root / 'agent.toml'}: valid" in text
    assert f"state_dir    {root / 'state'}" in text and f"trust root   {root / 'trust/root.json'}" in text
    assert f"boot         dirs, root {root / 'envs'}" in text
    assert "layout       platform ., games usr/local/games, preserve etc/ssh" in text
    assert f"health       {root / 'health'} (timeout 20 s)" in text
    assert "syslog       off" in text and "(kept within 1048576 bytes)" in text
    document = json.loads(agent(root, "config", "check", "--json").stdout)
    assert document["ok"] is True and document["version"] == 1 and document["valid"] is True
    assert document["boot"] == {"backend": "dirs", "settings": {"root": str(root / "envs")}}
    assert document["health"] == {"hooks": [str(root / "health")], "timeout": 20}
    assert document["log"]["syslog"] is None and document["log"]["keep_bytes"] == 1048576
    assert document["state_dir"] == str(root / "state") and document["system_root"] == str(root)


def test_config_check_refuses_what_the_agent_would_refuse(tmp_path):
    """Including the backend's settings, which only the backend reads."""
    root = machine(tmp_path / "m", BASE.replace('root = "/envs"', 'root = "/envs"\nmount_dir = "/mnt"'))
    result = agent(root, "config", "check", "--json")
    assert result.returncode == 1 and "unknown [boot] setting(s) mount_dir" in result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is False and "mount_dir" in document["error"]
    root = machine(tmp_path / "n", BASE.replace('state_dir = "/state"', 'state_dir = "/envs/state"'))
    refused_with(root, "lies inside the boot environments", command=("config", "check"))


def test_config_check_needs_no_state(tmp_path):
    """It reads neither the state nor the lock: safe on a running machine and on an image."""
    root = machine(tmp_path / "m")
    assert agent(root, "config", "check").returncode == 0
    assert not (root / "state").exists()
