"""A component tree as a listing of entries, and its digest (docs/FORMAT.md, "Tree digest").

The same listing describes a release tree on the vendor's disk, the tree a manifest promises,
and the tree staged on a device; equal digests mean equal trees (paths, types, modes, owners,
sizes, contents, link targets). Modification times are carried but not digested: they are
restored, yet no decision depends on them.

The classes have slots: a manifest holds up to MAX_ENTRIES entries (agent/format/manifest.py),
and a per-instance dict would add a third to each one's size (T-EXHAUST).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Iterable

DIR, FILE, SYMLINK, HARDLINK = "dir", "file", "symlink", "hardlink"
TYPES = (DIR, FILE, SYMLINK, HARDLINK)
SETUID_SETGID = 0o6000
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class Prefix:
    """The base-file region a patch chunk was made against (zstd's refPrefix)."""

    path: str
    offset: int
    length: int
    gunzip: bool = False  # the region is of the base file's gunzipped content
    elf_tables: bool = False  # the region is of the base file with its ELF tables re-coded
    # Format 2 only: the whole base file's, to name it when the rebuild fails. Format 3 leaves it
    # out (32 bytes per patched file): the listing of the base the device keeps says the same.
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class GzipRecipe:
    """How to rebuild a gzip file bit for bit from its content: chunks carry the content; the
    device deflates it at ``level`` (zlib, raw deflate, memLevel 8) between ``header`` and the
    CRC-32/size trailer. How files GNU gzip made are rebuilt: with ``block_ends`` (content
    offsets), zlib (at ``mem_level``) ends a block at each of them, where the original's blocks
    end; else with a ``shape`` (agent/format/deflate.py, stored as its bytes), zlib's tokens are
    re-coded in the original stream's blocks in Python. Used only where the bundler reproduced
    the exact bytes (FORMAT.md)."""

    header: bytes
    level: int
    size: int  # of the content
    sha256: str  # of the content
    shape: bytes | None = None
    block_ends: tuple[int, ...] | None = None
    mem_level: int = 8  # only with block_ends may it be another


@dataclass(frozen=True, slots=True)
class Chunk:
    """One stored object and the bytes of the file it decodes to (in file order)."""

    object: str
    size: int
    prefix: Prefix | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a component tree.

    ``mode`` holds permission bits only (``st_mode & 0o7777``). For a file, ``sha256`` and
    ``size`` describe the content; ``base_path`` (copy from the base tree) or ``chunks`` (stored
    objects, optionally of the gunzipped content with a ``gzip`` recipe, or of the file with its
    ELF tables re-coded, agent/format/elf_tables.py) say where it comes from;
    an empty file has neither. ``target`` is a symlink's target,
    or for a hard link the path of the file it shares its inode with.
    """

    path: str
    type: str
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime: int | None = None
    size: int | None = None
    sha256: str | None = None
    target: str | None = None
    base_path: str | None = None
    chunks: tuple[Chunk, ...] = ()
    gzip: GzipRecipe | None = None
    elf_tables: bool = False  # the chunks carry the file with its ELF tables re-coded

    def digest_line(self) -> bytes:
        return json.dumps([self.path, self.type, self.mode, self.uid, self.gid, self.size, self.sha256,
                           self.target], ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def path_order(path: str) -> tuple[bool, bytes]:
    """Listing order: the root ``.`` first, then paths bytewise (so parents precede children)."""
    return (path != ".", path.encode("utf-8"))


def tree_digest(entries: Iterable[Entry]) -> str:
    """SHA-256 over the entries' digest lines in listing order, one per line."""
    listing = entries if isinstance(entries, (list, tuple)) else list(entries)
    # A manifest's listing is already in order (its parser checks that): sorting it anyway would
    # hold a sort key per entry, ~100 bytes each, at the parser's peak (T-EXHAUST).
    if not all(path_order(a.path) < path_order(b.path) for a, b in itertools.pairwise(listing)):
        listing = sorted(listing, key=lambda e: path_order(e.path))
    digest = hashlib.sha256()
    for entry in listing:
        digest.update(entry.digest_line() + b"\n")
    return "sha256:" + digest.hexdigest()
