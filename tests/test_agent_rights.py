"""Without the rights to the state directory, every command says so - which path, what to do -
and exits 1, never with a traceback (docs/AGENT.md, "Where things must live"). Run as a real
unprivileged user (``setpriv``), as a technician who forgot ``sudo`` would."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.sim.device import CONFIG, Cabinet
from tests.sim.tools import BIN

NOBODY = 65534


@pytest.fixture
def public_cabinet(world):
    """A provisioned cabinet in a folder other users may enter (pytest's own is root's alone)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the agent as another user")
    directory = Path(tempfile.mkdtemp(prefix="cabinet-rights-"))
    directory.chmod(0o755)
    try:
        cabinet = Cabinet(world, directory / "device")
        cabinet.provision()
        (directory / "stick").mkdir()
        yield cabinet
    finally:
        shutil.rmtree(directory)


def as_nobody(cabinet: Cabinet, *args: str) -> subprocess.CompletedProcess:
    command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
               str(BIN / "bundle-agent"), "--sysroot", str(cabinet.dir), "--config", str(CONFIG), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/",
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


@pytest.mark.parametrize("command", [("status",), ("status", "--json"), ("install", "STICK"), ("rollback",),
                                     ("boot-check",), ("log",)])
def test_no_rights_to_the_state_is_a_message_not_a_traceback(public_cabinet, command):
    state = public_cabinet.dir / "state"
    state.chmod(0o700)
    before = sorted(p.name for p in state.iterdir())
    args = [str(public_cabinet.dir.parent / "stick") if a == "STICK" else a for a in command]
    result = as_nobody(public_cabinet, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "no permission to" in result.stderr and str(state) in result.stderr, result.stderr
    assert f"hint: run bundle-agent as root, or check the owner and mode of {state}" in result.stderr
    assert sorted(p.name for p in state.iterdir()) == before


def test_state_files_it_may_not_read_are_named(public_cabinet):
    """The folder may be entered but the state file is root's (mode 0640): the same message."""
    state = public_cabinet.dir / "state"
    state.chmod(0o755)
    result = as_nobody(public_cabinet, "status")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"error: {state / 'state.json'}: no permission to read the agent's state (state.json)" in result.stderr
