"""`make demo` is the README's first command: the built-in demo must run to its end, every step
exiting as the story says (bundler/demo.py stops at the first that does not)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.sim.tools import BIN


def test_the_demo_runs_to_its_end():
    result = subprocess.run([sys.executable, "-m", "bundler.demo"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Demo complete: every step above behaved as expected." in result.stdout
