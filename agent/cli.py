"""``bundle-agent``: the device's command line. Imports verification code only, never signing."""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import click

from agent.cli_support import ErrorReportingGroup
from agent.config import DEFAULT_CONFIG, load_config
from agent.device import Device
from agent.install import install as install_medium, provision as provision_medium
from agent.lifecycle import boot as boot_environment, boot_check as run_boot_check, rollback as run_rollback, status
from agent.lock import hold_device_lock
from keys.printable import echo, printable_data
from keys.verify_cli import verify_root


class _Lazy:
    """Opens the device only for commands that need it (``root verify`` needs none); ``device``
    holds the device's lock (agent/lock.py), ``device_to_read`` does not."""

    def __init__(self, config: Path, root: Path):
        self.config_path, self.root, self._device, self._lock = config, root, None, None

    @property
    def device_to_read(self) -> Device:
        if self._device is None:
            self._device = Device.open(load_config(self.config_path, system_root=self.root))
        return self._device

    @property
    def device(self) -> Device:
        device = self.device_to_read
        if self._lock is None:
            self._lock = hold_device_lock(device.state_dir)
        return device


pass_device = click.make_pass_decorator(_Lazy)
_existing = click.Path(exists=True, path_type=Path)


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
    ctx.obj = _Lazy(config, root)


def _json(value) -> None:
    echo(json.dumps(printable_data(value), indent=2))


def _report(report, as_json: bool) -> None:
    if as_json:
        _json(report.to_json())
        return
    for source, reason in report.refusals:
        echo(f"refused {source}: {reason}")
    for decision in report.decisions:
        if decision.verdict != "chosen":
            echo(f"skipped {decision.bundle} {decision.component or ''}: {decision.reason}".replace("  ", " "))
    for name, change in sorted(report.installed.items()):
        echo(f"{name}: {change}")
    echo(report.message)


@main.command()
@click.argument("medium", metavar="BUNDLE_OR_STICK", type=_existing)
@click.option("--json", "as_json", is_flag=True)
@pass_device
def install(lazy: _Lazy, medium: Path, as_json: bool) -> None:
    """Verify and stage the newest applicable updates from a stick or a bundle for a trial boot."""
    _report(install_medium(lazy.device, medium), as_json)


@main.command("on-insert")
@click.argument("mountpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@pass_device
def on_insert(lazy: _Lazy, mountpoint: Path, as_json: bool) -> None:
    """Entry point for a udev/devd rule or automount unit when a stick is inserted. Never prompts."""
    _report(install_medium(lazy.device, mountpoint), as_json)


@main.command()
@click.argument("medium", metavar="BUNDLE_OR_STICK", type=_existing)
@click.option("--json", "as_json", is_flag=True)
@pass_device
def provision(lazy: _Lazy, medium: Path, as_json: bool) -> None:
    """Factory install: full bundles into the first environment, committed."""
    _report(provision_medium(lazy.device, medium), as_json)


@main.command()
@pass_device
def boot(lazy: _Lazy) -> None:
    """Boot-loader role (dirs backend): print the environment to run, consuming a one-time trial."""
    # The launcher starts this path: its exact bytes, even those that are not UTF-8.
    click.echo(os.fsencode(boot_environment(lazy.device)))


@main.command("boot-check")
@pass_device
def boot_check(lazy: _Lazy) -> None:
    """After every boot: health-check a trial, then commit it or roll back."""
    echo(run_boot_check(lazy.device))


@main.command()
@pass_device
def rollback(lazy: _Lazy) -> None:
    """Cancel a pending trial, or return to the previous environment."""
    echo(run_rollback(lazy.device))


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_device
def show_status(lazy: _Lazy, as_json: bool) -> None:
    """Components, environments (N booted now, R default, T next boot once), pending update, last result."""
    report = status(lazy.device_to_read)
    if as_json:
        _json(report)
        return
    device = report["device"]
    echo(f"{device['product']} {device['hardware']} serial {device['serial']}")
    for name, c in report["components"].items():
        echo(f"  {name}: {c['version']} (sequence {c['sequence']})")
    for e in report["environments"]:
        echo(f"  environment {e['name']:10} {e['flags']:3} {e['path']}")
    if report["pending"]:
        echo(f"  pending: {report['pending']['phase']} of {report['pending']['environment']}")
    if report["last_result"]:
        echo(f"  last result: {report['last_result']['message']}")


@main.group("root")
def root_group() -> None:
    """Check trust roots (for example the chain carried on a stick)."""


root_group.add_command(verify_root)
