"""``bundle-agent install`` and ``provision``: a technician installs from a stick or a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.output import json_option, print_report
from agent.cli.progress import ProgressDisplay
from agent.install import install, provision
from agent.report import Report

# install and on-insert: an update was staged and a reboot starts its trial (docs/OPERATOR.md,
# "Exit codes"), so the unit that ran the command knows to reboot; 0 means nothing was to do.
EXIT_STAGED = 4


def exit_for(report: Report) -> None:
    """Exit 4 when the report says an update was staged; return otherwise (exit 0)."""
    if report.outcome == "staged":
        click.get_current_context().exit(EXIT_STAGED)


def _from_a_medium(command):
    """The options of a command that installs from a medium: BUNDLE_OR_STICK, --json, the DeviceContext."""
    command = pass_device(command)
    command = json_option(command)
    return click.argument("medium", metavar="BUNDLE_OR_STICK", type=click.Path(exists=True, path_type=Path))(command)


@click.command("install")
@_from_a_medium
def install_command(context: DeviceContext, medium: Path, as_json: bool) -> None:
    """Verify and stage the newest applicable updates from BUNDLE_OR_STICK for a trial boot.

    Exit 4: an update was staged, a reboot starts its trial; 0: nothing to do (the last line says
    why: nothing on the medium, not for this machine, up to date)."""
    with ProgressDisplay("install") as progress:
        report = install(context.device, medium, progress)
    print_report(report, as_json)
    exit_for(report)


@click.command("provision")
@_from_a_medium
def provision_command(context: DeviceContext, medium: Path, as_json: bool) -> None:
    """Factory install: the full bundles of BUNDLE_OR_STICK into the first environment, committed."""
    with ProgressDisplay("provision") as progress:
        report = provision(context.device, medium, progress)
    print_report(report, as_json)
