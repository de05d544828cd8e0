"""The one place where our errors become messages and exit codes, for both command lines.

Exit codes (docs/OPERATOR.md): 0 done; 1 could not complete; 2 usage error (click);
3 examined and refused - nothing was changed (``Refused.exit_code``); 130 and 143 interrupted by
SIGINT (Ctrl-C) and SIGTERM (agent/cli/interrupt.py).

Every OSError that reaches the top - a full disk, a folder without the rights, a symlink loop -
is reported like our own errors, ``error: PATH: reason`` and exit 1, never as a traceback. Any
other exception is a bug in this program and keeps its traceback (docs/OPERATOR.md).

Text for people is made printable by ``keys/printable.py`` (undecodable bytes and control
characters as ``\\xNN``).

A command run with ``--json`` (``agent/cli/output.py:json_option``) also reports its failure on
standard output as one JSON document - ``{"ok": false, "error", "where", "hint", "exit",
"refused", "version": 1}``, schema docs/json/error.schema.json - so a script reads one stream
whatever happens; the text for people still goes to standard error.
"""

from __future__ import annotations

import errno
import json
from typing import Callable

import click

from agent.cli import interrupt
from keys.errors import Failed, Refused, UpdateError
from keys.printable import echo, printable_data

# ctx.meta key: a command that reports errors its own way (on-insert's log lines) puts its
# reporter here; the group still chooses the exit code.
REPORTER = "agent.cli.errors.reporter"
# ctx.meta key: set when the invoked command was given --json (agent/cli/output.py:json_option).
JSON_OUTPUT = "agent.cli.errors.json"
# The version of every --json document, success or failure (docs/json/README.md): raised when a
# field changes meaning or goes away, not when one is added.
JSON_VERSION = 1
_WORDS = "agent.cli.errors.words"


def error_lines(error: UpdateError) -> list[str]:
    """``refused: WHERE: WHAT`` or ``error: WHERE: WHAT``, then ``hint: WHAT TO DO`` if there is one."""
    label = "refused" if isinstance(error, Refused) else "error"
    return [f"{label}: {error}"] + ([f"hint: {error.hint}"] if error.hint else [])


def print_error(error: UpdateError) -> None:
    first, *hint = error_lines(error)
    echo(first, err=True)
    for line in hint:
        echo(f"  {line}", err=True)


def error_document(message: str, *, where: str | None, hint: str | None, exit_code: int,
                   refused: bool = False) -> dict:
    """The --json document of a failure (docs/json/error.schema.json)."""
    return {"ok": False, "version": JSON_VERSION, "error": message, "where": where, "hint": hint,
            "exit": exit_code, "refused": refused}


def print_json_error(document: dict) -> None:
    # Printable as the reports are: a path from a stick need not be UTF-8 (keys/printable.py).
    echo(json.dumps(printable_data(document), indent=2))


def _wants_json(ctx: click.Context, args: list[str]) -> bool:
    """--json was given: its callback ran, or, for a usage error found before it could, it is
    among the command's own arguments (before a ``--``)."""
    if ctx.meta.get(JSON_OUTPUT):
        return True
    own = args[:args.index("--")] if "--" in args else args
    return "--json" in own


def report_errors_with(reporter: Callable[[UpdateError], None]) -> None:
    """Report the current command's errors through ``reporter`` instead of :func:`print_error`."""
    click.get_current_context().meta[REPORTER] = reporter


class Interrupted(Failed):
    """SIGINT or SIGTERM stopped the command; what it was doing was undone on the way out."""

    def __init__(self, signal: KeyboardInterrupt):
        super().__init__(interrupt.describe(signal))
        self.exit_code = interrupt.exit_code(signal)


# What a person can do about the commonest OSErrors; the others speak for themselves.
_OS_HINTS = {
    errno.EACCES: "run as a user who may read and write it, or change its permissions",
    errno.EPERM: "run as a user who may read and write it, or change its permissions",
    errno.ENOSPC: "free space on that filesystem, or choose another place",
    errno.EDQUOT: "free space within the quota, or choose another place",
    errno.EROFS: "the filesystem is mounted read-only: choose another place, or remount it read-write",
    errno.ELOOP: "a symbolic link loops: fix or remove it",
    errno.ENOENT: "check the path",
    errno.EIO: "the device reports an I/O error: check the disk or the stick",
}


def os_failure(error: OSError) -> Failed:
    """An OSError as our error: ``PATH: reason`` and a hint (exit 1)."""
    where = error.filename if error.filename is not None else None
    if where is not None and error.filename2 is not None:
        where = f"{where} -> {error.filename2}"
    return Failed(error.strerror or str(error), where=where, hint=_OS_HINTS.get(error.errno))


def _typed(call: Callable[[], object]) -> object:
    """``call()``, with interrupts (SIGINT, SIGTERM) and OSErrors turned into UpdateErrors."""
    interrupt.raise_on_signals()
    try:
        return call()
    except OSError as error:
        if isinstance(error, UpdateError):
            raise
        raise os_failure(error) from error
    except KeyboardInterrupt as signal:
        raise Interrupted(signal) from None
    except click.exceptions.Abort as abort:
        # click turns Ctrl-C and the end of standard input at a prompt (a passphrase) into Abort,
        # which it would report as "Aborted!", exit 1; the cause tells which it was.
        if isinstance(abort.__context__, KeyboardInterrupt):
            raise Interrupted(abort.__context__) from None
        raise Failed("standard input ended before the answer the prompt asked for",
                     hint="give the answer in a file (--passphrase-file), or run on a terminal") from None


class ErrorReportingGroup(click.Group):
    """A click group that reports :class:`UpdateError` as ``refused:``/``error:`` plus a hint,
    and exits with the error's code."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_WORDS] = list(args)  # the command line as given, for _wants_json
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        args = ctx.meta.get(_WORDS, [])
        try:
            return _typed(lambda: super(ErrorReportingGroup, self).invoke(ctx))
        except UpdateError as error:
            if _wants_json(ctx, args):
                print_json_error(error_document(error.message, where=error.where, hint=error.hint,
                                                exit_code=error.exit_code, refused=isinstance(error, Refused)))
            ctx.meta.get(REPORTER, print_error)(error)
            ctx.exit(error.exit_code)
        except click.ClickException as error:  # a usage error: click prints it on stderr and exits 2
            if _wants_json(ctx, args):
                failing = getattr(error, "ctx", None) or ctx  # the subcommand's, for its --help
                print_json_error(error_document(error.format_message(), where=None,
                                                hint=f"see {failing.command_path} --help",
                                                exit_code=error.exit_code))
            raise
