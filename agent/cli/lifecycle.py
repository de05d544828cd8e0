"""``bundle-agent boot | boot-check | rollback | status``: the life of an installed update."""

from __future__ import annotations

import os

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.output import print_json
from agent.lifecycle import boot, boot_check, rollback, status
from keys.printable import echo


@click.command("boot")
@pass_device
def boot_command(context: DeviceContext) -> None:
    """Boot-loader role (dirs backend): print the environment to run, consuming a one-time trial."""
    # The launcher starts this path: its exact bytes, even those that are not UTF-8.
    click.echo(os.fsencode(boot(context.device)))


@click.command("boot-check")
@pass_device
def boot_check_command(context: DeviceContext) -> None:
    """After every boot: health-check a trial, then commit it or roll back."""
    echo(boot_check(context.device))


@click.command("rollback")
@pass_device
def rollback_command(context: DeviceContext) -> None:
    """Cancel a pending trial, or return to the previous environment."""
    echo(rollback(context.device))


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_device
def status_command(context: DeviceContext, as_json: bool) -> None:
    """Components, environments (N booted now, R default, T next boot once), pending update, last result."""
    report = status(context.device_to_read)
    if as_json:
        print_json(report)
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
