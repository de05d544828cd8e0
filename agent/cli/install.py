"""``bundle-agent install`` and ``provision``: a technician installs from a stick or a bundle."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.output import print_report
from agent.install import install, provision


def _from_a_medium(command):
    """The options of a command that installs from a medium: BUNDLE_OR_STICK, --json, the DeviceContext."""
    command = pass_device(command)
    command = click.option("--json", "as_json", is_flag=True)(command)
    return click.argument("medium", metavar="BUNDLE_OR_STICK", type=click.Path(exists=True, path_type=Path))(command)


@click.command("install")
@_from_a_medium
def install_command(context: DeviceContext, medium: Path, as_json: bool) -> None:
    """Verify and stage the newest applicable updates from a stick or a bundle for a trial boot."""
    print_report(install(context.device, medium), as_json)


@click.command("provision")
@_from_a_medium
def provision_command(context: DeviceContext, medium: Path, as_json: bool) -> None:
    """Factory install: full bundles into the first environment, committed."""
    print_report(provision(context.device, medium), as_json)
