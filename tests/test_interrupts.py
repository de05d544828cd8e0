"""Ctrl-C and SIGTERM (issue 11, item 3; docs/OPERATOR.md, "Interrupts"): real processes get the
signal halfway through ``bundle make`` and ``bundle-agent install``; they stop within a second (the
bound here is 5 s for a busy machine), say "interrupted", exit 130 or 143 and leave nothing: no
partial bundle, no staged environment, no spool, the running system unchanged.

The measured latencies are printed (``pytest -rP -k interrupt``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.sim.device import Cabinet, World
from tests.sim.releases import word_soup_release, write_release
from tests.sim.tools import BIN, interruptible, run_cli

MiB = 1 << 20
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
NAME = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
BOUND = 5.0  # seconds; measured here: well under one


def wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode} before the signal: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the step to interrupt never started")
        time.sleep(0.01)


def interrupt(process: subprocess.Popen, number: int) -> tuple[float, str, str]:
    """Send signal ``number``; the seconds until the process exited, and its output."""
    sent = time.monotonic()
    process.send_signal(number)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("still running a minute after the signal")
    return time.monotonic() - sent, out, err


# --- bundle make ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_release(tmp_path_factory) -> tuple[Path, Path]:
    """A release that takes tens of seconds at level 19: compressible, not trivially so."""
    return word_soup_release(tmp_path_factory.mktemp("slow"), run_cli, file_bytes=16 * MiB, seed=11)


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_bundle_make_stops_at_once_and_leaves_nothing(slow_release, tmp_path, number):
    release, key = slow_release
    out = tmp_path / "out"
    out.mkdir()
    process = subprocess.Popen([str(BIN / "bundle"), "make", "--release", str(release), "--key", str(key),
                                "--out", str(out / "bundle"), "--level", "19", "--threads", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    wait_for(lambda: any((out / name / "payload").exists() for name in os.listdir(out)), 60, process)
    time.sleep(1.0)  # the workers are deep inside level-19 chunks
    seconds, _, err = interrupt(process, number)
    print(f"bundle make, {NAME[number]}: exited {process.returncode} after {seconds:.3f} s")
    assert process.returncode == EXIT[number], err
    assert seconds < BOUND
    assert f"interrupted ({NAME[number]})" in err and "Aborted!" not in err and "Traceback" not in err, err
    assert os.listdir(out) == [], "the partial bundle was left behind"


# --- bundle-agent install ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def big_update(world) -> Path:
    """Release 2 plus a 1 GiB file: a tiny bundle (zeros compress) whose staging writes for a while."""
    shutil.copytree(world.dir / "r2", world.dir / "r-big", symlinks=True)
    write_release(world.dir / "r-big", {"platform": ("13.3.0", 8), "game/lucky-sevens": ("2.0", 3),
                                        "game/fortune-wheel": ("1.0", 1)})
    with open(world.dir / "r-big/platform/usr/share/attract.raw", "wb") as handle:
        handle.truncate(1 << 30)  # sparse in the release; written whole by staging
    return world.make("full-big", "r-big", None, ("rel1", "rel2"), "--level", "1")


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_install_is_undone_and_recorded(world, big_update, tmp_path, number):
    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    before = cabinet.snapshot()
    process = subprocess.Popen(cabinet.command("install", big_update), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    staged = cabinet.environments_dir / "env-2"
    wait_for(lambda: (staged / cabinet.config.layout.component_path("platform") / "usr").is_dir(), 120, process)
    seconds, _, err = interrupt(process, number)
    print(f"bundle-agent install, {NAME[number]}: exited {process.returncode} after {seconds:.3f} s")
    assert process.returncode == EXIT[number], err
    assert seconds < BOUND
    assert f"interrupted ({NAME[number]})" in err and "Traceback" not in err, err
    assert cabinet.snapshot() == before  # the running system, its state, the environments
    assert not staged.exists() and not (cabinet.dir / "state/spool").exists()
    result = cabinet.status()["last_result"]
    assert result["outcome"] == "failed", result
    assert result["message"] == f"staging into env-2 failed: interrupted ({NAME[number]})", result
    audit = [json.loads(line) for line in (cabinet.dir / "state/audit.log").read_text().splitlines()]
    assert audit[-1]["event"] == "staging-failed" and audit[-1]["reason"].endswith(f"interrupted ({NAME[number]})")


def test_ctrl_c_at_a_passphrase_prompt_is_an_interrupt(tmp_path):
    """click turns Ctrl-C at a prompt into "Aborted!" and exit 1; it is an interrupt like any other."""
    import pty
    pid, terminal = pty.fork()
    if pid == 0:  # the child: `bundle keys new` on a terminal, asking for the new key's passphrase
        interruptible()
        os.execve(str(BIN / "bundle"), ["bundle", "keys", "new", "k", "--dir", str(tmp_path / "keys")],
                  {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    said = b""
    while b"assphrase" not in said:
        said += os.read(terminal, 1024)
    os.write(terminal, b"\x03")  # the terminal's interrupt character: the kernel sends SIGINT
    try:
        while chunk := os.read(terminal, 1024):
            said += chunk
    except OSError:  # EIO once the child has gone
        pass
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 130, said
    assert b"interrupted (SIGINT)" in said and b"Aborted!" not in said
    assert not (tmp_path / "keys" / "k.key").exists()
