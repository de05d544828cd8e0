"""Writing the payload as content-addressed volume files of bounded size.

Objects are appended in manifest order; the stream is cut into volumes of at most
``volume_size`` bytes (an object may span two volumes), each fsync'd and named by its SHA-256.
A block is one such object, listed before its members (bundler/blocks.py fills them).

An object is named by the SHA-256 of its stored bytes and listed once, with one encoding. The
same bytes can be the best encoding of two chunks under two encodings - a file that is itself
the zstd frame stored for another file is best stored raw - so ``add`` refuses to store known
bytes under another encoding, and the caller encodes that chunk another way
(bundler/make.py, ``_store``).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from agent.format import codec
from agent.format.manifest import MAX_VOLUME_BYTES, StoredObject, Volume
from keys.errors import Failed
from keys.files import write_all


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
                self._fd = os.open(self.directory / ".current", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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
        os.fsync(self._fd)
        os.close(self._fd)
        digest = self._hash.hexdigest()
        name = f"{digest}.vol"
        os.rename(self.directory / ".current", self.directory / name)
        self.volumes.append(Volume(name=name, size=self._filled, sha256=digest))
        self._fd, self._filled, self._hash = None, 0, hashlib.sha256()

    def close(self) -> None:
        if self._fd is not None:
            with self._named_errors():
                self._finish_volume()
