"""Progress bars on a terminal, silence otherwise (logs and pipes stay clean)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

import click

# ``progress(step, done, total)``: how far a long step is, in bytes; drawn by StepProgress.
Progress = Callable[[str, int, int], None]


def step_counter(progress: Progress | None, step: str, total: int) -> Callable[[int], None]:
    """``advance(count)`` for code that reports bytes as it handles them: adds them up and tells
    ``progress`` how far ``step`` is (nothing without ``progress``)."""
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(step, done, total)
    return advance


def relabeled(progress: Progress, step: str) -> Progress:
    """``progress`` with every step of the callee shown as ``step``."""
    return lambda _, done, total: progress(step, done, total)


@contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; draws a bar on stderr only when it is a terminal."""
    if total <= 0 or not sys.stderr.isatty():
        yield lambda n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


class StepProgress:
    """``progress(step, done, total)`` callbacks drawn as one bar per step, in sequence."""

    def __init__(self) -> None:
        self._step: str | None = None
        self._context = None
        self._advance: Callable[[int], None] = lambda n: None
        self._done = 0

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self._step:
            self.close()
            self._step, self._done = step, 0
            self._context = progress_bar(step, total)
            self._advance = self._context.__enter__()
        self._advance(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None

    def __enter__(self) -> "StepProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
