"""Fixtures and hooks only; the helpers they use live in tests/sim/ (imported by the tests, never
this module)."""

from __future__ import annotations

import pytest

from tests.sim.device import Cabinet, World
from tests.sim.keyring import Keyring
from tests.sim.releases import make_trust
from tests.sim.summary import summary_lines
from tests.sim.tools import debian_tools, run_cli


@pytest.fixture
def keyring() -> Keyring:
    return Keyring()


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def minisign() -> str:
    """The real minisign (Debian package), installed on first use when we are root."""
    return debian_tools("minisign", "minisign")[0]


@pytest.fixture(scope="session")
def trust(tmp_path_factory):
    return make_trust(run_cli, tmp_path_factory.mktemp("trust"))


# --- the demo world and a provisioned cabinet (tests/sim/device.py) ------------------------------
# Modules that need other releases or devices define their own ``world`` or ``cabinet``.


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.fixture
def cabinet(world, tmp_path) -> Cabinet:
    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    return cabinet


# --- summary lines printed at the end of the run (tests/sim/summary.py) --------------------------


def pytest_terminal_summary(terminalreporter):
    for line in summary_lines():
        terminalreporter.write_line(line)
