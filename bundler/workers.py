"""The encoding threads of ``bundle make``, which an interrupt never waits for.

A ThreadPoolExecutor joins its threads when the work is abandoned and again at interpreter exit,
so Ctrl-C waited for every running level-19 chunk - about a minute (issue 11). These threads are
daemons, never joined; once :meth:`Workers.close` sets ``stop``, an encoding stops at its next
:meth:`Workers.check` (bundler/encoders.py ticks every ``STREAM_PIECE`` bytes) and the thread
ends. Results still come back in submission order, so bundles stay byte-identical whatever the
thread count.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Callable, Iterable, Iterator

from agent.progress import Progress


_END = object()
# Items handed out ahead at most, however small: each completion recounts them.
MAX_AHEAD_ITEMS = 1024


class Stopped(Exception):
    """The workers were closed: the encoding in progress was abandoned."""


class Workers:
    def __init__(self, threads: int):
        self.stop = threading.Event()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"bundle-encoder-{number}", daemon=True)
                         for number in range(threads)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, function, item = job
            if self.stop.is_set() or not future.set_running_or_notify_cancel():
                continue
            try:
                result = function(item)
            except BaseException as error:  # handed to the main thread, which raises it
                future.set_exception(error)
            else:
                future.set_result(result)

    def check(self) -> None:
        """Raises Stopped once the workers are closed (called by the work between pieces)."""
        if self.stop.is_set():
            raise Stopped()

    def submit(self, function: Callable, item) -> Future:
        """``function(item)``, run after the work queued before it."""
        future: Future = Future()
        self._jobs.put((future, function, item))
        return future

    def ordered_map(self, function: Callable, items: Iterable, size: Callable[[Any], int],
                    result_size: Callable[[Any], int], ahead_bytes: int) -> Iterator:
        """``function(item)`` for each item, in order.

        Items are handed to the threads ahead of the one whose result is awaited while what the
        ones handed out hold adds up to at most ``ahead_bytes`` (two per thread always):
        ``size(item)`` until its result is in, then ``result_size(result)``. That bounds the
        results waiting in memory, yet the other threads keep working past one long item: with a
        fixed count of items ahead, one long encoding among many small ones left a thread idle.
        """
        pending: deque[tuple[Future, int]] = deque()
        remaining = iter(items)
        upcoming = next(remaining, _END)

        def held(future: Future, amount: int) -> int:
            if not future.done():
                return amount
            return 0 if future.cancelled() or future.exception() is not None else result_size(future.result())

        def submit_ahead() -> None:
            nonlocal upcoming
            holding = sum(held(future, amount) for future, amount in pending)
            while upcoming is not _END and len(pending) < MAX_AHEAD_ITEMS:
                amount = size(upcoming)
                if len(pending) >= 2 * len(self._threads) and holding + amount > ahead_bytes:
                    return
                pending.append((self.submit(function, upcoming), amount))
                holding += amount
                upcoming = next(remaining, _END)

        submit_ahead()
        try:
            while pending:
                head = pending[0][0]
                while not head.done():  # each result that comes in makes room for more
                    wait([future for future, _ in pending if not future.done()], return_when=FIRST_COMPLETED)
                    submit_ahead()
                pending.popleft()
                result = head.result()
                submit_ahead()
                yield result
        finally:
            for future, _ in pending:
                future.cancel()

    def close(self) -> None:
        """Stop: queued work is dropped, running work stops at its next check; returns at once."""
        self.stop.set()
        for _ in self._threads:
            self._jobs.put(None)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Counter:
    """``tick(count)`` for the workers encoding one component: adds up the bytes encoded (from
    any thread) and reports them; raises Stopped once the workers are closed."""

    def __init__(self, progress: Progress | None, step: str, total: int, workers: Workers):
        self._progress, self._step, self._total, self._workers = progress, step, total, workers
        self._done = 0
        self._lock = threading.Lock()

    def __call__(self, count: int) -> None:
        self._workers.check()
        if self._progress is not None:
            with self._lock:
                self._done += count
                self._progress(self._step, self._done, self._total)


class MemoryBudget:
    """Encodings in flight hold at most ``limit`` bytes of estimated memory together; one that
    needs more than the limit runs alone. Which thread encodes what changes only when, not what:
    bundles stay byte-identical (the results are written in order)."""

    def __init__(self, limit: int, check: Callable[[], None]):
        self._limit, self._check = limit, check
        self._used = 0
        self._changed = threading.Condition()

    @contextmanager
    def held(self, amount: int) -> Iterator[None]:
        """Waits until ``amount`` fits (raises Stopped if the workers close meanwhile)."""
        with self._changed:
            while self._used and self._used + amount > self._limit:
                self._changed.wait(0.2)
                self._check()
            self._used += amount
        try:
            yield
        finally:
            with self._changed:
                self._used -= amount
                self._changed.notify_all()
