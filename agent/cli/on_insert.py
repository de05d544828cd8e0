"""``bundle-agent on-insert``: the unattended entry point, started by a udev/devd rule or an
automount unit once a stick is mounted (docs/AGENT.md, "Unattended installs: on-insert").

It installs as ``install`` does, for a machine nobody is sitting at:

* it never prompts: standard input is /dev/null before anything runs, so no code path (and no
  program the agent starts) can wait for an answer;
* it mounts nothing: it is given the mount point of a stick the system has already mounted;
* its progress and its result go to standard error as log lines for the journal, one line per
  event, each starting with ``on-insert:`` - no progress bar, no colour, no control character,
  a newline inside a message escaped. Standard output carries the same report as ``install``
  (or ``--json``) for a script that wants it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.errors import error_lines, report_errors_with
from agent.cli.install import exit_for
from agent.cli.output import json_option, print_report
from agent.cli.progress import ProgressDisplay
from agent.device_report import report_requested, write_report
from agent.install import install
from keys.errors import UpdateError
from keys.printable import echo, printable

LOG_PREFIX = "on-insert: "


def log(text: str) -> None:
    """One log line on standard error: printable, and one line whatever ``text`` holds."""
    echo(LOG_PREFIX + printable(text).replace("\n", "\\x0a"), err=True)


def log_error(error: UpdateError) -> None:
    for line in error_lines(error):  # the error, then its hint: each a line of its own
        log(line)


def _stdin_from_null() -> None:
    """Nothing can wait for an answer: standard input (fd 0 and sys.stdin) is /dev/null from here on."""
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:  # 0 already when standard input was closed
        os.dup2(fd, 0)
        os.close(fd)
    sys.stdin = open(0, closefd=False, encoding="utf-8")


@click.command("on-insert")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
@pass_device
def on_insert_command(context: DeviceContext, mountpoint: Path, as_json: bool) -> None:
    """Unattended install from the stick mounted at MOUNTPOINT (a udev/devd rule or an automount
    unit starts it). Never prompts; logs one line per event on stderr for the journal.

    Exit 4: an update was staged, reboot to start its trial; 0: nothing to do."""
    _stdin_from_null()
    report_errors_with(log_error)
    log(f"examining {mountpoint}")
    try:
        with ProgressDisplay("", line=log) as progress:  # lines, never a bar: the journal reads them
            report = install(context.device, mountpoint, progress)
    except UpdateError:
        _leave_a_report_if_asked(context, mountpoint)  # a refused install is worth a report too
        raise
    _leave_a_report_if_asked(context, mountpoint)
    print_report(report, as_json)
    if report.refusals:
        log(f"refused {len(report.refusals)} bundle(s) on the stick (reasons in the audit log)")
    log(f"done: {report.message}")
    exit_for(report)


def _leave_a_report_if_asked(context: DeviceContext, mountpoint: Path) -> None:
    """A stick carrying ``<product>/reports/REQUEST`` gets a signed report of this machine
    (docs/STICK.md, "Reports"): after the install, so it says what the install did. A report
    that cannot be written is logged and changes nothing of the install's outcome."""
    device = context.device
    try:
        if report_requested(mountpoint, device.config.product):
            log(f"the stick asks for a report: wrote {write_report(device, mountpoint)}")
    except UpdateError as error:
        log(f"the stick asks for a report, and none was written: {error}")
