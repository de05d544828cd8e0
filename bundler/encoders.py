"""The codecs' encoders, by name: the bundler's half of the registry in agent/format/codec.py.

Every encoder here has the decoder of the same name there (tests/test_codecs.py), and a bundle's
manifest lists the codecs it used (docs/FORMAT.md, "Codecs"), so a device that lacks one refuses
the bundle by name before reading its payload. Two kinds, as on the device:

* object encoders (``raw``, ``zstd``, ``zstd-patch``): each chunk is stored as the smallest of
  them (docs/FORMAT.md, "How files are carried");
* transforms (``gzip-recipe``): a gzip file that re-deflates bit for bit is carried as its
  content and a recipe, in deltas only (docs/FORMAT.md, "gzip recipe").

A new codec is one encoder here, one decoder in agent/format/codec.py, and regenerated golden
vectors (docs/ARCHITECTURE.md, "Where a new thing goes").
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from agent.format import codec, gzip_recipe
from agent.format.manifest import MAX_CHUNK_BYTES
from agent.format.tree import GzipRecipe
from keys.errors import Failed


@dataclass(frozen=True)
class Encoder:
    """An object encoding. ``encode(data, level, region)`` is the stored object, or None where the
    encoding does not apply; ``patch``: it refers to a base region, which the chunk then names."""

    name: str
    encode: Callable[[bytes, int, bytes | None], bytes | None]
    patch: bool = False


def _patch(data: bytes, level: int, region: bytes | None) -> bytes | None:
    return codec.compress(data, level, region) if region is not None else None


RAW = Encoder("raw", lambda data, level, region: data)
ZSTD = Encoder("zstd", lambda data, level, region: codec.compress(data, level))
ZSTD_PATCH = Encoder("zstd-patch", _patch, patch=True)
ENCODERS: dict[str, Encoder] = {e.name: e for e in (RAW, ZSTD, ZSTD_PATCH)}


def smallest(data: bytes, level: int, region: bytes | None = None) -> tuple[str, bytes]:
    """``(encoding, stored)``: the smallest of every encoder that applies, ties going to ``raw``:
    already compressed data is stored as it is, costs no decoding and never grows."""
    candidates = [(e.name, stored) for e in ENCODERS.values() if (stored := e.encode(data, level, region)) is not None]
    return min(candidates, key=lambda c: (len(c[1]), c[0] != RAW.name))


@dataclass(frozen=True)
class Source:
    """Where a chunk's bytes come from: a file, or a gzip file's content (``gunzip``)."""

    path: Path
    gunzip: bool = False

    def read(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size). Raises Failed if the file changed meanwhile."""
        with open(self.path, "rb", buffering=0) as handle:
            if self.gunzip:
                data = gzip_recipe.gunzip_prefix(lambda: handle.read(1 << 20), offset + size)[offset:]
            else:
                data = os.pread(handle.fileno(), size, offset)
        if len(data) != size:
            raise Failed("file changed while the bundle was being made", where=self.path)
        return data


@dataclass(frozen=True)
class Transform:
    """A file-level codec. ``recipe(path, size)``: the entry's recipe and its content's size, or
    None if the file cannot be carried so; ``content_size(path)``: the size of a base file's
    content if its content can serve as a patch region, else None."""

    name: str
    recipe: Callable[[Path, int], tuple[GzipRecipe, int] | None]
    content_size: Callable[[Path], int | None]


def _gzip_recipe(path: Path, size: int) -> tuple[GzipRecipe, int] | None:
    """A recipe if ``path`` is a gzip file that re-deflates bit for bit, with its content size."""
    if size > MAX_CHUNK_BYTES:
        return None
    with open(path, "rb") as handle:
        if not handle.read(len(gzip_recipe.MAGIC)) == gzip_recipe.MAGIC:
            return None
        data = gzip_recipe.MAGIC + handle.read()
    found = gzip_recipe.find_recipe(data, MAX_CHUNK_BYTES)
    if found is None:
        return None
    header, level, content = found
    return GzipRecipe(header=header, level=level, size=len(content),
                      sha256=hashlib.sha256(content).hexdigest()), len(content)


def _gunzipped_size(path: Path) -> int | None:
    """Content size of a gzip base file, if it is one and small enough to serve as a prefix."""
    with open(path, "rb") as handle:
        if gzip_recipe.header_length(handle.read(MAX_CHUNK_BYTES)) is None:
            return None
        handle.seek(0)
        try:
            content = gzip_recipe.gunzip_prefix(lambda: handle.read(1 << 20), 2 * MAX_CHUNK_BYTES + 1)
        except ValueError:
            return None
    return len(content) if len(content) <= 2 * MAX_CHUNK_BYTES else None


GZIP_RECIPE = Transform("gzip-recipe", recipe=_gzip_recipe, content_size=_gunzipped_size)
TRANSFORMS: dict[str, Transform] = {t.name: t for t in (GZIP_RECIPE,)}
# Every codec the bundler can write, sorted (a subset of agent.format.codec.CODECS).
NAMES: tuple[str, ...] = tuple(sorted([*ENCODERS, *TRANSFORMS]))
