"""``bundle-agent boot | boot-check | rollback | status``: the life of an installed update."""

from __future__ import annotations

import os

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.output import json_option, print_json
from agent.lifecycle import boot, boot_check, rollback, status
from keys.printable import echo


@click.command("boot")
@pass_device
def boot_command(context: DeviceContext) -> None:
    """Boot-loader role (dirs backend): print the environment to run, consuming a one-time trial."""
    # The launcher starts this path: its exact bytes, even those that are not UTF-8.
    click.echo(os.fsencode(boot(context.device)))


@click.command("boot-check")
@json_option
@pass_device
def boot_check_command(context: DeviceContext, as_json: bool) -> None:
    """After every boot: health-check a trial, then commit it or roll back."""
    _print_message(boot_check(context.device), as_json)


@click.command("rollback")
@json_option
@pass_device
def rollback_command(context: DeviceContext, as_json: bool) -> None:
    """Cancel a pending trial, or return to the previous environment."""
    _print_message(rollback(context.device), as_json)


def _print_message(message: str, as_json: bool) -> None:
    if as_json:
        print_json({"message": message})
    else:
        echo(message)


@click.command("status")
@json_option
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
