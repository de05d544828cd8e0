"""The ``bundle`` group, and every command registered in one place."""

from __future__ import annotations


import click

from agent.cli.errors import ErrorReportingGroup
from bundler.malloc import return_large_buffers
from bundler.cli.bundles import inspect, make, sign_bundle, verify
from bundler.cli.keys import keys_group
from bundler.cli.report import report_group
from bundler.cli.root import root_group
from bundler.cli.token import token_group
from bundler.cli.write import write


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offline-bundle", prog_name="bundle", help="Show the version and exit.")
def main() -> None:
    """Make, sign and check offline update bundles and the trust root devices verify them with.

    Exit codes: 0 done, 1 could not complete, 2 usage error, 3 refused (nothing changed).
    --root always names a trust root (one per version of a chain); every reporting command
    takes --json (docs/json/).
    """
    return_large_buffers()


for command in (keys_group, root_group, make, sign_bundle, verify, inspect, write, report_group, token_group):
    main.add_command(command)
