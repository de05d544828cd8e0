"""bundle make's encodings share a memory budget (bundler/workers.py MemoryBudget): what it
reserves per encoding, and that encodings whose reservations do not fit together never overlap."""

from __future__ import annotations

import threading
import time

import pytest

from bundler import encoders
from bundler.workers import MemoryBudget, Stopped

MiB = 1 << 20


def test_a_level_19_context_past_a_few_mib_and_a_bsdiff_suffix_array_are_counted():
    assert encoders.memory_needed(8 * MiB, 0, 19) > 64 * MiB  # level 19's match tables
    assert encoders.memory_needed(64 << 10, 64 << 10, 19) < 8 * MiB  # a small file's are small
    region = encoders.BSDIFF_MAX_REGION
    assert encoders.memory_needed(MiB, region, 9) >= 17 * region  # bsdiff's suffix array
    assert encoders.memory_needed(MiB, region + 1, 9) < 17 * region  # no bsdiff beyond its limit


def _overlaps(amounts: list[int], limit: int) -> int:
    """The most reserved at once while threads hold ``amounts`` for 50 ms each."""
    budget = MemoryBudget(limit, lambda: None)
    held, most, lock = 0, 0, threading.Lock()

    def work(amount: int) -> None:
        nonlocal held, most
        with budget.held(amount):
            with lock:
                held += amount
                most = max(most, held)
            time.sleep(0.05)
            with lock:
                held -= amount
    threads = [threading.Thread(target=work, args=(amount,)) for amount in amounts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return most


def test_encodings_that_do_not_fit_together_take_turns_and_one_too_large_runs_alone():
    assert _overlaps([60, 60, 60], 100) == 60
    assert _overlaps([40, 40, 40], 100) == 80
    assert _overlaps([150, 10], 100) in (150, 10)  # never 160: the large one runs alone


def test_a_wait_ends_when_the_workers_stop():
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise Stopped()
    budget = MemoryBudget(100, check)
    with budget.held(80):
        failure = []
        waiter = threading.Thread(target=lambda: failure.append(pytest.raises(Stopped, budget.held(80).__enter__)))
        waiter.start()
        stop.set()
        waiter.join(timeout=5)
        assert not waiter.is_alive() and failure


def test_small_items_run_past_a_long_one_at_the_head_and_results_keep_their_order():
    """One long encoding at the head must not leave the other thread idle after the few items
    behind it (bundle make ran at 114% CPU on two cores): the 40 small items behind it all run
    before it finishes, yet the results come back in order."""
    from bundler.workers import Workers
    behind_done = threading.Event()
    finished: list[int] = []

    def work(item: int) -> int:
        if item == 0:
            assert behind_done.wait(10), "the items behind the head waited for it"
        else:
            finished.append(item)
            if len(finished) == 40:
                behind_done.set()
        return item * item

    with Workers(2) as workers:
        sizes = [8 * MiB] + [100 << 10] * 40
        results = list(workers.ordered_map(work, range(41), size=lambda item: sizes[item], ahead_bytes=32 * MiB))
    assert results == [item * item for item in range(41)]


def test_what_runs_ahead_of_the_head_is_bounded_by_bytes():
    from bundler.workers import Workers
    started: list[int] = []
    release = threading.Event()

    def work(item: int) -> int:
        started.append(item)
        if item == 0:
            release.wait(10)
        return item

    with Workers(2) as workers:
        results = workers.ordered_map(work, range(100), size=lambda item: MiB, ahead_bytes=10 * MiB)
        first = threading.Thread(target=lambda: next(results))
        first.start()
        deadline = time.monotonic() + 5
        while len(started) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert sorted(started) == list(range(10))  # 10 MiB in flight, the head included
        release.set()
        first.join()
        assert list(results) == list(range(1, 100))
