"""Fixtures and hooks only; the helpers they use live in tests/sim/ (imported by the tests, never
this module)."""

from __future__ import annotations

import os

import pytest

from tests.sim.device import Cabinet, World
from tests.sim.keyring import Keyring
from tests.sim.releases import make_trust
from tests.sim.summary import exported_summaries, merge_summaries, summary_lines
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


# --- under CI a skipped check is a failure, unless its reason is allowed here ----------------------
# A skip hides a check: a fresh CI machine whose dpkg lock was held once skipped the minisign
# interop test without anyone noticing. With $CI set, a skip whose reason starts with none of
# these fails the test, naming the reason; each entry says why that skip is harmless.
CI_ALLOWED_SKIPS = (
    "this kernel has no openat2",  # tests/test_beneath.py: the portable walk is tested either way
    "vectors were compressed by libzstd",  # another libzstd may compress differently; the vectors still parse
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    if not reason.startswith(CI_ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI, and this reason is not in CI_ALLOWED_SKIPS (tests/conftest.py): "
                           f"{reason}")


# --- summary lines printed at the end of the run (tests/sim/summary.py) --------------------------


def pytest_terminal_summary(terminalreporter):
    for line in summary_lines():
        terminalreporter.write_line(line)


# Under pytest-xdist (make vm-test runs the VM scenarios in two workers) each worker counts its
# own; the controller, which prints the summary, adds them up as each worker finishes.


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["summaries"] = exported_summaries()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    exported = getattr(node, "workeroutput", {}).get("summaries")
    if exported:  # none when the worker crashed
        merge_summaries(exported)
