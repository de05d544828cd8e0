"""Shared fixtures: in-memory keys, the real command lines as subprocesses, the real minisign."""

from __future__ import annotations

import os
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

from tests.keyring import Keyring

BIN = Path(sys.executable).parent


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``bundle``/``bundle-agent`` as a real process, exactly as an operator would."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    full_env.pop("BUNDLE_PASSPHRASE", None)
    full_env.update(env or {})
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=full_env, input=input,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def cli():
    return run_cli


_apt_updated = False


def debian_tools(package: str, *commands: str) -> list[str]:
    """Paths of ``commands``, installing the Debian ``package`` first when one is missing.

    Skips the calling test, with the reason, when they cannot be had (not root, no mirror).
    """
    global _apt_updated
    if not all(shutil.which(c) for c in commands) and os.geteuid() == 0 and shutil.which("apt-get"):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", package]
        if subprocess.run(install, env=env, **quiet).returncode and not _apt_updated:
            subprocess.run(["apt-get", "update", "-q"], env=env, **quiet)
            _apt_updated = True
            subprocess.run(install, env=env, **quiet)
    missing = [c for c in commands if not shutil.which(c)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and the Debian package {package} could not be "
                    "installed with apt-get (needs root and a reachable Debian mirror)")
    return [shutil.which(c) for c in commands]


@pytest.fixture(scope="session")
def minisign() -> str:
    """The real minisign (Debian package), installed on first use when we are root."""
    return debian_tools("minisign", "minisign")[0]


@pytest.fixture(scope="session")
def trust(tmp_path_factory):
    from tests.releases import make_trust
    return make_trust(run_cli, tmp_path_factory.mktemp("trust"))


# --- the demo world and a provisioned cabinet (tests/device_sim.py) --------------------------------
# Modules that need other releases or devices define their own ``world`` or ``cabinet``.


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from tests.device_sim import World  # not at the top: device_sim imports this module
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture
def cabinet(world, tmp_path):
    from tests.device_sim import Cabinet
    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    return cabinet


# --- summary lines printed at the end of the run (hostile sticks, power cuts) --------------------

_SUMMARIES: dict[str, dict[str, int]] = {}
_SUMMARY_FORMATS: dict[str, str] = {}


def count_summary(name: str, fmt: str, **increments: int) -> None:
    """Add to a named summary; printed once at the end as ``fmt.format(**counters)``.

    Example: count_summary("hostile", "hostile sticks: {refused} refused of {total}, device unchanged in
    {unchanged}", total=1, refused=1, unchanged=1)
    """
    counters = _SUMMARIES.setdefault(name, {})
    _SUMMARY_FORMATS[name] = fmt
    for key, value in increments.items():
        counters[key] = counters.get(key, 0) + value


def pytest_terminal_summary(terminalreporter):
    for name, counters in _SUMMARIES.items():
        fmt = _SUMMARY_FORMATS[name]
        fields = [field for _, field, _, _ in string.Formatter().parse(fmt) if field]
        terminalreporter.write_line(fmt.format(**{field: counters.get(field, 0) for field in fields}))
