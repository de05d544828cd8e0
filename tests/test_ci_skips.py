"""Under CI a skipped check fails the run unless its reason is explicitly allowed (tests/conftest.py,
CI_ALLOWED_SKIPS): a missing minisign or mkfs must not pass unnoticed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASES = '''
import pytest

def test_needs_a_tool():
    pytest.skip("minisign not installed and the Debian package minisign could not be installed")

def test_allowed():
    pytest.skip("this kernel has no openat2")

@pytest.fixture
def tool():
    pytest.skip("mkfs.xfs not installed")

def test_fixture_skip(tool):
    pass

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False
'''


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_cases.py").write_text(CASES)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "tests.conftest",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_cases.py")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_skip_for_a_missing_tool_fails_and_says_why(tmp_path):
    result = _run(tmp_path, "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout and "1 error" in result.stdout and "1 skipped" in result.stdout, result.stdout
    assert "1 xfailed" in result.stdout, result.stdout
    assert "not in CI_ALLOWED_SKIPS" in result.stdout
    assert "minisign not installed" in result.stdout and "mkfs.xfs not installed" in result.stdout


def test_outside_ci_skips_stay_skips(tmp_path):
    result = _run(tmp_path, None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 skipped" in result.stdout, result.stdout
