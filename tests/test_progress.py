"""Progress on both sides (issue 11, item 6; docs/OPERATOR.md, "Progress").

``bundle make`` of a release that takes a while at level 19 runs twice as a real process: under
``script`` (a terminal: a live bar that must move at least every 2 s) and with its output in a
file (a plain line at least every 10 s, no carriage return). The agent's install shows the same
bar on a terminal, and on-insert writes its progress as its own log lines.

The measured cadence is printed (``pytest -rP tests/test_progress.py``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.sim.device import STAGED
from tests.sim.releases import word_soup_release
from tests.sim.tools import BIN, run_cli

MiB = 1 << 20
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def slow_release(tmp_path_factory) -> tuple[Path, Path]:
    """Two 5 MiB files of word soup: 10-30 s at level 19 on two threads here."""
    return word_soup_release(tmp_path_factory.mktemp("slow"), run_cli, file_bytes=5 * MiB, seed=12)


def make_command(slow_release, out: Path) -> list[str]:
    release, key = slow_release
    return [str(BIN / "bundle"), "make", "--release", str(release), "--key", str(key), "--out", str(out),
            "--level", "19", "--threads", "2"]


def arrivals(process: subprocess.Popen, read) -> list[tuple[float, bytes]]:
    """``(seconds since start, bytes)`` of each piece of output until the process ends."""
    started, pieces = time.monotonic(), []
    while True:
        data = read()
        if data:
            pieces.append((time.monotonic() - started, data))
        elif process.poll() is not None:
            return pieces
        else:
            time.sleep(0.05)


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in zip(times, times[1:])]


def test_bundle_make_on_a_terminal_shows_a_bar_that_moves(slow_release, tmp_path):
    if not shutil.which("script"):
        pytest.skip("script (util-linux) is needed to run a command on a terminal")
    command = " ".join(make_command(slow_release, tmp_path / "b"))
    process = subprocess.Popen(["script", "-qfec", command, "/dev/null"], stdout=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, env=ENV)
    os.set_blocking(process.stdout.fileno(), False)
    pieces = arrivals(process, lambda: process.stdout.read())
    assert process.returncode == 0, b"".join(p for _, p in pieces)
    text = b"".join(p for _, p in pieces).decode("utf-8", "replace")
    bar = [(at, data) for at, data in pieces if b"encoding platform" in data or b"%|" in data]
    total = pieces[-1][0]
    longest = max(gaps([at for at, _ in bar]))
    print(f"bundle make on a terminal: {total:.1f} s, {len(bar)} bar updates, longest pause {longest:.2f} s")
    assert len(bar) >= 3, text
    assert "make: encoding platform" in text and "B/s" in text and "<" in text, text[-500:]  # rate, time left
    assert longest <= 2.0


@pytest.mark.parametrize("interval, bound", [(None, 10.0), ("1", 3.0)], ids=["default interval", "1 s"])
def test_bundle_make_into_a_file_writes_a_line_every_few_seconds(slow_release, tmp_path, interval, bound):
    """At the default interval (5 s) the issue's bound is 10 s between lines - a fast machine may
    finish before the first is due; at 1 s ($BUNDLE_PROGRESS_SECONDS) lines must come however
    fast the machine is, each in the documented form."""
    log = tmp_path / "make.log"
    env = {**ENV, "BUNDLE_PROGRESS_SECONDS": interval} if interval else ENV
    with open(log, "wb") as output:
        process = subprocess.Popen(make_command(slow_release, tmp_path / "b"), stdout=output, stderr=output,
                                   stdin=subprocess.DEVNULL, env=env)
        with open(log, "rb") as reader:
            pieces = arrivals(process, reader.read)
    assert process.returncode == 0, log.read_text()
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = [(at, line) for at, data in pieces for line in data.decode().splitlines() if line.startswith("make: ")]
    total = pieces[-1][0]
    times = [0.0] + [at for at, _ in lines] + [total]
    print(f"bundle make into a file, interval {interval or 'default'}: {total:.1f} s, {len(lines)} progress lines, "
          f"longest pause {max(gaps(times)):.1f} s\n" + "\n".join(line for _, line in lines))
    assert max(gaps(times[1:-1] if interval else times)) <= bound
    if interval is None and total < 7:
        return  # no line was due yet
    encoding = [line for _, line in lines if line.startswith("make: encoding platform")]
    size = f"{sum(p.stat().st_size for p in slow_release[0].parent.rglob('*.dat')) / MiB:.1f} MiB"
    assert re.fullmatch(rf"make: encoding platform \d+% [\d.]+ MiB/{size} [\d.]+ (KiB|MiB)/s \d+ s left",
                        encoding[0]), encoding
    assert re.fullmatch(rf"make: encoding platform 100% {size}/{size} [\d.]+ (KiB|MiB)/s done in \d+ s",
                        encoding[-1]), encoding


# --- the device --------------------------------------------------------------------------------


def test_install_on_a_terminal_shows_verifying_and_staging(cabinet, world):
    if not shutil.which("script"):
        pytest.skip("script (util-linux) is needed to run a command on a terminal")
    command = " ".join(cabinet.command("install", world.bundles / "d12"))
    result = subprocess.run(["script", "-qfec", command, "/dev/null"], capture_output=True, env=ENV,
                            stdin=subprocess.DEVNULL, timeout=300)
    text = result.stdout.decode("utf-8", "replace")
    assert result.returncode == STAGED, text
    assert "install: verifying " in text and "install: staging platform" in text and "B/s" in text, text


def test_on_insert_writes_its_progress_as_log_lines(cabinet, world, tmp_path):
    stick = world.stick(tmp_path / "stick", "d12")
    result = cabinet.agent("on-insert", stick, env={"BUNDLE_PROGRESS_SECONDS": "0"})
    assert result.returncode == STAGED, result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("on-insert: ") for line in lines) and "\r" not in result.stderr, lines
    staging = [line for line in lines if line.startswith("on-insert: staging platform ")]
    assert staging and re.fullmatch(r"on-insert: staging platform 100% .* done in \d+ s", staging[-1]), lines
    assert any(line.startswith("on-insert: verifying ") for line in lines), lines


def test_a_step_whose_estimated_total_proves_low_never_passes_100_percent():
    """Staging a clone estimates what it will write; a hard-linked file it must write after all
    made on-insert log ``staging platform 9517125% 3.6 MiB/40 B``."""
    from agent.progress import step_counter
    seen = []
    advance = step_counter(lambda step, done, total: seen.append((done, total)), "staging platform", 40)
    advance(30)
    advance(3_800_000)
    assert seen == [(30, 40), (3_800_030, 3_800_030)]
