"""The gzip recipes of a delta's carried files, found on every core.

Finding a recipe is Python work (agent/format/deflate.py reads where a file's blocks end, and
re-codes its tokens to prove a shape rebuilds it: ~1 MB/s of content here), so threads would
take turns on one core: on the platform pair it was a third of `bundle make`'s time, on one core
while the other waited.
Processes share it out. They ignore SIGINT: an interrupt reaches the bundler, which drops the
pool (a running search ends on its own within seconds) and removes its partial output.
"""

from __future__ import annotations

import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

from agent.format import gzip_recipe
from agent.format.tree import GzipRecipe
from bundler import encoders

Found = tuple[GzipRecipe, int] | None  # a recipe and the content's size, or None


def _maybe_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(gzip_recipe.MAGIC)) == gzip_recipe.MAGIC


def _ignore_interrupts() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _recipe(job: tuple[Path, int]) -> Found:
    return encoders.GZIP_RECIPE.recipe(*job)


def find_recipes(files: list[tuple[Path, int]], processes: int,
                 done: Callable[[int], None] | None = None) -> dict[Path, Found]:
    """The recipe of each ``(path, size)`` that has one, by path; ``done(size)`` hears of each
    file as it is searched (all of ``files``, in order)."""
    found: dict[Path, Found] = {}
    jobs = []
    for path, size in files:
        if _maybe_gzip(path):
            jobs.append((path, size))
        elif done is not None:
            done(size)
    for (path, size), recipe in zip(jobs, _searched(jobs, processes)):
        if recipe is not None:
            found[path] = recipe
        if done is not None:
            done(size)
    return found


def _searched(jobs: list[tuple[Path, int]], processes: int) -> Iterator[Found]:
    if processes <= 1 or len(jobs) < 2:
        yield from map(_recipe, jobs)
        return
    # spawn, not fork: the parent may run threads (the progress display), and FreeBSD has it too.
    pool = ProcessPoolExecutor(max_workers=min(processes, len(jobs)), initializer=_ignore_interrupts,
                               mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(_recipe, jobs, chunksize=max(1, len(jobs) // (8 * processes)))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
