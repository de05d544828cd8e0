"""The layout of update media (docs/STICK.md): trust roots and bundles under the product's folder.

    STICK/<product>/trust/root-<N>.json                    every trust root, named by its version N
    STICK/<product>/trust/root-<N>.json.<KEY ID>.minisig   its signatures (keys/detached.py)
    STICK/<product>/bundles/<ID>/                          a bundle directory (bundle_dir.py)
    STICK/<product>/bundles/<ID>/COMPLETE                  written last: SHA-256 of the manifest file + "\\n"

``ID`` is the first 16 hex digits of the SHA-256 of the bundle's manifest file, so the same
bundle always lands in the same folder and several bundles (for several bases) share a stick.
A bundle folder without a COMPLETE marker that names its manifest is incomplete and is
ignored. Names other systems leave on sticks (``._*``, ``System Volume Information``...) are
ignored everywhere. What one stick can make the device read is bounded: MAX_FOLDER_ENTRIES per
folder, MAX_BUNDLE_FOLDERS bundle folders per product (docs/STICK.md, "Limits").

Pure: names and rules only. Reading a stick is agent/medium.py.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from agent.format.manifest import MAX_VOLUME_BYTES
from keys.errors import Refused

TRUST = "trust"
BUNDLES = "bundles"
COMPLETE = "COMPLETE"
ID_DIGITS = 16
MAX_FILE_BYTES = MAX_VOLUME_BYTES  # FAT32: 4 GiB - 1 per file, whatever filesystem the stick has now
# A product's bundle folders examined on one stick; a stick with more is refused as a whole
# (T-LOG). A vendor's stick holds a full bundle and a few deltas: 64 is far above that and
# bounds what a forged stick costs (64 capped manifest reads, one audit record).
MAX_BUNDLE_FOLDERS = 64
# Entries listed in one folder of the layout, junk included: the listing itself stays bounded on
# a filesystem that allows millions (FAT32 allows 65,536).
MAX_FOLDER_ENTRIES = 4096

_ROOT_NAME = re.compile(r"root-([1-9][0-9]{0,8})\.json")  # up to trust_root.MAX_VERSION
_BUNDLE_ID = re.compile(rf"[0-9a-f]{{{ID_DIGITS}}}")
_COMPLETE_CONTENT = re.compile(rb"([0-9a-f]{64})\n")
# A product label (manifest.py LABEL) minus what FAT cannot store in a name (":") or silently drops
# (a trailing dot), so the folder a vendor writes is the folder a device looks for.
_PRODUCT_FOLDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~@-]{0,127}(?<!\.)")

# What macOS, Windows, Linux desktops and Android leave on removable media (compared case-blind,
# as FAT stores names): never part of the layout, never an error.
_JUNK_NAMES = frozenset(name.casefold() for name in (
    "System Volume Information", "$RECYCLE.BIN", "RECYCLER", "Thumbs.db", "desktop.ini",
    ".DS_Store", ".Trashes", ".Spotlight-V100", ".fseventsd", ".TemporaryItems", ".apdisk",
    "LOST.DIR", ".android_secure",
))
_JUNK_PREFIXES = ("._", ".trash-")  # AppleDouble files; freedesktop trash (.Trash-1000)


class StickLayoutError(Refused):
    """The stick's content cannot be part of the layout (a name FAT cannot hold, a symlink...)."""


def is_bundle_folder_name(name: str) -> bool:
    """True for a name a bundle folder has (a bundle ID); what the folder cap counts."""
    return _BUNDLE_ID.fullmatch(name) is not None


def is_junk(name: str) -> bool:
    """True for names other systems leave on sticks; the layout never uses them."""
    folded = name.casefold()
    return folded in _JUNK_NAMES or folded.startswith(_JUNK_PREFIXES)


def product_folder(product: str) -> str:
    """The product's folder name. Raises StickLayoutError for a product FAT cannot name."""
    if not _PRODUCT_FOLDER.fullmatch(product):
        raise StickLayoutError(f"product {product!r} cannot be a folder name on a FAT stick",
                               hint="product names for sticks use letters, digits and . _ + ~ @ - only")
    return product


def trust_dir(stick: Path, product: str) -> Path:
    return Path(stick) / product_folder(product) / TRUST


def bundles_dir(stick: Path, product: str) -> Path:
    return Path(stick) / product_folder(product) / BUNDLES


def root_name(version: int) -> str:
    assert version >= 1
    return f"root-{version}.json"


def root_version(name: str) -> int | None:
    """The version a trust-root file's name gives (``root-<N>.json``), or None for another name."""
    match = _ROOT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def bundle_id(manifest_bytes: bytes) -> str:
    """The bundle's folder name: the first hex digits of its manifest file's SHA-256."""
    return hashlib.sha256(manifest_bytes).hexdigest()[:ID_DIGITS]


def complete_marker(manifest_bytes: bytes) -> bytes:
    return hashlib.sha256(manifest_bytes).hexdigest().encode() + b"\n"


def marked_sha256(marker: bytes, folder: str) -> str | None:
    """The manifest SHA-256 a COMPLETE marker names, if it is well formed and fits its folder."""
    match = _COMPLETE_CONTENT.fullmatch(marker)
    if match is None or not match.group(1).decode().startswith(folder):
        return None
    return match.group(1).decode()
