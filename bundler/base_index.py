"""Where a new file's content already is in the base: a content-defined piece index of the base tree.

A patch chunk refers to one region of one base file (a Prefix, docs/FORMAT.md). Pairing files
by path or name and mapping a chunk's offset proportionally into its pair finds that region only
while content stays where it was. An insertion, a cut, content moved between files, or an added
file that repeats an old one under another name put whole windows of new bytes into the delta:
2 MiB rewritten in a 200 MiB file cost 18 MiB. Here both trees are cut at content-defined
boundaries (FastCDC: a boundary depends only on the bytes around it, so an insertion moves no
boundary but its own), each base piece is indexed by a hash of its bytes, and a new chunk's
region is placed where most of its pieces are, in whichever base file that is.

Memory stays bounded at any tree size: the average piece grows with the base so that the index
holds at most ``MAX_PIECES`` pieces, and files are read as streams, never whole.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from agent.format.tree import Entry
from bundler.vendor_only import vendor_module

SMALLEST_AVERAGE = 32 << 10
LARGEST_AVERAGE = 4 << 20  # pyfastcdc's limit
# About 100 bytes each in the dict: the index stays under ~30 MiB whatever the base's size.
MAX_PIECES = 1 << 18
_OFFSET_BITS = 40
MIN_RUN_PIECES = 4  # a location packs (file number, offset) into one int: files up to 1 TiB


@dataclass(frozen=True)
class Match:
    """``length`` bytes at ``new_offset`` of the new file are at ``base_offset`` of base file ``file``."""

    new_offset: int
    file: int
    base_offset: int
    length: int


@dataclass(frozen=True)
class Region:
    """A base region for a chunk: ``length`` bytes at ``offset`` of ``entry``; ``found``: how many
    of the chunk's bytes were found in it."""

    entry: Entry
    offset: int
    length: int
    found: int


def _runs(matches: list[Match], budget: int) -> Iterator[list[Match]]:
    """Consecutive found pieces of a new file that one region of ``budget`` bytes holds."""
    run: list[Match] = []
    low = high = 0
    for match in matches:
        end = match.base_offset + match.length
        if run and match.file == run[0].file and max(high, end) - min(low, match.base_offset) <= budget:
            low, high = min(low, match.base_offset), max(high, end)
            run.append(match)
            continue
        if run:
            yield run
        run, low, high = [match], match.base_offset, end
    if run:
        yield run


def _pieces(path: Path, chunker) -> Iterator[tuple[int, int, int]]:
    """``(offset, length, key)`` of each content-defined piece of the file at ``path``."""
    with open(path, "rb", buffering=0) as stream:
        for piece in chunker.cut_stream(stream):
            key = int.from_bytes(hashlib.blake2b(piece.data, digest_size=8).digest(), "little")
            yield piece.offset, piece.length, key


class BaseIndex:
    """The pieces of a base tree's files (those of at least one average piece), by content."""

    def __init__(self, root: Path, files: list[Entry]):
        indexed = sorted((e for e in files if e.size >= SMALLEST_AVERAGE), key=lambda e: e.path)
        total = sum(e.size for e in indexed)
        average = SMALLEST_AVERAGE
        while total // average > MAX_PIECES and average < LARGEST_AVERAGE:
            average *= 2
        self.average = average
        self._chunker = vendor_module("pyfastcdc").FastCDC(average)
        self._files = indexed
        self._locations: dict[int, int] = {}
        for number, entry in enumerate(indexed):
            for offset, _, key in _pieces(root / entry.path, self._chunker):
                self._locations.setdefault(key, number << _OFFSET_BITS | offset)

    def matches(self, path: Path, size: int) -> list[Match]:
        """The pieces of the new file at ``path`` found in the base, in file order."""
        if size < self.average or not self._locations:
            return []
        found = []
        mask = (1 << _OFFSET_BITS) - 1
        for offset, length, key in _pieces(path, self._chunker):
            location = self._locations.get(key)
            if location is not None:
                found.append(Match(offset, location >> _OFFSET_BITS, location & mask, length))
        return found

    def cuts(self, matches: list[Match], size: int, chunk_size: int, budget: int) -> list[tuple[int, int]]:
        """``(offset, length)`` of a new file's chunks, at most ``chunk_size`` each. A chunk also
        ends where the file's content starts to come from a place that one region of ``budget``
        bytes cannot hold together with the chunk's earlier content (another file, or far away
        in the same one), so each chunk has one region that holds what it repeats. Runs of found
        pieces shorter than ``MIN_RUN_PIECES`` pieces do not cut: a stray repeated piece (zeros,
        a common header) is not worth a region."""
        starts = [0]
        window: tuple[int, int, int] | None = None  # (file, low, high) of the current chunk's region
        for run in _runs(matches, budget):
            if len(run) < MIN_RUN_PIECES:
                continue
            low = min(m.base_offset for m in run)
            high = max(m.base_offset + m.length for m in run)
            file = run[0].file
            if window is not None and file == window[0] and max(high, window[2]) - min(low, window[1]) <= budget:
                window = (file, min(low, window[1]), max(high, window[2]))
                continue
            if window is not None and run[0].new_offset > starts[-1]:
                starts.append(run[0].new_offset)
            window = (file, low, high)
        cuts = []
        for start, end in zip(starts, starts[1:] + [size]):
            cuts += [(offset, min(chunk_size, end - offset)) for offset in range(start, end, chunk_size)]
        return cuts

    def region(self, matches: list[Match], start: int, size: int, budget: int) -> Region | None:
        """The base region of at most ``budget`` bytes holding most of new bytes [start, start +
        size), or None if none of them is in the base. It is as long as the budget or the file
        allows, centred on the pieces found: changed bytes often resemble base bytes that are
        not equal pieces (a recompiled binary, an edited text), anywhere in the file."""
        first = bisect.bisect_left(matches, start, key=lambda m: m.new_offset)
        inside: dict[int, list[Match]] = {}
        for match in matches[first:]:
            if match.new_offset + match.length > start + size:
                break
            inside.setdefault(match.file, []).append(match)
        best: tuple[int, int, int, int] | None = None  # (-found, file, low, high): smallest wins
        for number, candidates in inside.items():
            candidates.sort(key=lambda m: m.base_offset)
            low_index, found = 0, 0
            for high_index, match in enumerate(candidates):
                found += match.length
                while match.base_offset + match.length - candidates[low_index].base_offset > budget:
                    found -= candidates[low_index].length
                    low_index += 1
                low = candidates[low_index].base_offset
                option = (-found, number, low, match.base_offset + match.length)
                if best is None or option < best:
                    best = option
        if best is None:
            return None
        found, number, low, high = -best[0], best[1], best[2], best[3]
        entry = self._files[number]
        length = min(budget, entry.size)
        offset = min(max(0, low - (length - (high - low)) // 2), entry.size - length)
        return Region(entry, offset, length, found)
