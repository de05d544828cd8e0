"""Other products' folders on a stick (docs/STICK.md: ``STICK/<product>/bundles/``), named in
the answer to a stick with nothing for this machine (docs/AGENT.md, "Outcomes"), so that a
technician holding another product's stick is told so. Nothing inside them is read."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.format.stick import BUNDLES, StickLayoutError, is_junk, product_folder

# Top-level names of a stick looked at for other products' folders: enough for any real stick,
# bounded so a forged one cannot make the answer expensive (T-EXHAUST).
_FOLDERS_LOOKED_AT = 64


def other_products(medium: Path, product: str) -> list[str]:
    """The folders of other products on a stick (``STICK/<product>/bundles/``, docs/STICK.md), for
    the answer only: nothing in them is read. Symlinks are not followed (T-SYMLINK-READ)."""
    found = []
    try:
        with os.scandir(medium) as listing:
            for number, entry in enumerate(listing):
                if number >= _FOLDERS_LOOKED_AT:
                    break
                if entry.name != product and not is_junk(entry.name) and _names_a_product(entry.name) \
                        and entry.is_dir(follow_symlinks=False) and _is_folder(os.path.join(entry.path, BUNDLES)):
                    found.append(entry.name)
    except OSError:
        pass  # a bundle directory, or a stick pulled meanwhile: no other products to name
    return sorted(found)


def _names_a_product(name: str) -> bool:
    try:
        return product_folder(name) == name
    except StickLayoutError:
        return False


def _is_folder(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
