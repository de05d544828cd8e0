"""Where ``bundle make`` builds a bundle before it is complete, and removing what a dead run left.

A bundle is built in ``.NAME.partial-PID`` beside ``--out`` and renamed into place once signed,
so ``--out`` holds a complete bundle or nothing. A run that fails or is interrupted removes its
own folder (bundler/make.py); one killed outright (SIGKILL, a power cut) cannot, and the next
run into the same parent removes it once no process has that id (docs/OPERATOR.md,
"Interrupts"). Ids are this machine's: two build machines must not make bundles into one
network folder at the same time.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path


def partial_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial-{os.getpid()}")


_PARTIAL = re.compile(r"\..+\.partial-([0-9]{1,10})")


def remove_stale_partials(parent: Path) -> None:
    """Remove ``.NAME.partial-PID`` folders in ``parent`` whose process is gone (killed, a power
    cut): an interrupted run removes its own, one that could not leaves it for the next run.
    Best effort: what cannot be listed or removed stays."""
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        match = _PARTIAL.fullmatch(name)
        if match is None or _alive(int(match[1])):
            continue
        path = parent / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    """A process with this id exists on this machine (a reused id keeps its folder: safe side)."""
    if pid <= 0:
        return False  # kill(0) would ask about our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False
    return True
