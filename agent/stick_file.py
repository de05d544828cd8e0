"""Putting one small file on a stick from the device: whole under its final name, or not there.

temp name -> write -> fsync -> drop from the page cache -> read back and compare -> rename ->
fsync the folder. The read-back comes before the rename, so a stick that does not return what was
written never shows a file under the final name (bundler/stick_copy.py does the same for bundles,
reading back after). Every step is reached through a folder descriptor opened without following
symlinks (agent/beneath.py): a stick is anyone's, and its folders may be symlinks (T-SYMLINK-READ).

No mode, owner or chmod: FAT stores none (docs/STICK.md, "FAT32"), which is why this is not
keys/files.py's write_atomic. A temporary left by a pulled stick or a killed agent
(``.NAME.tmp-PID``) is ignored by every reader, and replaced by the next write of that name.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from agent.beneath import Beneath
from keys.crashpoint import crashpoint
from keys.errors import Failed
from keys.files import write_all


class StickReadOnly(Failed):
    """The stick is mounted read-only: nothing can be left on it."""


class StickReadBackFailed(Failed):
    """What the stick returned is not what was written."""


def read_only_hint(mount: Path) -> str:
    return f"mount the stick read-write (for example: mount -o remount,rw {mount}) and try again"


def check_writable(mount: Path) -> None:
    """Raises StickReadOnly when the filesystem at ``mount`` is mounted read-only, before anything
    is spent on a write that cannot happen. Raises Failed when it cannot be examined."""
    try:
        read_only = os.statvfs(mount).f_flag & os.ST_RDONLY
    except OSError as error:
        raise Failed(f"cannot examine the stick: {error.strerror}", where=mount,
                     hint="check that the stick is mounted there") from None
    if read_only:
        raise StickReadOnly("the stick is mounted read-only: a report can only be written to a writable stick",
                            where=mount, hint=read_only_hint(mount))


def stick_failure(error: OSError, where: str, doing: str) -> Failed:
    if error.errno == errno.EROFS:
        return StickReadOnly(f"cannot {doing}: the stick is mounted read-only", where=where,
                             hint="mount the stick read-write and try again")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return Failed(f"cannot {doing}: the stick is full", where=where, hint="free space on the stick")
    return Failed(f"cannot {doing}: {error.strerror}", where=where,
                  hint="the stick may have been removed, or it is failing: try another stick")


def put_verified(folder: Beneath, name: str, data: bytes) -> None:
    """Write ``data`` as ``folder/name``, read it back from the stick, then rename it into place.
    Raises StickReadOnly, StickReadBackFailed (nothing under ``name``), Failed."""
    temp = f".{name}.tmp-{os.getpid()}"
    where = f"{folder.where}/{name}"
    try:
        crashpoint(f"stick write {name}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                     dir_fd=folder.fd)
        try:
            write_all(fd, data)
            crashpoint(f"stick fsync {name}")
            os.fsync(fd)
            # Clean after the fsync: dropping the pages makes the read-back ask the stick.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if _read_back(folder, temp, len(data)) != data:
            _forget(folder, temp)
            raise StickReadBackFailed("the stick returned other bytes than were written; nothing was left on it",
                                      where=where, hint="the stick is failing: use another stick")
        crashpoint(f"stick rename {name}")
        os.replace(temp, name, src_dir_fd=folder.fd, dst_dir_fd=folder.fd)
        crashpoint(f"stick fsync-dir {name}")
        os.fsync(folder.fd)
    except OSError as error:
        _forget(folder, temp)
        raise stick_failure(error, where, f"write {name}") from None


def _read_back(folder: Beneath, name: str, size: int) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder.fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b""
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks, total = [], 0
        while total <= size and (chunk := os.read(fd, size + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _forget(folder: Beneath, name: str) -> None:
    try:
        os.unlink(name, dir_fd=folder.fd)
    except OSError:
        pass  # gone already, or the stick is gone: a temporary name is ignored by every reader
