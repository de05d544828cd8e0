"""The one place where our errors become messages and exit codes, for both command lines.

Exit codes (docs/OPERATOR.md): 0 done; 1 could not complete; 2 usage error (click);
3 examined and refused - nothing was changed.

Text for people is made printable by ``keys/printable.py`` (undecodable bytes and control
characters as ``\\xNN``).
"""

from __future__ import annotations

import click

from keys.errors import Refused, UpdateError
from keys.printable import echo

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = Refused.exit_code


class ErrorReportingGroup(click.Group):
    """A click group that reports :class:`UpdateError` as ``refused:``/``error:`` plus a hint."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UpdateError as error:
            label = "refused" if isinstance(error, Refused) else "error"
            echo(f"{label}: {error}", err=True)
            if error.hint:
                echo(f"  hint: {error.hint}", err=True)
            ctx.exit(error.exit_code)
