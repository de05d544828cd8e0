"""The bundles a path holds, for ``bundle verify`` and ``bundle inspect``: a bundle folder as
``bundle make --out`` wrote it, or a stick (its mount point or a copy) in the layout of
docs/STICK.md with every product's bundles. The stick is read as a device reads it
(agent/medium.py): only complete bundle folders count, and their COMPLETE marker must name the
manifest found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.format.bundle_dir import MANIFEST
from agent.format.stick import BUNDLES, is_bundle_folder_name, is_junk
from agent.medium import complete_bundles
from keys.errors import Failed


@dataclass(frozen=True)
class FoundBundle:
    path: Path
    product_folder: str | None = None  # None: a bundle folder given directly
    manifest_sha256: str | None = None  # what the stick's COMPLETE marker names


@dataclass(frozen=True)
class Found:
    bundles: list[FoundBundle]
    incomplete: list[Path]  # bundle folders on a stick without a valid COMPLETE marker (devices skip them)
    is_stick: bool


def _folders(path: Path) -> list[str]:
    """Names of the plain (not symlinked) non-junk folders in ``path``. Raises Failed."""
    try:
        with os.scandir(path) as listing:
            return sorted(e.name for e in listing if not is_junk(e.name) and e.is_dir(follow_symlinks=False))
    except OSError as error:
        raise Failed(f"cannot list: {error.strerror}", where=path) from None


def find_bundles(path: Path) -> Found:
    """The bundle folder ``path``, or every complete bundle on the stick ``path``.

    Raises Failed (neither a bundle nor a stick with bundles, unreadable), StickLayoutError.
    """
    path = Path(path)
    if os.path.lexists(path / MANIFEST):
        return Found([FoundBundle(path)], [], is_stick=False)
    bundles, incomplete = [], []
    for product in _folders(path):
        if not (path / product / BUNDLES).is_dir():
            continue
        complete = complete_bundles(path, product)
        bundles += [FoundBundle(b.path, product, b.manifest_sha256) for b in complete]
        done = {b.id for b in complete}
        incomplete += [path / product / BUNDLES / name for name in _folders(path / product / BUNDLES)
                       if is_bundle_folder_name(name) and name not in done]
    if not bundles and not incomplete:
        raise Failed(f"no bundle here: neither a bundle folder ({MANIFEST}) nor a stick with "
                     "<product>/bundles/<ID>/ folders", where=path,
                     hint="give a folder `bundle make --out` created, or a stick `bundle write` wrote")
    return Found(bundles, incomplete, is_stick=True)
