"""Durable file writes and size-capped reads, used by every layer.

A write is only durable after temp file -> fsync -> rename -> fsync of the directory: without
the fsyncs an emulated power cut left 0-byte files on ext4, xfs and btrfs (FIELD-NOTES,
"Writing files safely").
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
from pathlib import Path

from keys.crashpoint import crashpoint
from keys.errors import AlreadyExists, Failed, Refused

_TEMPORARY = re.compile(r"\.[^/]+\.tmp-([0-9]+)")


def read_capped(path: Path, limit: int, *, what: str, digest=None) -> bytes:
    """Read a regular file of at most ``limit`` bytes without following a final symlink.

    Raises Failed when the file cannot be read, Refused when it is not a regular file or
    is larger than ``limit`` (an oversized trust document is hostile, not merely big).
    ``digest`` (a hashlib object), when given, is fed every byte as it is read.
    """
    try:
        # Never open a device node (its driver would run) or a socket; a FIFO swapped in after
        # this check cannot hang the non-blocking open, and fstat below checks again.
        found = os.lstat(path).st_mode
        if not (stat.S_ISREG(found) or stat.S_ISLNK(found)):
            raise Refused(f"{what} is not a regular file", where=path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Failed(f"{what} not found", where=path, hint="check the path") from None
    except OSError as error:
        raise Failed(f"cannot open {what}: {error.strerror}", where=path) from None
    return read_capped_fd(fd, limit, what=what, where=path, digest=digest)


_READ_BLOCK = 1 << 20


def read_capped_fd(fd: int, limit: int, *, what: str, where: object, digest=None) -> bytes:
    """Read the open file ``fd`` (closed on return) like :func:`read_capped`, for callers that
    opened it themselves (agent/beneath.py). Raises Refused, Failed."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{what} is not a regular file", where=where)
        if info.st_size > limit:  # refused on its size alone: not a byte of it is read
            raise Refused(f"{what} is larger than the {limit}-byte limit", where=where)
        chunks, total = [], 0
        while chunk := os.read(fd, min(_READ_BLOCK, limit + 1 - total)):
            total += len(chunk)
            if total > limit:  # it grew since the fstat
                raise Refused(f"{what} is larger than the {limit}-byte limit", where=where)
            if digest is not None:
                digest.update(chunk)
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise Failed(f"cannot read {what}: {error.strerror}", where=where) from None
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``: os.write may write less than it is given (a pipe,
    a signal, a full disk's last block). Raises OSError."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def fsync_directory(directory: Path) -> None:
    crashpoint(f"fsync-dir {Path(directory).name}")
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write back everything pending on the filesystem holding ``path`` and wait until it is on
    the disk: a tree staged file by file is durable before anything points a boot at it.
    syncfs(2) where the C library has it (Linux), sync(2) elsewhere. Raises OSError."""
    crashpoint(f"sync {Path(path).name}")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _syncfs is None or _syncfs(fd) != 0:
            if _syncfs is not None:
                error = ctypes.get_errno()
                raise OSError(error, os.strerror(error), str(path))
            os.sync()
    finally:
        os.close(fd)


def _libc_syncfs():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_syncfs = _libc_syncfs()


_CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What FAT and exFAT (a key ceremony's USB stick) answer to chmod and link(2): they have neither
# Unix modes nor hard links.
_UNSUPPORTED = {errno.EPERM, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}


def _set_mode(fd: int, mode: int) -> None:
    """The umask must not widen or narrow what we asked for; a filesystem without Unix modes
    (FAT: its mount options decide) has nothing to set."""
    try:
        os.fchmod(fd, mode)
    except OSError as error:
        if error.errno not in _UNSUPPORTED:
            raise


def _write_new(path: Path, data: bytes, mode: int, what: str) -> None:
    """Create ``path`` (never an existing file: O_EXCL) with ``data``, durably. Raises OSError,
    FileExistsError; on any error the file is removed."""
    fd = os.open(path, _CREATE_NEW, mode)
    try:
        _set_mode(fd, mode)
        crashpoint(f"write {what}")
        write_all(fd, data)
        crashpoint(f"fsync {what}")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int) -> Path:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # named for remove_stale_temporaries
    try:
        _write_new(temp, data, mode, path.name)
    except FileExistsError:
        # Left by a writer that died with this process id, or put there by someone who could
        # then read what we write into it (a secret key): never written into, removed first.
        temp.unlink()
        _write_new(temp, data, mode, path.name)
    return temp


def remove_stale_temporaries(directory: Path) -> None:
    """Remove the temporary files (``.NAME.tmp-PID``) in ``directory`` whose writer is gone -
    killed between creating and renaming them. A live writer's are left alone."""
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return
    for entry in entries:
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            Path(entry.path).unlink(missing_ok=True)
        except OSError:
            pass  # alive, owned by another user


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file."""
    path = Path(path)
    try:
        remove_stale_temporaries(path.parent)
        temp = _write_temp(path, data, mode)
        crashpoint(f"rename {path.name}")
        os.replace(temp, path)
        fsync_directory(path.parent)
    except OSError as error:
        raise Failed(f"cannot write: {error.strerror}", where=path) from None


def create_exclusive(path: Path, data: bytes, *, mode: int) -> None:
    """Create ``path`` with ``data``; never overwrite. The file appears complete or not at all.

    Raises AlreadyExists if ``path`` exists (link(2) refuses to replace), Failed on I/O errors.
    """
    path = Path(path)
    try:
        temp = _write_temp(path, data, mode)
    except OSError as error:
        raise Failed(f"cannot write: {error.strerror}", where=path) from None
    try:
        try:
            os.link(temp, path)
        except OSError as error:
            if error.errno not in _UNSUPPORTED or isinstance(error, FileExistsError):
                raise
            # No hard links (FAT, exFAT): written in place, still never over an existing file;
            # a crash may leave it partial, which reading it then reports as damaged.
            _write_new(path, data, mode, path.name)
    except FileExistsError:
        raise AlreadyExists(
            "already exists; it is never overwritten", where=path,
            hint="choose another name or directory, or move the old file away first",
        ) from None
    except OSError as error:
        raise Failed(f"cannot create: {error.strerror}", where=path) from None
    finally:
        temp.unlink(missing_ok=True)
    fsync_directory(path.parent)
