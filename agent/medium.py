"""Reading update media from the file system: a stick in the layout of docs/STICK.md, and bundle
folders (docs/FORMAT.md, "Bundle directory"). The names and rules are agent/format/stick.py and
agent/format/bundle_dir.py; this module does the I/O.

The stick can be rewritten at any time: entries are opened without following symlinks and only
plain directories and regular files count (STYLE.md 10, T-SYMLINK-READ, T-MEDIUM).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.beneath import EscapingPath, NotRegularFile, open_beneath
from agent.format.bundle_dir import MANIFEST, manifest_path
from agent.format.manifest import MAX_STORED_MANIFEST_BYTES
from agent.format.stick import (BUNDLES, COMPLETE, MAX_BUNDLE_FOLDERS, MAX_FOLDER_ENTRIES, TRUST,
                                StickLayoutError, is_bundle_folder_name, is_junk, marked_sha256, product_folder,
                                root_version)
from keys.detached import load_signatures
from keys.errors import Failed, Refused
from keys.files import read_capped_fd
from keys.minisign import Signature


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
        version = root_version(name)
        if version is not None and kind == "file":
            found.append(StickRoot(version, Path(stick) / relative / name))
    return sorted(found, key=lambda r: r.version)


def irregular_root_files(stick: Path, product: str) -> list[str]:
    """The names of entries in the trust folder named like a root file that are not regular
    files (a symlink, a folder, a FIFO): :func:`root_files` never reads them; a caller that must
    not quietly pass over one (agent/technician/trust.py) refuses the stick instead.
    Raises StickLayoutError, Failed."""
    relative = f"{product_folder(product)}/{TRUST}"
    return [name for name, kind in _entries(stick, relative) if root_version(name) is not None and kind != "file"]


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
    return bundle_folders(stick, product)[0]


def bundle_folders(stick: Path, product: str) -> tuple[list[StickBundle], list[str]]:
    """The complete bundle folders (:func:`complete_bundles`) and the names of the incomplete
    ones, for a technician's look at a stick. Raises StickLayoutError, Failed."""
    relative = f"{product_folder(product)}/{BUNDLES}"
    named = [(name, kind) for name, kind in _entries(stick, relative) if is_bundle_folder_name(name)]
    if len(named) > MAX_BUNDLE_FOLDERS:
        raise StickLayoutError(f"{relative} holds {len(named)} bundle folders; a stick may carry at most "
                               f"{MAX_BUNDLE_FOLDERS} per product", where=stick,
                               hint="remove the bundles this machine does not need (docs/STICK.md, \"Limits\")")
    complete, incomplete = [], []
    for name, kind in named:
        marker = read_marker(stick, product, name) if kind == "dir" else None
        sha256 = None if marker is None else marked_sha256(marker, name)
        if sha256 is not None:
            complete.append(StickBundle(name, Path(stick) / relative / name, sha256))
        else:
            incomplete.append(name)
    return complete, incomplete


class ManifestChanged(Refused):
    """The manifest file is not the one the bundle's COMPLETE marker names (T-TAMPER)."""


@dataclass(frozen=True)
class BundleFiles:
    """A bundle's manifest bytes and signatures as read from disk - not yet verified."""

    directory: Path
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    manifest_sha256: str = ""  # of ``manifest_bytes``, computed as they were read


def read_bundle(bundle: Path, *, manifest_sha256: str | None = None) -> BundleFiles:
    """The manifest file and its signatures, read without following a symlink.

    With ``manifest_sha256`` (what a stick's COMPLETE marker names) the manifest must hash to
    it, checked on the bytes as read and before its signatures are even loaded: a forged
    folder costs one capped read, never a decompression or a parse (T-EXHAUST). The size is
    refused from fstat, before a byte is read.

    Raises Failed (not a bundle, unreadable), Refused (not a regular file, a symlink, over
    the size limit), ManifestChanged, MalformedSignature.
    """
    bundle = Path(bundle)
    try:
        fd = open_beneath(bundle, MANIFEST, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
    except FileNotFoundError:
        raise Failed(f"not a bundle: {MANIFEST} is missing", where=bundle,
                     hint="give the directory that `bundle make --out` created") from None
    except NotRegularFile:
        raise Refused("manifest is not a regular file", where=manifest_path(bundle)) from None
    except EscapingPath as error:
        raise Refused(f"manifest cannot be reached without following a symlink ({error.message})",
                      where=bundle) from None
    except OSError as error:
        raise Failed(f"cannot open manifest: {error.strerror}", where=manifest_path(bundle)) from None
    digest = hashlib.sha256()
    data = read_capped_fd(fd, MAX_STORED_MANIFEST_BYTES, what="manifest", where=manifest_path(bundle), digest=digest)
    if manifest_sha256 is not None and digest.hexdigest() != manifest_sha256:
        raise ManifestChanged("the manifest is not the one the COMPLETE marker names (changed after writing)",
                              where=bundle, hint="write the bundle to the stick again (bundle write)")
    return BundleFiles(directory=bundle, manifest_bytes=data, signatures=tuple(load_signatures(manifest_path(bundle))),
                       manifest_sha256=digest.hexdigest())
