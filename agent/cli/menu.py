"""The technician's menu: numbered choices on a dumb 80x24 terminal (a serial console or a local
keyboard), each calling what the matching ``bundle-agent technician`` subcommand calls.

What it relies on from the terminal: that it shows lines and sends a line when Enter is pressed.
No colours, no cursor movement, no mouse, nothing that depends on TERM. Output longer than a
screen is shown a screen at a time. Nothing typed is ever run as a command: an answer is a number
from the menu, a path, an environment's name, a COMPONENT=SEQUENCE downgrade or y/n (unlike
consoles that fall back to a shell). An error is shown with what to do and the menu comes back;
Ctrl-C stops the item, not the menu (at the menu's own prompt it leaves, exit 130); SIGTERM
leaves (exit 143); 0, q or end of input leaves. An action that armed a trial boot leaves the
menu so that the reboot policy can start the trial (agent/cli/context.py runs it last).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import click

from agent.cli import interrupt
from agent.cli.context import DeviceContext
from agent.cli.errors import error_lines
from agent.cli.progress import ProgressDisplay
from agent.cli.technician_text import (WIDTH, audit_lines, fit, log_lines, report_lines, status_lines,
                                       stick_lines, wrapped)
from agent.device_report import write_report
from agent.install import install
from agent.technician.repair import repair
from agent.technician.status import technician_status
from agent.technician.stick import stick_contents
from agent.technician.switch import arm_switch, switch_targets
from agent.technician.trust import replace_trust_root
from agent.tree_audit import audit_environment
from keys.errors import UpdateError
from keys.printable import echo, printable

SCREEN_LINES = 20  # of a 24-line terminal: room for the pager's prompt and what scrolled before
# Filesystems a stick may carry; mounted elsewhere than these system places.
_STICK_FILESYSTEMS = {"vfat", "msdos", "exfat", "fuseblk", "ext4", "ext3", "ext2"}
_SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/var", "/pool")


class _Leave(Exception):
    """An action armed a trial boot: leave the menu so the reboot can happen."""


def ask(prompt: str) -> str | None:
    """One line typed by the technician, stripped; None at end of input."""
    click.echo(printable(prompt), nl=False)
    line = sys.stdin.readline()
    if not line:
        echo("")
        return None
    return line.strip()


def confirm(question: str) -> bool:
    return (ask(f"{question} [y/N]: ") or "").lower() in ("y", "yes")


def show(lines: list[str]) -> None:
    """``lines`` a screen at a time."""
    for start in range(0, len(lines), SCREEN_LINES):
        for line in lines[start:start + SCREEN_LINES]:
            echo(fit(line, WIDTH))
        if start + SCREEN_LINES < len(lines):
            answer = ask("-- more: Enter for the next screen, q to stop -- ")
            if answer is None or answer.lower() == "q":
                return


def mounted_sticks() -> list[str]:
    """Mount points that look like a stick (a removable medium's filesystem, not a system place)."""
    found = []
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] in _STICK_FILESYSTEMS and fields[1] not in _SYSTEM_MOUNTS:
                    found.append(fields[1].replace("\\040", " "))
    except OSError:
        pass
    return found


def ask_stick() -> Path | None:
    candidates = mounted_sticks()
    default = candidates[0] if candidates else None
    if candidates:
        echo("mounted media: " + ", ".join(candidates))
    answer = ask(f"stick mount point{f' [{default}]' if default else ''}: ")
    if answer is None:
        return None
    path = Path(answer or default or "")
    if not answer and default is None or not path.is_dir():
        echo(f"not a mounted folder: {printable(str(path))} - mount the stick first (mount -o ro /dev/sdX1 /mnt)")
        return None
    return path


def run_menu(ctx: click.Context) -> None:
    context = ctx.find_object(DeviceContext)
    device = context.device_to_read
    items: list[tuple[str, Callable[[], None]]] = [
        ("Status", lambda: show(status_lines(technician_status(context.device_to_read)))),
        ("What is on a stick", lambda: _with_stick(lambda s: show(stick_lines(stick_contents(context.device_to_read,
                                                                                              s))))),
        ("Install from a stick", lambda: _install(context)),
        ("Roll back to the previous environment", lambda: _switch(context, choose=False)),
        ("Switch to another environment", lambda: _switch(context, choose=True)),
        ("Audit the installed files", lambda: _audit(context)),
        ("Repair from a stick", lambda: _repair(context)),
        ("Log (newest first)", lambda: show(log_lines(context.device_to_read.audit.newest(200)))),
        ("Export a report to a stick", lambda: _report(context)),
        ("Replace the trust root (with a token)", lambda: _replace_root(context)),
    ]
    facts = device.facts
    while True:
        echo("")
        echo(fit(f"bundle-agent technician - {facts.product} {facts.hardware} serial {facts.serial}"))
        for number, (label, _) in enumerate(items, 1):
            echo(f"{number:3}  {label}")
        echo("  0  Leave")
        answer = ask(f"choice [0-{len(items)}]: ")
        if answer is None or answer.lower() in ("0", "q", "quit", "exit"):
            return
        if not answer:
            continue  # Enter alone: the menu again
        if not (answer.isdigit() and 1 <= int(answer) <= len(items)):
            echo(f"type a number from 0 to {len(items)}")
            continue
        label, action = items[int(answer) - 1]
        echo(f"--- {label} ---")
        try:
            action()
        except _Leave:
            return
        except UpdateError as error:
            for line in error_lines(error):
                echo(fit(line))
        except interrupt.Terminated:
            raise  # SIGTERM: the machine is shutting down, or someone stops the menu itself
        except KeyboardInterrupt:
            echo("\ninterrupted: back to the menu")
            interrupt.raise_on_signals()  # the item has cleaned up: the next Ctrl-C stops the next one
        except click.exceptions.Exit:
            pass


def _with_stick(then: Callable[[Path], None]) -> None:
    stick = ask_stick()
    if stick is not None:
        then(stick)


def _install(context: DeviceContext) -> None:
    stick = ask_stick()
    if stick is None:
        return
    downgrade = {}
    named = ask("a downgrade a token allows, as COMPONENT=SEQUENCE (Enter for none): ")
    if named:
        component, _, sequence = named.rpartition("=")
        if not component or not sequence.isdigit():
            echo(f"not COMPONENT=SEQUENCE: {printable(named)} (for example platform=6)")
            return
        downgrade[component] = int(sequence)
    if not confirm(f"install from {stick}{' (downgrade ' + named + ')' if downgrade else ''}?"):
        return
    with _progress("install") as progress:
        report = install(context.device, stick, progress, downgrade or None)
    show(report_lines(report))
    _leave_if_armed(context, report.outcome == "staged")


def _switch(context: DeviceContext, choose: bool) -> None:
    """The previous committed environment, or (``choose``) one the technician names."""
    device = context.device
    stick = target = None
    if choose:
        state = device.store.load()
        names = [entry["environment"] for entry in switch_targets(device, state)]
        if not names:
            echo("no other committed environment is kept on this machine")
            return
        echo("committed environments kept: " + ", ".join(names))
        target = ask("switch to: ")
        if not target:
            return
        if confirm("is a technician token needed (a switch below the anti-rollback floor)?"):
            stick = ask_stick()
    if not confirm(f"boot {target or 'the previous environment'} once for a trial now?"):
        return
    show(wrapped(arm_switch(device, target, stick)))
    _leave_if_armed(context, True)


def _audit(context: DeviceContext) -> None:
    device = context.device_to_read
    booted = device.backend.booted()
    name = ask(f"environment to audit [{booted.name if booted else ''}]: ")
    if name is None:
        return
    name = name or (booted.name if booted else "")
    echo("auditing every installed file; this reads the whole environment...")
    result = audit_environment(device, name)
    device.audit.record("technician-audit", environment=name, clean=result["clean"])
    show(audit_lines(result))


def _repair(context: DeviceContext) -> None:
    stick = ask_stick()
    if stick is None or not confirm(f"repair from {stick}?"):
        return
    with _progress("repair") as progress:
        report = repair(context.device, stick, set(), progress)
    show(report_lines(report))
    _leave_if_armed(context, report.outcome == "staged")


def _report(context: DeviceContext) -> None:
    stick = ask_stick()
    if stick is None:
        return
    device = context.device
    booted = device.backend.booted()
    audit = audit_environment(device, booted.name) if booted is not None and confirm("include an audit?") else None
    show(wrapped(f"wrote {write_report(device, stick, audit)}"))


def _replace_root(context: DeviceContext) -> None:
    stick = ask_stick()
    if stick is None or not confirm(f"replace this machine's trust root with the one the token on {stick} names?"):
        return
    show(wrapped(replace_trust_root(context.device, stick)))


def _progress(name: str) -> ProgressDisplay:
    """Progress as plain lines every few seconds: no bar, no carriage return, nothing a dumb
    terminal or a serial console could garble."""
    return ProgressDisplay(name, line=lambda text: echo(fit(text)))


def _leave_if_armed(context: DeviceContext, armed: bool) -> None:
    if armed and context.device_to_read.reboot_command is not None:
        echo("leaving the menu: the machine reboots to start the trial")
        raise _Leave()
    if armed:
        echo("reboot to start the trial")
