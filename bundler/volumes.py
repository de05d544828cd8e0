"""Writing the payload as content-addressed volume files of bounded size.

Objects are appended in manifest order; the stream is cut into volumes of at most
``volume_size`` bytes (an object may span two volumes), each fsync'd and named by its SHA-256.
A block is one such object, listed before its members (bundler/blocks.py fills them).

An object is named by the SHA-256 of its stored bytes and listed once, with one encoding. The
same bytes can be the best encoding of two chunks under two encodings - a file that is itself
the zstd frame stored for another file is best stored raw - so ``add`` refuses to store known
bytes under another encoding, and the caller encodes that chunk another way
(bundler/make.py, ``_store``).

A volume is named by its SHA-256 too, and a name may be listed once. Distinct objects can still
make two volumes of the same bytes (an incompressible file stored raw whose first volume-size
bytes open another file as well), so a volume that repeats an earlier one is cut shorter, its
tail carried into the next: the payload is the same, only its cuts move.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from agent.format import codec
from agent.format.manifest import MAX_VOLUME_BYTES, MAX_VOLUMES, StoredObject, Volume
from keys.errors import Failed, Refused
from keys.files import write_all

READ_BACK_BYTES = 1 << 20


class TooManyVolumes(Refused):
    """The payload does not fit the volumes a manifest may list at the size asked for."""


class VolumeWriter:
    def __init__(self, directory: Path, volume_size: int):
        if not 0 < volume_size <= MAX_VOLUME_BYTES:
            raise ValueError(f"volume size {volume_size} is outside 1..{MAX_VOLUME_BYTES}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.volume_size = volume_size
        self.volumes: list[Volume] = []
        self.objects: list[StoredObject] = []
        self._ids: dict[str, str] = {}  # the encoding of every object claimed, by id
        self._offset = 0
        self._fd: int | None = None
        self._filled = 0
        self._hash = hashlib.sha256()
        self._names: set[str] = set()

    def claim(self, object_id: str, encoding: str) -> bool | None:
        """Claims ``object_id`` for bytes stored under ``encoding``: True if it is new (the caller
        stores it), False if it is already stored so, None if it is stored under another encoding."""
        if object_id in self._ids:
            return False if self._ids[object_id] == encoding else None
        self._ids[object_id] = encoding
        return True

    def add(self, data: bytes, encoding: str) -> str | None:
        """Store ``data`` once (content-addressed) and return its object id; None, storing
        nothing, when the same bytes are already stored under another encoding."""
        object_id = hashlib.sha256(data).hexdigest()
        claimed = self.claim(object_id, encoding)
        if claimed is None:
            return None
        if claimed:
            self.objects.append(StoredObject(id=object_id, offset=self._offset, size=len(data), encoding=encoding))
            self._offset += len(data)
            with self._named_errors():
                self._append(memoryview(data))
        return object_id

    def add_block(self, stored: bytes, members: list[tuple[str, int, str]]) -> str:
        """Store a block (``stored``: its frame) and list its ``members`` (id, size, encoding; each
        claimed) after it, at their offsets in its content. Returns the block's id."""
        block_id = hashlib.sha256(stored).hexdigest()
        if block_id in self._ids or self.add(stored, codec.BLOCK.name) is None:
            raise Failed("a block's frame is the same bytes as a file of the release",
                         hint="report this release to the bundler's maintainers")
        offset = 0
        for object_id, size, encoding in members:
            self.objects.append(StoredObject(id=object_id, offset=offset, size=size, encoding=encoding, block=block_id))
            offset += size
        return block_id

    def _append(self, view: memoryview) -> None:
        while view:
            if self._fd is None:
                if len(self.volumes) == MAX_VOLUMES:  # refused now, not once everything is encoded
                    raise TooManyVolumes(f"the payload needs more than {MAX_VOLUMES} volumes of at most "
                                         f"{self.volume_size} bytes (MAX_VOLUMES, docs/FORMAT.md \"Limits\")",
                                         hint="choose a larger --volume-size")
                self._fd = os.open(self.directory / ".current", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            room = self.volume_size - self._filled
            piece = view[:room]
            write_all(self._fd, piece)
            self._hash.update(piece)
            self._filled += len(piece)
            view = view[len(piece):]
            if self._filled == self.volume_size:
                self._finish_volume()

    @contextmanager
    def _named_errors(self):
        """A write to a descriptor fails without a file name (a full disk): give it the file's."""
        try:
            yield
        except OSError as error:
            if error.filename is not None:
                raise
            raise OSError(error.errno, error.strerror, str(self.directory / ".current")) from error

    def _finish_volume(self) -> None:
        size, digest = self._filled, self._hash.hexdigest()
        while f"{digest}.vol" in self._names:  # rare: distinct objects that line up into equal volumes
            size -= 1
            if size == 0:
                raise Failed(f"the payload cannot be cut into volumes of at most {self.volume_size} bytes that "
                             "all differ", hint="choose a larger --volume-size")
            digest = self._prefix_digest(size)
        carried = os.pread(self._fd, self._filled - size, size)
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)
        os.close(self._fd)
        name = f"{digest}.vol"
        os.rename(self.directory / ".current", self.directory / name)
        self._names.add(name)
        self.volumes.append(Volume(name=name, size=size, sha256=digest))
        self._fd, self._filled, self._hash = None, 0, hashlib.sha256()
        self._append(memoryview(carried))

    def _prefix_digest(self, size: int) -> str:
        """SHA-256 of the current volume's first ``size`` bytes, read back from its file."""
        digest = hashlib.sha256()
        for offset in range(0, size, READ_BACK_BYTES):
            digest.update(os.pread(self._fd, min(READ_BACK_BYTES, size - offset), offset))
        return digest.hexdigest()

    def close(self) -> None:
        with self._named_errors():
            while self._fd is not None:  # a last volume cut short leaves its tail in another
                self._finish_volume()
