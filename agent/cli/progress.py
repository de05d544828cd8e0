"""Drawing progress for both command lines (docs/OPERATOR.md, "Progress").

The engines report ``progress(step, done, total)`` in bytes (agent/progress.py); this module
shows it on standard error:

* on a terminal, a live bar per step (tqdm): bytes done, rate, time left;
* anywhere else (a service writing to the journal, a CI log, a file), one plain line every
  ``interval`` seconds - ``make: encoding platform 35% 120.0 MiB/340.0 MiB 12.3 MiB/s 18 s left``
  - and a last line when a step that printed lines ends. Never a carriage return: a log keeps
  every line it is given.

Calls may come from several threads (bundler/make.py's workers): one lock serialises them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, TextIO


LINE_INTERVAL = 5.0  # seconds between two lines off a terminal (the issue asks for at most 10)
# A bar is redrawn at least this often, its elapsed time moving, even while a step reports
# nothing (libzstd indexing a patch's base region before the first piece of a chunk).
HEARTBEAT = 1.0
INTERVAL_VARIABLE = "BUNDLE_PROGRESS_SECONDS"  # another interval, for a log that wants more or fewer lines


def line_interval() -> float:
    """``$BUNDLE_PROGRESS_SECONDS`` if it is a number of seconds, else LINE_INTERVAL."""
    try:
        seconds = float(os.environ.get(INTERVAL_VARIABLE, ""))
    except ValueError:
        return LINE_INTERVAL
    return seconds if 0 <= seconds < float("inf") else LINE_INTERVAL


def size_text(count: float) -> str:
    """``512 B``, ``120.0 MiB``: binary units, as the bar shows them."""
    unit = "B"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if count < 1024:
            break
        count, unit = count / 1024, larger
    return f"{count:.0f} B" if unit == "B" else f"{count:.1f} {unit}"


def _duration_text(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60:02d} s"


class ProgressDisplay:
    """A ``progress(step, done, total)`` callback that draws each step in turn; use it as a
    context manager so the last bar is closed (and the last line written) however the command
    ends.

    ``name`` prefixes every step (``make``, ``install``; none if empty); ``line`` writes one line
    of text (on-insert passes its log function); ``bar``: draw bars (default: when standard error
    is a terminal and no ``line`` function is given)."""

    def __init__(self, name: str, *, line: Callable[[str], None] | None = None, bar: bool | None = None,
                 stream: TextIO | None = None, interval: float | None = None):
        self._name = name
        self._stream = stream or sys.stderr
        self._line = line or self._write_line
        self._bars = bar if bar is not None else (line is None and self._stream.isatty())
        self._interval = interval if interval is not None else line_interval()
        self._lock = threading.Lock()
        self._step: str | None = None
        self._bar = None  # a tqdm bar
        self._done = self._total = 0
        self._started = self._last_line = self._last_report = 0.0
        self._lines = 0  # lines written for the current step
        self._shown = -1  # the count the last line showed
        self._closed = threading.Event()
        self._ticker: threading.Thread | None = None

    def __call__(self, step: str, done: int, total: int) -> None:
        with self._lock:
            if step != self._step:
                self._finish_step()
                self._start_step(step, total)
            self._total = total
            if self._bar is not None:
                if total > 0 and self._bar.total != total:
                    self._bar.total = total
                self._bar.update(done - self._done)
            self._done = done
            self._last_report = time.monotonic()
            if self._bar is None and time.monotonic() - self._last_line >= self._interval:
                self._emit()

    def _start_step(self, step: str, total: int) -> None:
        self._step, self._done, self._lines = step, 0, 0
        self._started = self._last_line = time.monotonic()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._ticker.start()
        if self._bars:
            from tqdm import tqdm  # here: on-insert, run by a service, draws no bar and so never pays its import
            self._bar = tqdm(total=total if total > 0 else None, desc=f"{self._name}: {step}" if self._name else step, unit="B",
                             unit_scale=True, unit_divisor=1024, file=self._stream, mininterval=0.2, leave=True,
                             **self._size())

    def _size(self) -> dict:
        """The terminal's size; 100x24 where it reports none (a pseudo-terminal nobody sized, as
        ``script`` makes without a terminal around it), on which tqdm would draw nothing."""
        try:
            size = os.get_terminal_size(self._stream.fileno())
        except (OSError, ValueError):
            return {"ncols": 100, "nrows": 24}
        return {"ncols": size.columns or 100, "nrows": size.lines or 24}

    def _tick(self) -> None:
        """Between reports: redraw the bar every HEARTBEAT seconds, write the line every interval."""
        while not self._closed.wait(HEARTBEAT / 2):
            with self._lock:
                if self._closed.is_set() or self._step is None:
                    continue
                now = time.monotonic()
                if self._bar is not None:
                    if now - self._last_report >= HEARTBEAT:
                        self._bar.refresh()
                        self._last_report = now
                elif now - self._last_line >= self._interval and not 0 < self._total <= self._done:
                    self._emit()  # a finished step waits for the next quietly

    def _finish_step(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._step is not None and self._lines and self._shown != self._done:
            self._emit()  # the end of a step the log has seen start
        self._step = None

    def _emit(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._started, 1e-6)
        rate = self._done / elapsed
        text = f"{self._name}: {self._step}" if self._name else self._step
        if self._total > 0:
            text += f" {100 * self._done // self._total}% {size_text(self._done)}/{size_text(self._total)}"
        elif self._done == 0:  # a step that cannot count (scanning): how long it has taken
            self._line(f"{text} {_duration_text(elapsed)} so far")
            self._last_line, self._shown, self._lines = now, 0, self._lines + 1
            return
        else:
            text += f" {size_text(self._done)}"
        text += f" {size_text(rate)}/s"
        if self._total > 0 and self._done >= self._total:
            text += f" done in {_duration_text(elapsed)}"
        elif self._total > 0 and rate > 0:
            text += f" {_duration_text((self._total - self._done) / rate)} left"
        self._line(text)
        self._last_line, self._shown = now, self._done
        self._lines += 1

    def _write_line(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._finish_step()

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
