"""Filling blocks: small objects compressed together instead of one frame each (docs/FORMAT.md,
"Blocks").

Members join the open block in the order their chunks are written, which is the order a device
stages files in, so it decodes each block once. A block is sealed when the next member would
overflow it, compressed by the encoding threads, and written to the volumes when the block after
it is sealed (or at :meth:`BlockPacker.flush`): its compression overlaps the encodings, yet where
it lands in the payload depends only on the members, so bundles stay byte-identical.
"""

from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future
from typing import Callable

from agent.format import codec
from bundler.volumes import VolumeWriter

# Content of one block. A device holds one decoded block: 16 MiB. On the kernel pair's module
# patches, 4 MiB blocks were 1.6% larger than 16 MiB ones, one frame per patch 19% larger.
BLOCK_BYTES = codec.MAX_BLOCK_BYTES


class BlockPacker:
    """``add`` members; ``compress(content, last)`` is the block's frame, computed in the future it
    returns; ``last`` is true for the block :meth:`flush` seals, the last one of its component."""

    def __init__(self, writer: VolumeWriter, compress: Callable[[bytes, bool], Future]):
        self._writer, self._compress = writer, compress
        self._open: list[tuple[str, int, str]] = []  # id, size, encoding of each member
        self._content: list[bytes] = []
        self._size = 0
        self._sealed: deque[tuple[Future, list[tuple[str, int, str]]]] = deque()

    def add(self, data: bytes, encoding: str) -> str | None:
        """The member's id once it is in a block; None, storing nothing, when the same bytes are
        stored under another encoding (as VolumeWriter.add)."""
        assert 0 < len(data) <= BLOCK_BYTES
        object_id = hashlib.sha256(data).hexdigest()
        claimed = self._writer.claim(object_id, encoding)
        if claimed is None:
            return None
        if claimed:
            if self._size + len(data) > BLOCK_BYTES:
                self._seal()
            self._open.append((object_id, len(data), encoding))
            self._content.append(data)
            self._size += len(data)
        return object_id

    def _seal(self, last: bool = False) -> None:
        if self._open:
            self._sealed.append((self._compress(b"".join(self._content), last), self._open))
            self._open, self._content, self._size = [], [], 0
        while len(self._sealed) > 1:  # the one before the last: the latest may still be compressing
            self._write_oldest()

    def _write_oldest(self) -> None:
        future, members = self._sealed.popleft()
        self._writer.add_block(future.result(), members)

    def flush(self) -> None:
        """Write every block, the open one too: all members are then listed."""
        self._seal(last=True)
        while self._sealed:
            self._write_oldest()
