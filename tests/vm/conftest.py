"""Fixtures and hooks of the VM tests; the harness lives in tests/vm/machine.py.

Tests marked ``vm`` boot the reference image (build/cabinet.img, ``make image``) and take minutes
each: ``make vm-test`` runs them (it sets BUNDLE_VM_TESTS=1); a plain ``pytest``/``make test``
deselects them rather than skipping them, so CI's rule that a skip is a failure
(tests/conftest.py) does not apply to a sweep it was never asked to run.
"""

from __future__ import annotations

import os
import sys


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BUNDLE_VM_TESTS"):
        return
    deselected = [item for item in items if item.get_closest_marker("vm")]
    if deselected:
        items[:] = [item for item in items if not item.get_closest_marker("vm")]
        config.hook.pytest_deselected(items=deselected)


def pytest_terminal_summary(terminalreporter):
    cabinet = sys.modules.get("tests.vm.cabinet")  # loaded only when VM scenarios ran
    for what, seconds in (cabinet.TIMINGS.items() if cabinet else ()):
        ordered = sorted(seconds)
        terminalreporter.write_line(f"vm timing: {what}: median {ordered[len(ordered) // 2]:.0f} s, "
                                    f"max {ordered[-1]:.0f} s ({len(ordered)} measured)")
