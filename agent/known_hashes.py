"""SHA-256 of files staging has already read or written, reused by the check of the staged tree.

The check of a staged environment (agent/apply.py verify_staged) compares every file with the
manifest, and hashing them all again was a quarter of an install: a platform update writes
1,600 files and keeps 7,600 from the clone. So the files apply writes are hashed as they are
written, the kept ones are hashed on other threads while apply writes, and the check hashes
again only what it cannot reuse.

A hash is reused only while the path still names the same inode (device and inode number) with
the same size and the same ctime as when the bytes were read. The kernel sets ctime to the
current time on every change of a file's content, size or links, and no call sets it back
(utimensat sets only atime and mtime); so a file written, truncated, replaced or re-linked since
is hashed again (T-STAGE-CHANGED).
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby

from agent.beneath import Beneath
from agent.scan import FILE_FLAGS, HASH_THREADS, hash_and_close
from keys.errors import UpdateError

Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_ctime_ns


def _identity(status: os.stat_result) -> Identity:
    return status.st_dev, status.st_ino, status.st_size, status.st_ctime_ns


class KnownHashes:
    """Path -> SHA-256 of the file as it was when hashed. Use as a context manager: leaving it
    stops the background hashing (pending files are dropped, running ones finish)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Identity, str]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._trees: list[Beneath] = []  # our own descriptors: the caller may close its own first

    def __enter__(self) -> "KnownHashes":
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._close_trees()

    def _close_trees(self) -> None:
        for tree in self._trees:
            tree.close()
        self._trees.clear()

    def record(self, path: str, status: os.stat_result | None, sha256: str) -> None:
        """``path``, whose status is ``status``, holds bytes whose SHA-256 is ``sha256``."""
        if status is not None and stat.S_ISREG(status.st_mode):
            self._known[path] = (_identity(status), sha256)

    def lookup(self, path: str, status: os.stat_result) -> str | None:
        """The SHA-256 of ``path`` if it was hashed and its file has not changed since."""
        known = self._known.get(path)
        return known[1] if known is not None and known[0] == _identity(status) else None

    def hash_in_background(self, tree: Beneath, paths: list[str]) -> None:
        """Start hashing the files at ``paths`` (in path order) beneath ``tree``; :meth:`wait`
        waits for them. A path that cannot be hashed is left for the check to hash (and report)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="known-hashes")
        tree = Beneath(os.dup(tree.fd), tree.where)
        self._trees.append(tree)
        for parent, names in groupby(paths, key=lambda path: path.rpartition("/")[0]):
            self._pending.append(self._pool.submit(self._hash_directory, tree, parent, [
                path.rpartition("/")[2] for path in names]))

    def wait(self) -> None:
        for pending in self._pending:
            pending.result()
        self._pending.clear()
        self._close_trees()

    def _hash_directory(self, tree: Beneath, parent: str, names: list[str]) -> None:
        try:
            directory = tree.directory(parent or ".")
        except (OSError, UpdateError):
            return
        with directory:
            for name in names:
                try:  # opened only if a regular file: opening a device node runs its driver
                    if not stat.S_ISREG(os.stat(name, dir_fd=directory.fd, follow_symlinks=False).st_mode):
                        continue
                    fd = os.open(name, FILE_FLAGS, dir_fd=directory.fd)
                except OSError:
                    continue
                try:
                    status = os.fstat(fd)  # before reading: a change while it is read moves ctime past it
                except OSError:
                    os.close(fd)
                    continue
                try:
                    digest = hash_and_close(fd)
                except OSError:
                    continue
                self.record(f"{parent}/{name}" if parent else name, status, digest)
