"""The ``bundle-agent`` group: its options, and every command registered in one place."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import click

from agent.cli.context import DeviceContext
from agent.cli.errors import ErrorReportingGroup
from agent.cli.install import install_command, provision_command
from agent.cli.lifecycle import boot_check_command, boot_command, rollback_command, status_command
from agent.cli.on_insert import on_insert_command
from agent.cli.root import root_group
from agent.config import DEFAULT_CONFIG


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("offline-bundle"), prog_name="bundle-agent")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG,
              show_default=True, help="The agent's configuration file.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="Root of the system to manage (a mounted system from recovery media).")
@click.pass_context
def main(ctx: click.Context, config: Path, root: Path) -> None:
    """Install signed offline update bundles on this machine, safely.

    Exit codes: 0 done (or nothing to do), 1 could not complete, 2 usage error,
    3 refused or rolled back (the running system is unchanged).
    """
    ctx.obj = DeviceContext(config, root)


for command in (install_command, on_insert_command, provision_command, boot_command, boot_check_command,
                rollback_command, status_command, root_group):
    main.add_command(command)
