"""``bundle-agent technician``: the technician's recovery mode (docs/TECHNICIAN.md).

Without a subcommand it opens the menu for a serial console or a local keyboard
(agent/cli/menu.py); every item of the menu is also a subcommand, with ``--json``, so scripts
and tests do exactly what a person at the menu does:

    status | stick MOUNT | install MOUNT | rollback | switch ENV | audit [ENV] | repair MOUNT
    | log | report MOUNT | replace-root MOUNT

Exit codes are the agent's (0 done, 1 could not complete, 3 refused - nothing changed, 4 an
update or a switch was armed: a reboot starts its trial) and, for ``audit``, 5: the installed
files differ from their signed manifests.
"""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli.context import DeviceContext, pass_device
from agent.cli.install import EXIT_STAGED, exit_for
from agent.cli.output import json_option, print_json, print_outcome, print_report
from agent.cli.progress import ProgressDisplay
from agent.cli.technician_text import audit_lines, log_lines, status_lines, stick_lines
from agent.device_report import write_report
from agent.install import install
from agent.state_dir import unusable
from agent.technician.repair import repair
from agent.technician.status import technician_status
from agent.technician.stick import stick_contents
from agent.technician.switch import arm_switch
from agent.technician.trust import replace_trust_root
from agent.tree_audit import audit_environment
from keys.errors import Refused
from keys.printable import echo

EXIT_NOT_CLEAN = 5  # audit: some installed file differs from its signed manifest
STICK = click.argument("mount", metavar="STICK", type=click.Path(exists=True, file_okay=False, path_type=Path))


def _print(document: dict, as_json: bool, lines) -> None:
    """``document`` with --json, else the lines ``lines(document)`` makes for people."""
    if as_json:
        print_json(document)
        return
    for line in lines(document):
        echo(line)


@click.group("technician", invoke_without_command=True)
@click.pass_context
def technician_group(ctx: click.Context) -> None:
    """Recovery mode for a technician: a numbered menu on a console, or one item as a subcommand."""
    if ctx.invoked_subcommand is None:
        from agent.cli.menu import run_menu  # only the menu needs the terminal code
        run_menu(ctx)


@technician_group.command("status")
@json_option
@pass_device
def status_command(context: DeviceContext, as_json: bool) -> None:
    """Components, floors, every environment and what it holds, versions, pending and last results."""
    _print(technician_status(context.device_to_read), as_json, status_lines)


@technician_group.command("stick")
@STICK
@click.option("--check-payload", is_flag=True, help="Also read every stored byte (slow): finds damaged bundles.")
@json_option
@pass_device
def stick_command(context: DeviceContext, mount: Path, check_payload: bool, as_json: bool) -> None:
    """What is on the stick at STICK: every bundle and component, what an install would do, and why."""
    _print(stick_contents(context.device_to_read, mount, check_payload=check_payload), as_json, stick_lines)


def _downgrades(ctx: click.Context, _param, values: tuple[str, ...]) -> dict[str, int]:
    """COMPONENT=SEQUENCE options as a mapping. Raises click.BadParameter."""
    wanted = {}
    for value in values:
        name, _, sequence = value.rpartition("=")
        if not name or not sequence.isdigit():
            raise click.BadParameter(f"{value!r} is not COMPONENT=SEQUENCE (for example platform=6)", ctx)
        wanted[name] = int(sequence)
    return wanted


@technician_group.command("install")
@STICK
@click.option("--downgrade", "downgrade", multiple=True, metavar="COMPONENT=SEQUENCE", callback=_downgrades,
              help="Install exactly this older sequence of COMPONENT, below its floor (repeatable); needs a "
                   "technician token on STICK that allows this downgrade.")
@json_option
@pass_device
def install_command(context: DeviceContext, mount: Path, downgrade: dict[str, int], as_json: bool) -> None:
    """Install from STICK with the unattended path's rules and checks, showing progress.

    Exit 4: an update was staged, a reboot starts its trial; 0: nothing to do."""
    with ProgressDisplay("install") as progress:
        report = install(context.device, mount, progress, downgrade or None)
    print_report(report, as_json)
    exit_for(report)


def _armed(message: str, as_json: bool) -> None:
    _print({"message": message}, as_json, lambda document: [document["message"]])
    click.get_current_context().exit(EXIT_STAGED)


@technician_group.command("rollback")
@json_option
@pass_device
def rollback_command(context: DeviceContext, as_json: bool) -> None:
    """Boot the previous committed environment once for a trial; boot-check commits it. Exit 4."""
    _armed(arm_switch(context.device, None), as_json)


@technician_group.command("switch")
@click.argument("environment")
@click.option("--stick", "stick", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The stick holding a technician token, for a switch that is a downgrade.")
@json_option
@pass_device
def switch_command(context: DeviceContext, environment: str, stick: Path | None, as_json: bool) -> None:
    """Boot another kept committed ENVIRONMENT once for a trial; boot-check commits it. Exit 4."""
    _armed(arm_switch(context.device, environment, stick), as_json)


@technician_group.command("audit")
@click.argument("environment", required=False)
@json_option
@pass_device
def audit_command(context: DeviceContext, environment: str | None, as_json: bool) -> None:
    """Check every installed file of ENVIRONMENT (default: the one booted now) against the signed
    manifest it was installed from. Exit 0 clean, 5 not clean."""
    device = context.device_to_read
    if environment is None:
        booted = device.backend.booted()
        if booted is None:
            raise Refused("cannot tell which environment is booted", hint="name the environment to audit")
        environment = booted.name
    result = audit_environment(device, environment)
    device.audit.record("technician-audit", environment=environment, clean=result["clean"])
    _print(result, as_json, audit_lines)
    if not result["clean"]:
        click.get_current_context().exit(EXIT_NOT_CLEAN)


@technician_group.command("repair")
@STICK
@click.option("--component", "components", multiple=True, metavar="NAME",
              help="Rebuild this component even if the audit finds it clean (repeatable).")
@json_option
@pass_device
def repair_command(context: DeviceContext, mount: Path, components: tuple[str, ...], as_json: bool) -> None:
    """Rebuild the damaged components from full bundles on STICK into a new environment, then the
    usual trial and commit (exit 4); a lost or damaged state needs a technician token."""
    with ProgressDisplay("repair") as progress:
        report = repair(context.device, mount, set(components), progress)
    print_report(report, as_json)
    exit_for(report)


@technician_group.command("log")
@click.option("-n", "--lines", "count", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many records to show, newest first.")
@click.option("--event", "events", multiple=True, help="Only records of this event (repeatable).")
@click.option("--grep", "text", help="Only records whose text holds TEXT.")
@json_option
@pass_device
def log_command(context: DeviceContext, count: int, events: tuple[str, ...], text: str | None,
                as_json: bool) -> None:
    """The audit log, newest first, filtered, one record per 80-column line."""
    device = context.device_to_read
    try:
        records = [r for r in device.audit.newest() if _matches(r, events, text)][:count]
    except OSError as error:
        raise unusable(error, device.state_dir.root, "read the audit log") from None
    _print({"log": str(device.audit.path), "records": records}, as_json, lambda document: log_lines(records))


def _matches(record: dict, events: tuple[str, ...], text: str | None) -> bool:
    if events and record.get("event") not in events:
        return False
    return text is None or text.casefold() in str(record).casefold()


@technician_group.command("report")
@STICK
@click.option("--no-audit", is_flag=True, help="Leave the audit of the installed files out (faster).")
@json_option
@pass_device
def report_command(context: DeviceContext, mount: Path, no_audit: bool, as_json: bool) -> None:
    """Write a report of this machine, signed with its device key, to the stick at STICK."""
    device = context.device
    audit = None
    booted = device.backend.booted()
    if not no_audit and booted is not None:
        audit = audit_environment(device, booted.name)
    path = write_report(device, mount, audit)
    print_outcome(as_json, f"wrote {path}", files=[str(path)])


@technician_group.command("replace-root")
@STICK
@json_option
@pass_device
def replace_root_command(context: DeviceContext, mount: Path, as_json: bool) -> None:
    """Replace this machine's trust root with the one on STICK that a technician token there names
    (when the root keys are lost and no rotation can be signed; docs/TRUST.md, "Replacing the trust
    root"). Exit 3: refused, nothing changed."""
    message = replace_trust_root(context.device, mount)
    _print({"message": message}, as_json, lambda document: [document["message"]])
