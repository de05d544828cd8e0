"""Fixtures and hooks of the VM tests; the harness lives in tests/vm/machine.py.

Tests marked ``vm`` boot the reference image (build/cabinet.img, ``make image``) and take minutes
each: ``make vm-test`` runs them (it sets BUNDLE_VM_TESTS=1); a plain ``pytest``/``make test``
deselects them rather than skipping them, so CI's rule that a skip is a failure
(tests/conftest.py) does not apply to a sweep it was never asked to run.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.vm import debian
from tests.vm.cabinet import TIMINGS, Cabinet, Image, Releases
from tests.vm.machine import Boot


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BUNDLE_VM_TESTS"):
        return
    deselected = [item for item in items if item.get_closest_marker("vm")]
    if deselected:
        items[:] = [item for item in items if not item.get_closest_marker("vm")]
        config.hook.pytest_deselected(items=deselected)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """make vm-test's two pytest-xdist workers: the power cuts, which keep two machines busy, in
    one, and every other test, one machine at a time, in the other (each a unit of work that
    stays on one worker). pytest-xdist's own ``--dist loadgroup`` would do it with marks, but its
    renaming of test ids no longer takes effect under pytest 9.2."""
    from xdist.scheduler import LoadScopeScheduling

    class TwoLanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "power-cuts" if "test_cabinet_power_cuts.py" in nodeid else "one-machine"

    return TwoLanes(config, log)


def pytest_terminal_summary(terminalreporter):
    for what, seconds in TIMINGS.items():
        ordered = sorted(seconds)
        terminalreporter.write_line(f"vm timing: {what}: median {ordered[len(ordered) // 2]:.0f} s, "
                                    f"max {ordered[-1]:.0f} s ({len(ordered)} measured)")


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller prints them
        session.config.workeroutput["vm_timings"] = dict(TIMINGS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for what, seconds in getattr(node, "workeroutput", {}).get("vm_timings", {}).items():
        TIMINGS[what].extend(seconds)


@pytest.fixture(scope="session")
def image() -> Image:
    if os.geteuid() != 0:
        pytest.skip("the VM scenarios make stick images with loop devices: needs root")
    debian.need(*debian.QEMU, *debian.GRUB, "exfatprogs", "exfat-fuse", "fuse")
    return Image.load()


@pytest.fixture(scope="session")
def releases(image, tmp_path_factory) -> Releases:
    return Releases(image, tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="session")
def game_2(releases):
    """A delta of the demo game, release 1 -> 2 (the cheapest update)."""
    return releases.bundle("game-2", releases.game("game-2", 2))


@pytest.fixture
def cabinet(image, releases, tmp_path, request):
    """A cabinet at release 1, powered on, its shell answering; counted into the summary after."""
    started = time.monotonic()
    device = Cabinet(image, tmp_path / "cabinet")
    device.known = releases.known_digests
    try:
        assert device.power_on() == Boot("env-1", trial=False)
        yield device
    finally:
        device.count(request.node.name, time.monotonic() - started)
        device.close()
