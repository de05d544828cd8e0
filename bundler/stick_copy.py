"""Copying one file to the stick so that it is either whole or visibly absent, and reading it back.

temp name -> write -> fsync -> drop from the page cache -> rename; the caller fsyncs the folder.
The read-back opens each file afresh and drops its cached pages first, so what is compared
comes from the stick, not from memory.

``keys.files.write_atomic`` is not used on the stick: it sets the mode with fchmod, which FAT
cannot store and may refuse; nothing here sets owners or modes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from agent.format import stick
from agent.format.manifest import Manifest
from agent.payload import CorruptPayload, Payload
from agent.progress import Progress, step_counter
from keys.errors import Failed
from keys.files import fsync_directory, write_all

COPY_BLOCK = 1 << 20


class ReadBackMismatch(Failed):
    """What the stick returns differs from what was written (or, for a kept copy, from the bundle)."""


@dataclass(frozen=True)
class StickFile:
    """One file to put on the stick: small files carry their bytes, volumes their source path."""

    name: str  # relative to its folder on the stick
    size: int
    sha256: str
    data: bytes | None = None
    source: Path | None = None

    @classmethod
    def of_bytes(cls, name: str, data: bytes, source: Path | None = None) -> "StickFile":
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), data=data, source=source)


# --- writing ---------------------------------------------------------------------------------


def make_dirs(path: Path) -> None:
    """Create missing folders (no mode is set: FAT has none) and make each new entry durable."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except OSError as error:
            raise Failed(f"cannot create the folder: {error.strerror}", where=directory) from None
        fsync_directory(directory.parent)


def remove_bundle_folder(folder: Path) -> None:
    """Remove a bundle folder, its marker first: a half-removed folder must never look complete."""
    try:
        os.unlink(folder / stick.COMPLETE)
        fsync_directory(folder)
    except (FileNotFoundError, IsADirectoryError):
        pass
    try:
        shutil.rmtree(folder)  # fd-based on Linux: does not follow symlinks inside
    except OSError as error:
        raise Failed(f"cannot remove the incomplete copy: {error.strerror}", where=folder) from None
    fsync_directory(folder.parent)


def _blocks(file: StickFile) -> Iterator[bytes]:
    if file.data is not None:
        view = memoryview(file.data)
        for start in range(0, len(view), COPY_BLOCK):
            yield view[start:start + COPY_BLOCK]
        return
    try:
        fd = os.open(file.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise Failed(f"cannot open: {error.strerror}", where=file.source) from None
    try:
        while block := os.read(fd, COPY_BLOCK):
            yield block
    finally:
        os.close(fd)


def put(target: Path, file: StickFile, advance: Callable[[int], None]) -> None:
    """temp name -> write -> fsync -> drop from the page cache -> rename. The caller fsyncs the folder.

    The bytes are hashed as they are copied: a source that changed since it was checked is caught
    here, before it can be marked complete. Raises Failed.
    """
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise Failed(f"cannot write: {error.strerror}", where=target) from None
    digest, size = hashlib.sha256(), 0
    try:
        for block in _blocks(file):
            digest.update(block)
            size += len(block)
            write_all(fd, block)
            advance(len(block))
        if size != file.size or digest.hexdigest() != file.sha256:
            raise Failed("changed while being copied to the stick", where=file.source,
                         hint="leave the bundle alone while it is written, then write again")
        os.fsync(fd)
        # Written pages are clean after fsync; dropping them makes the read-back come from the stick.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as error:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise Failed(f"cannot write: {error.strerror}", where=target,
                     hint="the stick may be full, read-only or removed") from None
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(temp, target)
    except OSError as error:
        raise Failed(f"cannot rename into place: {error.strerror}", where=target) from None


# --- reading back ----------------------------------------------------------------------------


def _open_evicted(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ReadBackMismatch("is missing on the stick", where=path,
                               hint="the stick may have been removed; write again") from None
    except OSError as error:
        raise ReadBackMismatch(f"cannot be opened on the stick: {error.strerror}", where=path) from None
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def read_back(path: Path, expected: StickFile) -> None:
    """Read ``path`` from the stick and compare its size and SHA-256. Raises ReadBackMismatch."""
    fd = _open_evicted(path)
    try:
        info = os.fstat(fd)
        digest = hashlib.sha256()
        if stat.S_ISREG(info.st_mode) and info.st_size == expected.size:
            while block := os.read(fd, COPY_BLOCK):
                digest.update(block)
    except OSError as error:
        raise ReadBackMismatch(f"cannot be read back: {error.strerror}", where=path) from None
    finally:
        os.close(fd)
    if digest.hexdigest() != expected.sha256:
        raise ReadBackMismatch("reads back different from what was written", where=path,
                               hint="the stick may be failing: write again, or use another stick")


def verify_copy(folder: Path, manifest: Manifest, files: list[StickFile], progress: Progress, step: str) -> None:
    """Every byte of a bundle's copy in ``folder`` on the stick: small files by hash, the payload
    object by object and volume by volume with the device's own reader. Raises ReadBackMismatch."""
    for file in files:
        if file.data is not None:
            read_back(folder / file.name, file)
    volumes = [f for f in files if f.data is None]
    if not volumes:
        return
    for volume in volumes:
        os.close(_open_evicted(folder / volume.name))
    try:
        with Payload(folder, manifest) as payload:
            payload.verify_all(step_counter(progress, step, manifest.payload_size))
    except CorruptPayload as error:
        for volume in volumes:  # name the file that differs, not only the object
            read_back(folder / volume.name, volume)
        raise ReadBackMismatch(f"the payload reads back different from what was written: {error.message}",
                               where=folder, hint="the stick may be failing: write again, or use another stick")
