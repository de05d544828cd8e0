"""``bundle``: the vendor's command line."""

from __future__ import annotations

from importlib.metadata import version

import click

from agent.cli_support import ErrorReportingGroup
from keys.cli import keys_group, root_group


@click.group(cls=ErrorReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version("offline-bundle"), prog_name="bundle")
def main() -> None:
    """Make, sign and check offline update bundles and the trust root devices verify them with.

    Exit codes: 0 done, 1 could not complete, 2 usage error, 3 refused (nothing changed).
    """


main.add_command(keys_group)
main.add_command(root_group)

from bundler.bundle_cli import inspect, make, sign_bundle, verify  # noqa: E402  (commands register below)

from bundler.write_cli import write  # noqa: E402

for command in (make, sign_bundle, verify, inspect, write):
    main.add_command(command)
