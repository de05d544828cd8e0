"""Ctrl-C and SIGTERM, the same way in both command lines (docs/OPERATOR.md, "Interrupts").

SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in
the main thread, wherever it is, so every ``finally`` and every failure path runs on the way out:
``bundle make`` removes its partial output, an install destroys the environment it was building
and records "interrupted" (agent/install.py). agent/cli/errors.py reports it and exits 130
(SIGINT) or 143 (SIGTERM), as a shell does for a process killed by the signal.

Once one of them has arrived, later ones are ignored: a second Ctrl-C must not cut short the
cleanup the first one started. A command that goes on after the cleanup (the technician's menu,
back at its prompt) calls :func:`raise_on_signals` again. Worker threads never receive signals;
code that runs them stops them itself (bundler/make.py).
"""

from __future__ import annotations

import signal

SIGINT_EXIT = 128 + signal.SIGINT  # 130
SIGTERM_EXIT = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (a service manager stopping the unit, ``kill``)."""


def _stopping(signum: int, frame) -> None:
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.SIG_IGN)  # the cleanup in progress runs to its end
    raise Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt("SIGINT")


_RAISING: set[int] = set()  # the signals raise_on_signals took over (not those ignored from the start)


def raise_on_signals() -> None:
    """From now on SIGINT and SIGTERM raise in the main thread (only it may install handlers),
    again after one of them arrived."""
    for number in (signal.SIGINT, signal.SIGTERM):
        # Ignored by nohup or by a parent: respected, unless it is ignored because one arrived.
        if number in _RAISING or signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, _stopping)
            _RAISING.add(number)


def describe(interrupt: KeyboardInterrupt) -> str:
    """``interrupted (SIGINT)`` or ``interrupted (SIGTERM)``: what is printed (agent/install.py
    records the same words)."""
    return f"interrupted ({'SIGTERM' if isinstance(interrupt, Terminated) else 'SIGINT'})"


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return SIGTERM_EXIT if isinstance(interrupt, Terminated) else SIGINT_EXIT
