"""Summary lines printed once at the end of a run (hostile sticks, power cuts, memory).

Tests add to named counters with :func:`count_summary`; the ``pytest_terminal_summary`` hook in
tests/conftest.py prints :func:`summary_lines`.
"""

from __future__ import annotations

import string

_SUMMARIES: dict[str, dict[str, int]] = {}
_SUMMARY_FORMATS: dict[str, str] = {}


def count_summary(name: str, fmt: str, **increments: int) -> None:
    """Add to a named summary; printed once at the end as ``fmt.format(**counters)``.

    Example: count_summary("hostile", "hostile sticks: {refused} refused of {total}, device unchanged in
    {unchanged}", total=1, refused=1, unchanged=1)
    """
    counters = _SUMMARIES.setdefault(name, {})
    _SUMMARY_FORMATS[name] = fmt
    for key, value in increments.items():
        counters[key] = counters.get(key, 0) + value


def summary_lines() -> list[str]:
    """Each summary counted so far, formatted (a counter never added to shows as 0)."""
    lines = []
    for name, counters in _SUMMARIES.items():
        fmt = _SUMMARY_FORMATS[name]
        fields = [field for _, field, _, _ in string.Formatter().parse(fmt) if field]
        lines.append(fmt.format(**{field: counters.get(field, 0) for field in fields}))
    return lines


def exported_summaries() -> dict:
    """This process's summaries, for a pytest-xdist worker to hand to the controller."""
    return {"counters": _SUMMARIES, "formats": _SUMMARY_FORMATS}


def merge_summaries(exported: dict) -> None:
    """Add a worker's :func:`exported_summaries` to this process's."""
    for name, counters in exported["counters"].items():
        count_summary(name, exported["formats"][name], **counters)
