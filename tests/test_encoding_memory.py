"""bundle make's encodings share a memory budget (bundler/workers.py MemoryBudget): what it
reserves per encoding, and that encodings whose reservations do not fit together never overlap."""

from __future__ import annotations

import os
import threading
import time

import pytest

from agent.format import codec
from bundler import encoders
from bundler.workers import MemoryBudget, Stopped, Workers

MiB = 1 << 20


def test_a_level_19_context_past_a_few_mib_and_a_bsdiff_suffix_array_are_counted():
    assert encoders.memory_needed(8 * MiB, 0, 19) > 64 * MiB  # level 19's match tables
    assert encoders.memory_needed(64 << 10, 64 << 10, 19) < 8 * MiB  # a small file's are small
    region = encoders.BSDIFF_MAX_REGION
    assert encoders.memory_needed(MiB, region, 9) >= 17 * region  # bsdiff's suffix array
    assert encoders.memory_needed(MiB, region + 1, 9) < 17 * region  # no bsdiff beyond its limit


@pytest.mark.parametrize("level", [encoders.QUICK_PATCH_LEVEL, 19])
def test_a_patch_reservation_covers_what_libzstd_allocates_for_it(level):
    """A big chunk's patch against a 48 MiB region, as bundle make encodes it: libzstd's context
    (with the long-distance matcher's table, which its estimate leaves out), the chunk, the
    region and the frame fit the reservation."""
    data, region = os.urandom(64 << 10) * 128, bytes(48 * MiB)  # quick to encode, window 64 MiB
    context, _ = codec.compression_context(level, len(data), region)
    try:
        capacity = codec._lib.ZSTD_compressBound(len(data))
        frame = codec._check(codec._lib.ZSTD_compress2(context, codec.output_buffer(capacity), capacity,
                                                       codec._ffi.from_buffer(data), len(data)), "compress")
        allocated = codec._lib.ZSTD_sizeof_CCtx(context)
    finally:
        codec._lib.ZSTD_freeCCtx(context)
    assert allocated + len(data) + len(region) + frame <= encoders.memory_needed(len(data), len(region), level)


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


def test_the_other_thread_works_past_a_long_encoding_while_what_waits_stays_bounded():
    """Results come back in order; a long first item must not leave the other thread idle once a
    few short ones after it are done (a fixed count of items ahead did), and what the items handed
    out ahead of the awaited one hold adds up to at most ``ahead_bytes`` (two per thread at least)."""
    short_ones_done = threading.Event()

    def work(item: int) -> int:
        if item == 0:  # the long one: it ends when the short ones well past the first few are done
            assert short_ones_done.wait(10), "the short items after a long one never ran"
        elif item == 12:
            short_ones_done.set()
        return item

    with Workers(2) as workers:
        assert list(workers.ordered_map(work, range(20), size=lambda item: 1, result_size=lambda result: 1,
                                               ahead_bytes=16)) == list(range(20))

    assert _most_ahead(result_size=10) == 7  # while one is written, the seven after it (70 bytes) wait
    assert _most_ahead(result_size=1) > 7  # results smaller than their items make room for more


def _most_ahead(result_size: int) -> int:
    """How far past the result being written the threads got, with items of 10 bytes whose
    results hold ``result_size`` and 75 bytes allowed ahead."""
    started: list[int] = []
    most_ahead = 0
    with Workers(2) as workers:
        results = workers.ordered_map(lambda item: started.append(item) or item, range(40), size=lambda item: 10,
                                      result_size=lambda result: result_size, ahead_bytes=75)
        for result in results:
            time.sleep(0.01)  # the threads run ahead as far as they are allowed
            most_ahead = max(most_ahead, max(started) - result)
    return most_ahead
