"""``bundle-agent``: the device's command line. Imports verification code only."""

from __future__ import annotations

from importlib.metadata import version

import click

from agent.cli_support import ErrorReportingGroup
from keys.verify_cli import verify_root


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("offline-bundle"), prog_name="bundle-agent")
def main() -> None:
    """Install signed offline update bundles on this machine, safely.

    Exit codes: 0 done, 1 could not complete, 2 usage error, 3 refused (nothing changed).
    """


@main.group("root")
def root_group() -> None:
    """Check trust roots (for example the chain carried on a stick)."""


root_group.add_command(verify_root)
