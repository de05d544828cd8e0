"""Writing the payload as content-addressed volume files of bounded size.

Objects are appended in manifest order; the stream is cut into volumes of at most
``volume_size`` bytes (an object may span two volumes), each fsync'd and named by its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from agent.format.manifest import MAX_VOLUME_BYTES, StoredObject, Volume
from keys.files import write_all


class VolumeWriter:
    def __init__(self, directory: Path, volume_size: int):
        assert 0 < volume_size <= MAX_VOLUME_BYTES
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.volume_size = volume_size
        self.volumes: list[Volume] = []
        self.objects: list[StoredObject] = []
        self._ids: dict[str, str] = {}
        self._offset = 0
        self._fd: int | None = None
        self._filled = 0
        self._hash = hashlib.sha256()

    def add(self, data: bytes, encoding: str) -> str:
        """Store ``data`` once (content-addressed) and return its object id."""
        object_id = hashlib.sha256(data).hexdigest()
        if object_id in self._ids:
            assert self._ids[object_id] == encoding, "identical bytes stored under two encodings"
            return object_id
        self._ids[object_id] = encoding
        self.objects.append(StoredObject(id=object_id, offset=self._offset, size=len(data), encoding=encoding))
        self._offset += len(data)
        view = memoryview(data)
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
        return object_id

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
            self._finish_volume()
