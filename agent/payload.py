"""Reading stored objects from a bundle's volumes: hashed as read, used only after the hash holds.

The volumes may sit on a stick that can be swapped or rewritten at any moment, so nothing read
from them is used before its SHA-256 matches the signed manifest (T-CONTENT), and the files are
opened without following symlinks and must be regular files of exactly the signed size.
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import os
import stat
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from agent.beneath import NotRegularFile, open_beneath
from agent.format.bundle_dir import PAYLOAD, volume_path
from agent.format import codec
from agent.format.manifest import Manifest, StoredObject, block_sizes
from keys.errors import Failed, Refused
from keys.files import write_all


# Volumes kept open at once. Objects are read mostly in payload order, so a few suffice; a bundle
# may have up to 10,000 volumes, far beyond a process's usual limit of 1,024 descriptors.
MAX_OPEN_VOLUMES = 8


class CorruptPayload(Refused):
    """A volume or stored object does not match the signed manifest."""


class Payload:
    """Random access to the payload (all volumes end to end) of one bundle."""

    def __init__(self, bundle: Path, manifest: Manifest):
        self.bundle = Path(bundle)
        self.manifest = manifest
        self.objects = manifest.object_index()  # once: a file's chunks look their objects up here
        self._block_sizes = block_sizes(manifest.objects)
        self._block: tuple[str, bytes] | None = None  # the last block decoded: its members are read in turn
        self._starts: list[int] = []
        position = 0
        for volume in manifest.volumes:
            self._starts.append(position)
            position += volume.size
        self._fds: OrderedDict[int, int] = OrderedDict()  # least recently used first

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "Payload":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _volume_fd(self, index: int) -> int:
        if index in self._fds:
            self._fds.move_to_end(index)
        else:
            if len(self._fds) >= MAX_OPEN_VOLUMES:
                os.close(self._fds.popitem(last=False)[1])
            volume = self.manifest.volumes[index]
            try:
                # No symlink anywhere on the way (T-SYMLINK-READ), and a FIFO must not block us.
                fd = open_beneath(self.bundle, f"{PAYLOAD}/{volume.name}", os.O_RDONLY | os.O_NONBLOCK)
            except FileNotFoundError:
                raise CorruptPayload(f"volume {volume.name} is missing", where=self.bundle,
                                     hint="copy the complete bundle again") from None
            except NotRegularFile:
                raise CorruptPayload(f"volume {volume.name} is not a regular file", where=self.bundle) from None
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EPERM):  # this user's rights, not the bundle: as any OSError
                    raise OSError(error.errno, error.strerror, str(self.bundle / PAYLOAD / volume.name)) from None
                if error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO):  # this machine, not the bundle
                    raise Failed(f"cannot open volume {volume.name}: {error.strerror}", where=self.bundle) from None
                raise CorruptPayload(f"cannot open volume {volume.name}: {error.strerror}",
                                     where=self.bundle) from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise CorruptPayload(f"volume {volume.name} is not a regular file", where=self.bundle)
            if info.st_size != volume.size:
                os.close(fd)
                raise CorruptPayload(f"volume {volume.name} has {info.st_size} bytes, the manifest says "
                                     f"{volume.size}", where=self.bundle, hint="copy the complete bundle again")
            self._fds[index] = fd
        return self._fds[index]

    def read_range(self, offset: int, size: int, sink: Callable[[int, bytes], None] | None = None) -> bytes:
        """Bytes ``[offset, offset + size)`` of the payload, across volume boundaries.

        ``sink(volume_index, piece)`` sees every piece as read (for hashing volumes).
        """
        pieces = []
        index = bisect.bisect_right(self._starts, offset) - 1
        while size > 0:
            if index >= len(self.manifest.volumes):
                raise CorruptPayload("object reaches past the last volume", where=self.bundle)
            start = self._starts[index]
            within = offset - start
            length = min(size, self.manifest.volumes[index].size - within)
            fd = self._volume_fd(index)  # its own errors: missing, not a file, no rights
            try:
                piece = os.pread(fd, length, within)
            except OSError as error:
                raise Failed(f"cannot read volume: {error.strerror}", where=self.bundle,
                             hint="the medium may have been removed") from None
            if len(piece) != length:
                raise CorruptPayload(f"volume {self.manifest.volumes[index].name} is shorter than signed",
                                     where=self.bundle)
            if sink is not None:
                sink(index, piece)
            pieces.append(piece)
            offset += length
            size -= length
            index += 1
        return b"".join(pieces)

    def _object_mismatch(self, stored: StoredObject) -> CorruptPayload:
        first = bisect.bisect_right(self._starts, stored.offset) - 1
        last = bisect.bisect_right(self._starts, stored.offset + stored.size - 1) - 1
        names = ", ".join(v.name for v in self.manifest.volumes[first:last + 1])
        return CorruptPayload(f"object {stored.id[:16]} (in volume {names}) does not match its hash",
                              where=self.bundle,
                              hint="the bundle is damaged or was altered; copy it again")

    def read_object(self, stored: StoredObject, decoding: Callable[[int], None] | None = None) -> bytes:
        """The object's bytes, after checking their SHA-256. Raises CorruptPayload.

        ``decoding(size)`` hears of a block about to be decoded for a member (a work budget): a
        listing that takes turns between blocks makes the device decode each again."""
        if stored.block is not None:
            return self._read_member(stored, decoding)
        data = self.read_range(stored.offset, stored.size)
        if hashlib.sha256(data).hexdigest() != stored.id:
            raise self._object_mismatch(stored)
        return data

    def _read_member(self, stored: StoredObject, decoding: Callable[[int], None] | None) -> bytes:
        """A member's bytes, from its block decoded once for all the members read in turn (the
        bundler fills blocks in the order files are staged)."""
        if self._block is None or self._block[0] != stored.block:
            self._block = None  # one decoded block in memory at a time
            block = self.objects[stored.block]
            if decoding is not None:
                decoding(self._block_sizes[block.id])
            try:
                content = codec.decode(block.encoding, self.read_object(block), self._block_sizes[block.id])
            except codec.CorruptObject as error:
                raise CorruptPayload(f"block {block.id[:16]} does not decode: {error.message}", where=self.bundle,
                                     hint="the bundle is not what the vendor's tools make; report it to the "
                                          "vendor") from None
            self._block = (block.id, content)
        data = self._block[1][stored.offset:stored.offset + stored.size]
        if hashlib.sha256(data).hexdigest() != stored.id:
            raise CorruptPayload(f"object {stored.id[:16]} (in block {stored.block[:16]}) does not match its hash",
                                 where=self.bundle, hint="the bundle is not what the vendor's tools make; report it "
                                                         "to the vendor")
        return data

    def verify_all(self, progress: Callable[[int], None] | None = None, copy_to: Path | None = None) -> None:
        """Read every byte once: each object's hash and each volume's hash. Raises CorruptPayload.

        With ``copy_to`` (a bundle directory on local disk) the bytes are also written there as
        they are read, so what is applied later is exactly what was verified and the medium is
        never read twice (T-TOCTOU: a stick rewritten between the check and the use).
        """
        volume_hashes = [hashlib.sha256() for _ in self.manifest.volumes]
        copy_index, copy_fd = -1, -1  # the volume whose copy is being written: one at a time

        def finish_copy() -> None:
            nonlocal copy_index, copy_fd
            if copy_fd >= 0:
                fd, copy_index, copy_fd = copy_fd, -1, -1
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        def sink(index: int, piece: bytes) -> None:
            nonlocal copy_index, copy_fd
            volume_hashes[index].update(piece)
            if copy_to is None:
                return
            if index != copy_index:  # objects are contiguous in payload order (manifest.py)
                finish_copy()
                path = volume_path(copy_to, self.manifest.volumes[index].name)
                path.parent.mkdir(parents=True, exist_ok=True)
                copy_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                copy_index = index
            write_all(copy_fd, piece)

        try:
            for stored in self.manifest.objects:
                if stored.block is not None:  # in its block's bytes, read there
                    continue
                data = self.read_range(stored.offset, stored.size, sink)
                if hashlib.sha256(data).hexdigest() != stored.id:
                    raise self._object_mismatch(stored)
                if progress:
                    progress(stored.size)
        finally:
            finish_copy()
        for volume, digest in zip(self.manifest.volumes, volume_hashes):
            if digest.hexdigest() != volume.sha256:
                raise CorruptPayload(f"volume {volume.name} does not match its hash", where=self.bundle)
        for index in range(len(self.manifest.volumes)):  # every volume present, even if it held no object
            self._volume_fd(index)
