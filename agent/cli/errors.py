"""The one place where our errors become messages and exit codes, for both command lines.

Exit codes (docs/OPERATOR.md): 0 done; 1 could not complete; 2 usage error (click);
3 examined and refused - nothing was changed (``Refused.exit_code``).

Text for people is made printable by ``keys/printable.py`` (undecodable bytes and control
characters as ``\\xNN``).
"""

from __future__ import annotations

from typing import Callable

import click

from keys.errors import Refused, UpdateError
from keys.printable import echo

# ctx.meta key: a command that reports errors its own way (on-insert's log lines) puts its
# reporter here; the group still chooses the exit code.
REPORTER = "agent.cli.errors.reporter"


def error_lines(error: UpdateError) -> list[str]:
    """``refused: WHERE: WHAT`` or ``error: WHERE: WHAT``, then ``hint: WHAT TO DO`` if there is one."""
    label = "refused" if isinstance(error, Refused) else "error"
    return [f"{label}: {error}"] + ([f"hint: {error.hint}"] if error.hint else [])


def print_error(error: UpdateError) -> None:
    first, *hint = error_lines(error)
    echo(first, err=True)
    for line in hint:
        echo(f"  {line}", err=True)


def report_errors_with(reporter: Callable[[UpdateError], None]) -> None:
    """Report the current command's errors through ``reporter`` instead of :func:`print_error`."""
    click.get_current_context().meta[REPORTER] = reporter


class ErrorReportingGroup(click.Group):
    """A click group that reports :class:`UpdateError` as ``refused:``/``error:`` plus a hint,
    and exits with the error's code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UpdateError as error:
            ctx.meta.get(REPORTER, print_error)(error)
            ctx.exit(error.exit_code)
