"""Boot environments behind one small interface (base.py), one module per backend.

The registry maps the configuration's ``[boot] backend`` to a class; adding a backend (GRUB A/B,
bectl, ...) is one module and one line here, never an if/else chain in the installer.
"""

from __future__ import annotations

from pathlib import Path

from agent.boot.base import BootBackend, BootError, Environment
from agent.boot.bectl import BectlBackend
from agent.boot.dirs import DirsBackend
from agent.boot.grub_btrfs import GrubBtrfsBackend

BACKENDS: dict[str, type[BootBackend]] = {
    backend.name: backend for backend in (DirsBackend, BectlBackend, GrubBtrfsBackend)}


def open_backend(name: str, settings: dict, system_root: Path = Path("/")) -> BootBackend:
    """Raises BootError for an unknown backend or bad settings."""
    if name not in BACKENDS:
        raise BootError(name, f"unknown boot backend; this agent has: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](settings, system_root)


__all__ = ["BACKENDS", "BootBackend", "BootError", "Environment", "open_backend"]
