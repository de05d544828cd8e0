"""Listing a real directory tree as manifest entries (vendor: release trees; device: staged trees).

Refuses what a component may never contain: device nodes, sockets, FIFOs, and names that are
not valid UTF-8 (docs/FORMAT.md, "Entries").
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from dataclasses import replace
from typing import TYPE_CHECKING, Container, Iterator, NamedTuple

from agent.beneath import Beneath
from agent.format.tree import DIR, EMPTY_SHA256, FILE, HARDLINK, SYMLINK, Entry, path_order
from keys.errors import Refused, UpdateError

if TYPE_CHECKING:
    from agent.known_hashes import KnownHashes  # which imports this module

READ_SIZE = 1 << 20
# Reading and SHA-256 release the GIL, so a scan hashes on two threads while it walks: checking a
# staged platform (~250 MB) is most of an install's time, and a cabinet has more than one core.
HASH_THREADS = 2
HASHES_AHEAD = 64  # files opened and not yet hashed: bounds descriptors and queued work
# Smaller files are hashed by the walk itself: handing one to a thread costs more than hashing
# it (a platform's 9,200 files: 0.39 s to scan, 0.27 s with this).
INLINE_HASH_BYTES = 64 << 10
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_read_buffers = threading.local()


class UnsupportedFile(Refused):
    """A tree contains something a component cannot carry."""


class _Status(NamedTuple):
    """What an entry needs of a file's status, kept while the rest of the tree is walked: an
    os.stat_result is about twice the size, and a tree at the entry limit has 100,000."""
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    inode: tuple[int, int]  # st_dev, st_ino
    links: int

    @classmethod
    def of(cls, info: os.stat_result) -> "_Status":
        return cls(info.st_mode, info.st_uid, info.st_gid, info.st_size, int(info.st_mtime),
                   (info.st_dev, info.st_ino), info.st_nlink)


def hash_and_close(fd: int) -> str:
    # Into one buffer per thread: a fresh 1 MiB block per read is an mmap, page faults and a
    # munmap once bundle make has fixed malloc's mmap threshold (bundler/malloc.py) - a tree
    # of 11,800 files took three times as long to scan.
    buffer = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = memoryview(bytearray(READ_SIZE))
    digest = hashlib.sha256()
    try:
        while count := os.readv(fd, [buffer]):
            digest.update(buffer[:count])
    finally:
        os.close(fd)
    return digest.hexdigest()


@contextmanager
def _named(tree: Beneath, relative: str) -> Iterator[None]:
    """An OSError (an unreadable file or folder) names the whole path, not the last component
    the descriptor-relative call saw: ``error: PATH: Permission denied`` (agent/cli/errors.py)."""
    try:
        yield
    except OSError as error:
        if isinstance(error, UpdateError):
            raise  # our own errors (EscapingPath...) say where already
        raise OSError(error.errno, error.strerror, f"{tree.where}/{relative}" if relative else tree.where) from None


def _is_utf8(text: str) -> bool:
    """Whether a name or link target read from the filesystem was valid UTF-8 (undecodable bytes
    arrive as lone surrogates, which do not encode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _relative_paths(tree: Beneath, exclude: frozenset[str], foreign: list[str] | None,
                    mounts: list[str] | None, enter: Container[str] | None
                    ) -> Iterator[tuple[str, os.stat_result, str | None, int]]:
    """``(path, status, link target, directory fd)`` of everything in the tree; the descriptor
    is the entry's parent, valid until the next item. Directories are opened by descriptor
    beneath the tree's root, never through a symlink (T-STAGE-BENEATH). A name or a link target
    that is not UTF-8 goes to ``foreign`` if given (not descended into), else is refused. A
    directory on another filesystem than its parent's goes to ``mounts`` if given; with
    ``enter`` given, it is left out unless ``enter`` holds it."""
    root = os.fstat(tree.fd)
    yield ".", root, None, tree.fd
    stack = [("", root.st_dev)]
    while stack:
        prefix, device = stack.pop()
        with _named(tree, prefix):
            directory = tree.directory(prefix or ".")
        with directory:
            with _named(tree, prefix), os.scandir(directory.fd) as listing:
                items = list(listing)
            for item in items:
                name = item.name
                if not _is_utf8(name):
                    if foreign is not None:
                        foreign.append(f"{prefix}/{name}" if prefix else name)
                        continue
                    raise UnsupportedFile(f"name {os.fsencode(name)!r} is not valid UTF-8", where=directory.where,
                                          hint="rename it: manifests carry UTF-8 paths only")
                relative = f"{prefix}/{name}" if prefix else name
                if relative in exclude:
                    continue
                info = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
                target = os.readlink(name, dir_fd=directory.fd) if stat.S_ISLNK(info.st_mode) else None
                if target is not None and not _is_utf8(target):
                    if foreign is not None:
                        foreign.append(relative)
                        continue
                    raise UnsupportedFile(f"{relative!r} is a symlink whose target {os.fsencode(target)!r} is not "
                                          "valid UTF-8", where=directory.where,
                                          hint="change the link: manifests carry UTF-8 link targets only")
                if stat.S_ISDIR(info.st_mode) and info.st_dev != device:  # a mount point
                    if mounts is not None:
                        mounts.append(relative)
                    if enter is not None and relative not in enter:
                        continue
                yield relative, info, target, directory.fd
                if stat.S_ISDIR(info.st_mode):
                    stack.append((relative, info.st_dev))


def scan_tree(root: Path | Beneath, *, with_hashes: bool = True, exclude: tuple[str, ...] = (),
              hard_linked: set[str] | None = None, known: KnownHashes | None = None,
              foreign: list[str] | None = None, mounts: list[str] | None = None,
              enter: Container[str] | None = None) -> list[Entry]:
    """Entries of the tree at ``root`` in listing order. Hard-linked files become one FILE entry
    (the first path in listing order) and HARDLINK entries pointing to it; ``hard_linked``, if
    given, receives the path of each FILE entry whose file has more than one link, wherever the
    others are (outside ``exclude`` or not). ``exclude`` names subtrees to leave out (other
    components nested inside this one). No symlink is followed: a :class:`Beneath` is scanned
    strictly beneath itself; a path (a vendor's release tree) may itself be reached through
    symlinks, nothing inside it is. A file whose hash ``known`` holds, and which has not changed
    since it was hashed, is not read again (agent/known_hashes.py). ``foreign``, if given, receives
    the paths of FIFOs, sockets, device nodes and names or link targets that are not UTF-8 instead
    of a refusal: in a clone of a running environment, where a program made one, they are for the
    apply to remove. ``mounts``, if given, receives the paths of directories where another
    filesystem is mounted (st_dev changes). Each is scanned like the rest, unless ``enter`` is
    given and does not hold it: then it is neither listed nor entered. A running system has
    filesystems mounted inside its environment (devices, temporary files, logs, a stick) that
    no clone of the environment holds.

    Raises UnsupportedFile, EscapingPath, OSError from the filesystem.
    """
    if not isinstance(root, Beneath):
        with Beneath.open_root(Path(root), follow_root=True) as tree:
            return scan_tree(tree, with_hashes=with_hashes, exclude=exclude, hard_linked=hard_linked, known=known,
                             foreign=foreign, mounts=mounts, enter=enter)
    found: list[list] = []  # [path, status, link target, SHA-256]
    hashing: deque[tuple[list, Future]] = deque()

    def take_hash() -> None:
        item, digest = hashing.popleft()
        with _named(root, item[0]):
            item[3] = digest.result()

    with ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="scan-hash") as pool:
        walk = _relative_paths(root, frozenset(exclude), foreign, mounts, enter)
        for relative, info, target, directory_fd in walk:
            found.append([relative, _Status.of(info), target, None])
            if stat.S_ISREG(info.st_mode) and with_hashes and info.st_size:
                if known is not None and (digest := known.lookup(relative, info)) is not None:
                    found[-1][3] = digest
                    continue
                with _named(root, relative):  # opened here: the directory's descriptor is valid only now
                    fd = os.open(relative.rsplit("/", 1)[-1], FILE_FLAGS, dir_fd=directory_fd)
                    if info.st_size <= INLINE_HASH_BYTES:
                        found[-1][3] = hash_and_close(fd)
                        continue
                hashing.append((found[-1], pool.submit(hash_and_close, fd)))
                if len(hashing) > HASHES_AHEAD:
                    take_hash()
        while hashing:
            take_hash()
    found.sort(key=lambda item: path_order(item[0]), reverse=True)
    first_link: dict[tuple[int, int], str] = {}
    entries = []
    while found:  # each item dropped as its entry is made: not both lists whole at once
        relative, info, target, digest = found.pop()
        mode = stat.S_IMODE(info.mode)
        common = dict(path=relative, uid=info.uid, gid=info.gid, mtime=info.mtime)
        if stat.S_ISDIR(info.mode):
            entries.append(Entry(type=DIR, mode=mode, **common))
        elif stat.S_ISLNK(info.mode):
            entries.append(Entry(type=SYMLINK, target=target, **common))
        elif stat.S_ISREG(info.mode):
            if info.links > 1 and info.inode in first_link:
                entries.append(Entry(path=relative, type=HARDLINK, target=first_link[info.inode]))
                continue
            if info.links > 1:
                first_link[info.inode] = relative
                if hard_linked is not None:
                    hard_linked.add(relative)
            if info.size == 0:
                digest = EMPTY_SHA256
            entries.append(Entry(type=FILE, mode=mode, size=info.size, sha256=digest, **common))
        elif foreign is not None:
            foreign.append(relative)
        else:
            kind = ("device node" if stat.S_ISCHR(info.mode) or stat.S_ISBLK(info.mode)
                    else "socket" if stat.S_ISSOCK(info.mode) else "FIFO")
            raise UnsupportedFile(f"{relative!r} is a {kind}; components carry only directories, files "
                                  "and links", where=root.where, hint="remove it from the release tree")
    return entries


def as_content(entries: list[Entry]) -> list[Entry]:
    """A content component's view of a tree: no ownership, so every entry is owned by 0:0."""
    return [entry if entry.uid is None else replace(entry, uid=0, gid=0) for entry in entries]
