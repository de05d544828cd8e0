"""How far a long step is: the callback that the vendor's and the device's engines report to.

``progress(step, done, total)`` says that ``step`` has handled ``done`` of ``total`` bytes. The
engines call it; only agent/cli/progress.py draws it (a bar on a terminal, a line every few
seconds in a log). Engines that report from several threads (bundler/make.py) serialise their
calls themselves.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]


def step_counter(progress: Progress | None, step: str, total: int) -> Callable[[int], None]:
    """``advance(count)`` for code that reports bytes as it handles them: adds them up and tells
    ``progress`` how far ``step`` is (nothing without ``progress``). A ``total`` that was an
    estimate and proves low grows with what was done, so a step never shows more than 100%
    (staging a clone counts the files it keeps in place out of its total, and finds some it must
    write after all: one hard-linked in the running tree is written again, agent/apply.py)."""
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(step, done, max(total, done))
    return advance


def relabeled(progress: Progress | None, step: str) -> Progress | None:
    """``progress`` with every step of the callee shown as ``step``."""
    if progress is None:
        return None
    return lambda _, done, total: progress(step, done, total)
