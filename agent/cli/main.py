"""The ``bundle-agent`` group: its options, and every command registered in one place."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.context import DeviceContext
from agent.cli.errors import ErrorReportingGroup
from agent.cli.identity import identity_command
from agent.cli.config import config_group
from agent.cli.install import install_command, provision_command
from agent.cli.lifecycle import boot_check_command, boot_command, rollback_command, status_command
from agent.cli.log import log_command
from agent.cli.on_insert import on_insert_command
from agent.cli.root import root_group
from agent.cli.technician import technician_group
from agent.config import DEFAULT_CONFIG


# --config may also come from the environment, so that a unit or a technician's shell sets it once.
CONFIG_VARIABLE = "BUNDLE_AGENT_CONFIG"
_CONFIG_TYPE = click.Path(dir_okay=False, path_type=Path)
_SYSROOT_TYPE = click.Path(file_okay=False, path_type=Path)
_CONFIG_HELP = f"The agent's configuration file [default: ${CONFIG_VARIABLE}, else {DEFAULT_CONFIG}]."
_SYSROOT_HELP = ("Root of the system to manage (a mounted system from recovery media); prefixes every "
                 "absolute path of the configuration [default: /].")


def _set_on_device(attribute: str):
    def callback(ctx: click.Context, _param, value):
        if value is not None:  # given after the command's name: it wins over the group's
            setattr(ctx.find_object(DeviceContext), attribute, value)
    return callback


def _old_root(ctx: click.Context, _param, value) -> None:
    if value is not None:
        raise click.BadOptionUsage("--root", "bundle-agent's --root is now --sysroot (in `bundle`, --root names a "
                                   "trust root)", ctx)


class AgentGroup(ErrorReportingGroup):
    """``bundle-agent``: --config and --sysroot work before the command's name and after it
    (``bundle-agent status --config X``, ``bundle-agent config check --config X``), as people
    type them. The ``root`` group works on no device and takes neither."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if cmd.name not in _DEVICELESS:
            _take_device_options_after_the_name(cmd)
        super().add_command(cmd, name)


_DEVICELESS = {"root"}  # root verify checks files it is given, on any machine


def _take_device_options_after_the_name(command: click.Command) -> None:
    if isinstance(command, click.Group):
        for subcommand in command.commands.values():
            _take_device_options_after_the_name(subcommand)
        return
    command.params += [
        click.Option(["--config"], type=_CONFIG_TYPE, expose_value=False, callback=_set_on_device("config_path"),
                     help=_CONFIG_HELP),
        click.Option(["--sysroot"], type=_SYSROOT_TYPE, expose_value=False, callback=_set_on_device("root"),
                     help=_SYSROOT_HELP)]


@click.group(cls=AgentGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="offline-bundle", prog_name="bundle-agent", help="Show the version and exit.")
@click.option("--config", type=_CONFIG_TYPE, envvar=CONFIG_VARIABLE, default=DEFAULT_CONFIG, help=_CONFIG_HELP)
@click.option("--sysroot", "root", type=_SYSROOT_TYPE, default=Path("/"), help=_SYSROOT_HELP)
@click.option("--root", "old_root", hidden=True, expose_value=False, callback=_old_root, is_eager=True)
@click.pass_context
def main(ctx: click.Context, config: Path, root: Path) -> None:
    """Install signed offline update bundles on this machine, safely.

    Exit codes: 0 done (or nothing to do), 1 could not complete, 2 usage error,
    3 refused or rolled back (the running system is unchanged), 4 install/on-insert staged
    an update: a reboot starts its trial. Every reporting command takes
    --json (docs/json/).
    """
    ctx.obj = DeviceContext(config, root)
    ctx.call_on_close(ctx.obj.close)


for command in (install_command, on_insert_command, provision_command, boot_command, boot_check_command,
                rollback_command, status_command, root_group, config_group, log_command, identity_command,
                technician_group):
    main.add_command(command)
