"""Paths strictly beneath a directory, never through a symlink (T-SYMLINK-READ, T-STAGE-BENEATH).

Sticks and base trees are read this way, and every write, delete, chmod and scan of a staged
environment goes through :class:`Beneath`: a signed platform may make any of its paths a symlink,
and nothing the agent does afterwards may follow it out of the new environment.

``O_NOFOLLOW`` alone protects only the last component; an intermediate symlink still escapes
(FIELD-NOTES, measured). So each operation first resolves the *parent* directory to a
descriptor, refusing every symlink on the way, then acts on the last name relative to that
descriptor with the ``*at`` call that does not follow it. On Linux the parent is resolved in
one call, ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS``; elsewhere (FreeBSD, a
kernel before 5.6, a seccomp filter that denies the call) by walking one component at a time
with ``O_NOFOLLOW`` relative to the previous directory's descriptor - the same rule with more
system calls. FreeBSD's ``O_RESOLVE_BENEATH`` is not used: it follows symlinks that stay
beneath, and this module refuses every symlink on the way. A directory swapped for a symlink
between two operations is refused by the next one, never followed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from keys.errors import Refused

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class EscapingPath(Refused):
    """A path beneath a root could only be reached through a symlink or is not what was expected."""


class NotRegularFile(EscapingPath):
    """The path names a FIFO, socket, device node or directory where a file was expected."""


# --- resolving a directory beneath another ---------------------------------------------------------

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (the unified syscall table)
_RESOLVE_NO_MAGICLINKS, _RESOLVE_NO_SYMLINKS, _RESOLVE_BENEATH = 0x02, 0x04, 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """``openat2`` through libc's ``syscall``; turned off for good once the kernel says it has none."""

    def __init__(self) -> None:
        self.usable = sys.platform.startswith("linux")
        self._libc = ctypes.CDLL(None, use_errno=True) if self.usable else None

    def open_directory(self, dir_fd: int, relative: str) -> int | None:
        """A descriptor of the directory, or None when openat2 cannot be used here.
        Raises OSError (ELOOP: a symlink on the way; EXDEV: it would leave ``dir_fd``)."""
        if not self.usable:
            return None
        how = _OpenHow(_DIR_FLAGS, 0, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        fd = self._libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_long(dir_fd),
                                ctypes.c_char_p(os.fsencode(relative)), ctypes.byref(how),
                                ctypes.c_size_t(ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EPERM, errno.E2BIG):  # no openat2 here: walk instead
            self.usable = False
            return None
        raise OSError(code, os.strerror(code), relative)


OPENAT2 = _Openat2()


def _parts(relative: str) -> list[str]:
    """The names of a relative path (``.`` is the directory itself). Callers pass paths that
    passed the manifest's path rules; anything else here is a programming error."""
    if relative in (".", ""):
        return []
    parts = relative.split("/")
    assert all(part not in ("", ".", "..") for part in parts) and not relative.startswith("/"), relative
    return parts


def _walk(dir_fd: int, parts: list[str], relative: str, where) -> int:
    """Open ``parts`` one at a time with O_NOFOLLOW. Raises EscapingPath naming the culprit."""
    directory = os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        for part in parts:
            try:
                next_directory = os.open(part, _DIR_FLAGS, dir_fd=directory)
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise EscapingPath(f"{relative!r}: {part!r} is not a plain directory", where=where) from None
                raise
            os.close(directory)
            directory = next_directory
        return directory
    except BaseException:
        os.close(directory)
        raise


def open_directory_at(dir_fd: int, relative: str, *, where=None) -> int:
    """Descriptor of the directory ``relative`` beneath ``dir_fd``, no symlink on the way.
    Raises EscapingPath, FileNotFoundError, OSError."""
    parts = _parts(relative)
    if not parts:  # a new open file description: a dup would share the directory's read position
        return os.open(".", _DIR_FLAGS, dir_fd=dir_fd)
    try:
        fd = OPENAT2.open_directory(dir_fd, relative)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            return _walk(dir_fd, parts, relative, where)  # only to name the culprit in the refusal
        raise
    return fd if fd is not None else _walk(dir_fd, parts, relative, where)


def _remove_at(dir_fd: int, name: str) -> bool:
    """Remove the file, link or whole directory tree ``name`` in ``dir_fd``, never following a
    symlink; whether there was one."""
    try:
        found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(found.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)  # walks by descriptor on Linux and FreeBSD
    else:
        os.unlink(name, dir_fd=dir_fd)
    return True


# --- one-shot opens (sticks, bundle folders) ---------------------------------------------------------


def open_beneath(root: Path, relative: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """File descriptor for ``root/relative``; no component may be a symlink, and unless creating
    or opening a directory the last must be a regular file. Raises EscapingPath (NotRegularFile),
    OSError."""
    with Beneath.open_root(root) as tree:
        return tree.open(relative, flags, mode)


# --- a tree every operation stays beneath --------------------------------------------------------------


class Beneath:
    """A directory, held open, and operations on the paths beneath it that never follow a symlink.

    Paths are component-relative (``a/b``; ``.`` is the directory itself) and have passed the
    manifest's path rules. Raises EscapingPath when a path leads through a symlink or a
    non-directory, and OSError from the filesystem.
    """

    def __init__(self, fd: int, where: Path | str):
        self.fd = fd
        self.where = where

    @classmethod
    def open_root(cls, root: Path, *, follow_root: bool = False) -> "Beneath":
        """``follow_root``: the root itself may be reached through symlinks (a stick's mount
        point, a vendor's release tree); an environment's own root may not."""
        flags = _DIR_FLAGS if not follow_root else _DIR_FLAGS & ~os.O_NOFOLLOW
        try:
            return cls(os.open(root, flags), root)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR) and not follow_root:
                raise EscapingPath(f"{root} is not a plain directory", where=root) from None
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Beneath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _where(self, relative: str) -> str:
        return str(self.where) if relative in (".", "") else f"{self.where}/{relative}"

    def directory(self, relative: str, *, create: bool = False, mode: int = 0o755) -> "Beneath":
        """The subtree at ``relative``; with ``create``, missing directories are made (``mode``)."""
        if create:
            built = []
            for part in _parts(relative):
                built.append(part)
                try:
                    self.mkdir("/".join(built), mode)
                except FileExistsError:
                    pass
        return Beneath(open_directory_at(self.fd, relative, where=self.where), self._where(relative))

    @contextmanager
    def parent(self, relative: str) -> Iterator[tuple[int, str]]:
        """``(descriptor of the parent directory, last name)`` of a path other than ``.``."""
        parts = _parts(relative)
        assert parts, "the tree's own directory has no parent here"
        fd = open_directory_at(self.fd, "/".join(parts[:-1]), where=self.where)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def lstat(self, relative: str) -> os.stat_result | None:
        """The path's own status (a symlink is not followed), or None if it does not exist."""
        if relative in (".", ""):
            return os.fstat(self.fd)
        try:
            with self.parent(relative) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def open(self, relative: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """Open a path; unless creating or opening a directory it must be a regular file, checked
        before opening: opening a device node runs its driver (a tape rewinds), a FIFO blocks."""
        if relative in (".", ""):
            return open_directory_at(self.fd, ".")
        with self.parent(relative) as (fd, name):
            if not flags & (os.O_CREAT | os.O_DIRECTORY):
                found = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                if stat.S_ISLNK(found):
                    raise EscapingPath(f"{relative!r} is a symlink", where=self.where)
                if not stat.S_ISREG(found):
                    raise NotRegularFile(f"{relative!r} is not a regular file", where=self.where)
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise EscapingPath(f"{relative!r} is a symlink", where=self.where) from None
                raise

    def create(self, relative: str, *, replacing: bool = False) -> int:
        """A new regular file, write-only, mode 0600 until its metadata is set. ``replacing``:
        whatever is at the path first is removed (see :meth:`remove`), in the same resolution."""
        if not replacing:
            return self.open(relative, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with self.parent(relative) as (fd, name):
            _remove_at(fd, name)
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)

    def mkdir(self, relative: str, mode: int = 0o700) -> None:
        with self.parent(relative) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def symlink(self, target: str, relative: str) -> None:
        with self.parent(relative) as (fd, name):
            os.symlink(target, name, dir_fd=fd)

    def readlink(self, relative: str) -> str:
        with self.parent(relative) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def link(self, existing: str, relative: str) -> None:
        """A hard link to ``existing`` (itself never followed if it is a symlink)."""
        with self.parent(existing) as (source_fd, source), self.parent(relative) as (fd, name):
            os.link(source, name, src_dir_fd=source_fd, dst_dir_fd=fd, follow_symlinks=False)

    def remove(self, relative: str) -> None:
        """Remove a file, link or whole directory tree; a symlink is removed, never followed.
        Raises FileNotFoundError when there is nothing to remove."""
        with self.parent(relative) as (fd, name):
            if not _remove_at(fd, name):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._where(relative))

    def set_metadata(self, relative: str, *, mode: int | None, owner: tuple[int, int] | None, mtime: int) -> None:
        """Owner (first: chown clears setuid bits), mode and modification time of a path.

        Files and directories are changed through a descriptor opened without following; a
        symlink has no mode of its own (Linux cannot change it), only its owner and time."""
        found = self.lstat(relative)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self._where(relative))
        times = (mtime * 10**9, mtime * 10**9)
        if stat.S_ISLNK(found.st_mode):
            with self.parent(relative) as (fd, name):
                if owner is not None:
                    os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)
                os.utime(name, ns=times, dir_fd=fd, follow_symlinks=False)
            return
        flags = os.O_RDONLY | (os.O_DIRECTORY if stat.S_ISDIR(found.st_mode) else os.O_NONBLOCK)
        fd = self.open(relative, flags)
        try:
            self.set_metadata_fd(fd, mode=mode, owner=owner, mtime=mtime)
        finally:
            os.close(fd)

    def set_mtime(self, relative: str, mtime: int) -> None:
        """Only the modification time of a path (of a symlink itself, never followed): one call
        where :meth:`set_metadata` makes six. A platform update gives thousands of unchanged
        files a new time (their packages were rebuilt)."""
        with self.parent(relative) as (fd, name):
            os.utime(name, ns=(mtime * 10**9, mtime * 10**9), dir_fd=fd, follow_symlinks=False)

    @staticmethod
    def set_metadata_fd(fd: int, *, mode: int | None, owner: tuple[int, int] | None, mtime: int) -> None:
        if owner is not None:
            os.fchown(fd, *owner)
        if mode is not None:
            os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime * 10**9, mtime * 10**9))
