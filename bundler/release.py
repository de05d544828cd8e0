"""``release.toml``: what a release is made of (docs/FORMAT.md, "Release description").

    product = "demo-cabinet"
    hardware = ["cab-a", "cab-b"]
    [components.platform]
    path = "platform"          # relative to this file
    version = "13.2.1"
    sequence = 7
    [components."game/lucky-sevens"]
    path = "games/lucky-sevens"
    version = "2.0"
    sequence = 3
    policy = "content"         # optional: platform is "system", games are "content"

The file is strict (docs/release.schema.json): an unknown key is refused with the nearest known
name, since a misspelt optional key would otherwise be silently left out of the release.
"""

from __future__ import annotations

import difflib
import errno
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from agent.format.manifest import COMPONENT_NAME, LABEL
from agent.format.stick import StickLayoutError, product_folder
from keys.errors import Refused
from keys.files import read_capped


class BadRelease(Refused):
    """The release description is invalid."""


TOP_LEVEL = ("product", "hardware", "components")
COMPONENT_KEYS = ("path", "version", "sequence", "policy")


def _unknown(keys, known, where: str) -> str | None:
    """``unknown key X in WHERE (did you mean Y?)`` for the first key not in ``known``."""
    for key in keys:
        if key not in known:
            near = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            return f"unknown key {key!r} {where}" + (f" (did you mean {near[0]!r}?)" if near else "") + \
                f"; the keys are {', '.join(known)}"
    return None


@dataclass(frozen=True)
class ReleaseComponent:
    name: str
    path: Path
    version: str
    sequence: int
    policy: str


@dataclass(frozen=True)
class Release:
    source: Path
    product: str
    hardware: tuple[str, ...]
    components: dict[str, ReleaseComponent]


def load_release(path: Path) -> Release:
    """Raises BadRelease naming the file and the field."""
    path = Path(path)
    try:
        document = tomllib.loads(read_capped(path, 1 << 20, what="release description").decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BadRelease(f"not valid TOML: {error}", where=path) from None

    def fail(message: str) -> BadRelease:
        return BadRelease(message, where=path, hint="see docs/FORMAT.md, 'Release description'")

    if unknown := _unknown(document, TOP_LEVEL, "at the top level"):
        raise fail(unknown)

    product = document.get("product")
    if not isinstance(product, str) or not LABEL.fullmatch(product):
        raise fail("'product' must be a name of letters, digits and ._+~@-")
    try:
        product_folder(product)  # it names the product's folder on FAT sticks
    except StickLayoutError as error:
        raise fail(error.message) from None
    hardware = document.get("hardware")
    if isinstance(hardware, str):
        hardware = [hardware]
    if (not isinstance(hardware, list) or not hardware
            or not all(isinstance(h, str) and LABEL.fullmatch(h) for h in hardware)):
        raise fail("'hardware' must list at least one hardware model name")
    raw_components = document.get("components")
    if not isinstance(raw_components, dict) or not raw_components:
        raise fail("no [components.NAME] tables")
    components = {}
    for name, table in raw_components.items():
        if not COMPONENT_NAME.fullmatch(name):
            raise fail(f"component {name!r}: names are 'platform' or 'game/<id>' (lower-case id)")
        if not isinstance(table, dict):
            raise fail(f"component {name!r} must be a table")
        if unknown := _unknown(table, COMPONENT_KEYS, f"in component {name!r}"):
            raise fail(unknown)
        tree = table.get("path")
        version = table.get("version")
        sequence = table.get("sequence")
        default_policy = "system" if name == "platform" else "content"
        policy = table.get("policy", default_policy)
        if not isinstance(tree, str) or not tree:
            raise fail(f"component {name!r}: 'path' (the tree, relative to this file) is required")
        if not isinstance(version, str) or not LABEL.fullmatch(version):
            raise fail(f"component {name!r}: 'version' must be a string like \"13.2.1\"")
        if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
            raise fail(f"component {name!r}: 'sequence' must be a non-negative integer")
        if policy != default_policy:
            raise fail(f"component {name!r}: policy must be {default_policy!r} (the platform may carry "
                       "setuid bits and ownership; games are content only)")
        try:
            tree_path = (path.parent / tree).resolve()
        except RuntimeError:  # pathlib's word for ELOOP: reported as the OSError it is (agent/cli/errors.py)
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path.parent / tree)) from None
        if not tree_path.is_dir():
            raise fail(f"component {name!r}: {tree_path} is not a directory")
        components[name] = ReleaseComponent(name=name, path=tree_path, version=version, sequence=sequence,
                                            policy=policy)
    return Release(source=path, product=product, hardware=tuple(hardware), components=components)
