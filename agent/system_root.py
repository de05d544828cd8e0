"""Every path of the machine derives from one system root (``--root``, "/" on a running machine).

A technician's recovery system or a test points the agent at a mounted system (like ``bectl -r``):
absolute paths of the configuration are then taken relative to that root.
"""

from __future__ import annotations

from pathlib import Path


def under(system_root: Path, value: str) -> Path:
    path = Path(value)
    return system_root / path.relative_to("/") if path.is_absolute() else system_root / path
