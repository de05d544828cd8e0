"""Freed multi-MiB buffers go back to the system at once (glibc), so peak memory is what is in use.

glibc serves a large allocation with its own mmap, but raises that threshold to the size of each
such block freed (up to 32 MiB), after which blocks of chunk and region size come from the heap
and stay there when freed. With two encoding threads, each with its own heap, ``bundle make``
peaked 30 MiB higher on the platform pair (282 against 252 MiB) for nothing in use. A fixed
threshold turns that adjustment off. Other C libraries (FreeBSD's jemalloc) return large blocks
by themselves, and lack ``mallopt``: nothing is done there.
"""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc malloc.h
THRESHOLD_BYTES = 128 << 10  # glibc's initial value


def return_large_buffers() -> None:
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)
