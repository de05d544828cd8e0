"""The layout of update media (docs/STICK.md): trust roots and bundles under the product's folder.

    STICK/<product>/trust/root-<N>.json                    every trust root, named by its version N
    STICK/<product>/trust/root-<N>.json.<KEY ID>.minisig   its signatures (keys/detached.py)
    STICK/<product>/bundles/<ID>/                          a bundle directory (bundle_dir.py)
    STICK/<product>/bundles/<ID>/COMPLETE                  written last: SHA-256 of the manifest file + "\\n"

``ID`` is the first 16 hex digits of the SHA-256 of the bundle's manifest file, so the same
bundle always lands in the same folder and several bundles (for several bases) share a stick.
A bundle folder without a COMPLETE marker that names its manifest is incomplete and is
ignored. Names other systems leave on sticks (``._*``, ``System Volume Information``...) are
ignored everywhere. The stick can be rewritten at any time: entries are opened without
following symlinks and only plain directories and regular files count (STYLE.md 10). What one
stick can make the device read is bounded: MAX_FOLDER_ENTRIES per folder, MAX_BUNDLE_FOLDERS
bundle folders per product (docs/STICK.md, "Limits").
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.beneath import EscapingPath, open_beneath
from agent.format.manifest import MAX_VOLUME_BYTES
from keys.errors import Failed, Refused

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

_ROOT_NAME = re.compile(r"root-([1-9][0-9]{0,8})\.json")
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


@dataclass(frozen=True)
class StickRoot:
    version: int
    path: Path


@dataclass(frozen=True)
class StickBundle:
    """A bundle folder with a well-formed COMPLETE marker. Its manifest file must still hash to
    ``manifest_sha256`` when read: the marker only says the copy was finished, not what is in it."""

    id: str
    path: Path
    manifest_sha256: str


def _entries(stick: Path, relative: str) -> list[tuple[str, str]]:
    """``(name, kind)`` of the non-junk entries of ``stick/relative``, kind ``file``, ``dir`` or
    ``other`` (symlinks included), reached without following any symlink; [] if it is absent.
    Raises StickLayoutError (not a plain folder, more than MAX_FOLDER_ENTRIES entries), Failed."""
    try:
        fd = open_beneath(Path(stick), relative, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return []
    except (NotADirectoryError, EscapingPath):
        raise StickLayoutError(f"{relative} is not a plain folder (a file or a symlink)", where=stick) from None
    except OSError as error:
        raise Failed(f"cannot open {relative}: {error.strerror}", where=stick,
                     hint="the stick may have been removed") from None
    try:
        found = []
        with os.scandir(fd) as listing:  # kinds are taken while the folder is open: they may need fstatat
            for count, e in enumerate(listing, 1):
                if count > MAX_FOLDER_ENTRIES:  # T-EXHAUST: stop listing, refuse the stick
                    raise StickLayoutError(f"{relative} holds more than {MAX_FOLDER_ENTRIES} entries", where=stick,
                                           hint="this is not a stick made by bundle write")
                if not is_junk(e.name):
                    found.append((e.name, "file" if e.is_file(follow_symlinks=False) else
                                  "dir" if e.is_dir(follow_symlinks=False) else "other"))
        return sorted(found)
    except OSError as error:
        raise Failed(f"cannot list {relative}: {error.strerror}", where=stick,
                     hint="the stick may have been removed") from None
    finally:
        os.close(fd)


def root_files(stick: Path, product: str) -> list[StickRoot]:
    """The trust-root files on the stick, oldest version first (regular files only).

    Raises StickLayoutError, Failed.
    """
    relative = f"{product_folder(product)}/{TRUST}"
    found = []
    for name, kind in _entries(stick, relative):
        match = _ROOT_NAME.fullmatch(name)
        if match and kind == "file":
            found.append(StickRoot(int(match.group(1)), Path(stick) / relative / name))
    return sorted(found, key=lambda r: r.version)


def read_marker(stick: Path, product: str, folder: str) -> bytes | None:
    """The COMPLETE marker of ``bundles/<folder>``, or None if it is not a small regular file."""
    relative = f"{product_folder(product)}/{BUNDLES}/{folder}/{COMPLETE}"
    try:
        fd = open_beneath(Path(stick), relative, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
    except (FileNotFoundError, NotADirectoryError, EscapingPath):
        return None  # absent, or reached through a symlink: not a marker
    except OSError as error:
        raise Failed(f"cannot open {relative}: {error.strerror}", where=stick) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 66)  # a valid marker is 65 bytes; one more shows it is not one
    except OSError as error:
        raise Failed(f"cannot read {relative}: {error.strerror}", where=stick) from None
    finally:
        os.close(fd)


def complete_bundles(stick: Path, product: str) -> list[StickBundle]:
    """Bundle folders whose COMPLETE marker is well formed and names the folder's ID.

    Incomplete folders (a write interrupted, a stick pulled) are skipped, not reported: the next
    ``bundle write`` replaces them. More than MAX_BUNDLE_FOLDERS entries named like a bundle
    folder (complete or not, folders or not) refuse the whole stick before any marker is read:
    a forged stick must not buy one read and one refusal per folder (T-LOG).
    Raises StickLayoutError, Failed.
    """
    relative = f"{product_folder(product)}/{BUNDLES}"
    named = [(name, kind) for name, kind in _entries(stick, relative) if is_bundle_folder_name(name)]
    if len(named) > MAX_BUNDLE_FOLDERS:
        raise StickLayoutError(f"{relative} holds {len(named)} bundle folders; a stick may carry at most "
                               f"{MAX_BUNDLE_FOLDERS} per product", where=stick,
                               hint="remove the bundles this machine does not need (docs/STICK.md, \"Limits\")")
    found = []
    for name, kind in named:
        if kind != "dir":
            continue
        marker = read_marker(stick, product, name)
        sha256 = None if marker is None else marked_sha256(marker, name)
        if sha256 is not None:
            found.append(StickBundle(name, Path(stick) / relative / name, sha256))
    return found
