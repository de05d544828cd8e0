"""Signed device reports left on a stick (docs/STICK.md, "Reports"): what the machine runs and has
seen, signed with its own key (agent/identity.py) for the vendor's ``bundle report verify``.

The format is agent/format/device_report.py; this module gathers the facts, numbers the report,
signs it and puts it on the stick (agent/stick_file.py).

Numbering: STATE/report-counter holds the number of the last report. It is raised and made
durable before the report is signed, so no number is ever used twice, even by a report lost to a
power cut (a lost number only leaves a gap); the vendor treats a number that does not grow as a
replay.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from agent import agent_version
from agent.beneath import Beneath, EscapingPath, NotRegularFile, open_beneath
from agent.device import Device
from agent.format import device_report as fmt
from agent.format.stick import StickLayoutError
from agent.identity import load_identity, sign_report
from agent.lifecycle import status
from agent.state_dir import StateDir, StateUnusable
from agent.stick_file import check_writable, put_verified, stick_failure
from agent.trust_store import current_root
from keys.errors import Failed, UpdateError
from keys.files import read_capped, write_atomic

_COUNTER = re.compile(rb"(0|[1-9][0-9]{0,18})\n")
MAX_COUNTER = 10 ** 19 - 1


class DamagedCounter(StateUnusable):
    """STATE/report-counter is not a number: the device cannot tell which numbers it has used."""


def last_counter(state_dir: StateDir) -> int:
    """The number of the last report (0 before the first). Raises DamagedCounter, StateUnusable."""
    path = state_dir.report_counter
    try:
        data = read_capped(path, 32, what="report counter")
    except Failed as error:
        if not os.path.lexists(path):
            return 0
        raise StateUnusable(error.message, where=path, hint="run bundle-agent as root") from None
    except UpdateError as error:  # not a regular file, or too large
        raise DamagedCounter(f"the report counter is damaged ({error.message})", where=path,
                             hint=_DAMAGED_HINT) from None
    match = _COUNTER.fullmatch(data)
    if match is None:
        raise DamagedCounter("the report counter is damaged (not a number)", where=path, hint=_DAMAGED_HINT)
    return int(match[1])


_DAMAGED_HINT = ("write the number of the last report this machine left (see its last report-written record in "
                 "bundle-agent log, or the vendor's registry) into the file, or a larger one; until then no report "
                 "is made, as one could reuse a number")


def next_counter(state_dir: StateDir) -> int:
    """The next report's number, made durable before it is returned (call with the device's lock
    held). Raises DamagedCounter, StateUnusable."""
    counter = last_counter(state_dir) + 1
    if counter > MAX_COUNTER:
        raise DamagedCounter("the report counter is at its largest value", where=state_dir.report_counter,
                             hint=_DAMAGED_HINT)
    write_atomic(state_dir.report_counter, f"{counter}\n".encode("ascii"), mode=0o644)
    return counter


def _facts(device: Device) -> tuple[dict, int | None, list[str]]:
    """What ``status`` says (minus the device's names), the trust-root version, and what could not
    be found out: a report matters most from a machine in trouble, so nothing here stops it."""
    problems = []
    try:
        summary = status(device)
        summary.pop("device", None)
    except UpdateError as error:
        summary = {}
        problems.append(f"state: {error}")
    try:
        root_version = current_root(device.config.trust_root, device.state_dir.trust).version
    except UpdateError as error:
        root_version = None
        problems.append(f"trust root: {error}")
    return summary, root_version, problems


def _events(device: Device, count: int) -> tuple[list[dict], list[str]]:
    try:
        return device.audit.newest(count), []
    except OSError as error:
        return [], [f"audit log: {error.strerror}"]


def make_report(device: Device, counter: int, audit: dict | None = None,
                events: int = fmt.DEFAULT_EVENTS) -> bytes:
    """The report's bytes for ``device`` under number ``counter``."""
    summary, root_version, problems = _facts(device)
    records, more = _events(device, events)
    facts = device.facts
    return fmt.build_report(serial=facts.serial, product=facts.product, hardware=facts.hardware, status=summary,
                            audit=audit, trust_root_version=root_version, agent_version=agent_version(),
                            events=records, counter=counter, problems=problems + more)


def write_report(device: Device, stick_mount: Path, audit: dict | None = None,
                 events: int = fmt.DEFAULT_EVENTS) -> Path:
    """Sign a new report and leave it on the stick mounted at ``stick_mount``, as
    ``<product>/reports/<SERIAL>-<COUNTER>.json`` and its ``.minisig`` (the signature first: a
    report on the stick is never unsigned). Call with the device's lock held. Returns the
    report's path. ``audit`` is the installed-files audit to include, if one was made.

    Raises NoIdentity (nothing spent), StickReadOnly (nothing spent), StickLayoutError,
    StickReadBackFailed, DamagedCounter, Failed.
    """
    stick_mount = Path(stick_mount)
    facts = device.facts
    folder = fmt.reports_folder(facts.product)
    public_key = load_identity(device.state_dir)  # before a number is spent
    check_writable(stick_mount)
    counter = next_counter(device.state_dir)
    data = make_report(device, counter, audit, events)
    signature = sign_report(device.state_dir, data, facts.serial, counter)
    name = fmt.report_name(facts.serial, counter)
    try:
        with Beneath.open_root(stick_mount, follow_root=True) as stick:
            with stick.directory(folder, create=True) as reports:
                put_verified(reports, fmt.signature_name(name), signature.to_bytes())
                put_verified(reports, name, data)
    except EscapingPath as error:
        raise StickLayoutError(f"{folder} is not a plain folder on the stick ({error.message})", where=stick_mount,
                               hint="remove what stands in its place, or use another stick") from None
    except OSError as error:
        raise stick_failure(error, str(stick_mount / folder), "create the reports folder") from None
    path = stick_mount / folder / name
    device.audit.record("report-written", counter=counter, report=f"{folder}/{name}", key_id=public_key.id,
                        stick=str(stick_mount))
    return path


def report_requested(stick_mount: Path, product: str) -> bool:
    """True when the stick carries the marker ``<product>/reports/REQUEST`` as a regular file,
    reached without following any symlink (a symlink is no request). Raises Failed when the
    stick cannot be read."""
    try:
        relative = fmt.request_path(product)
    except StickLayoutError:
        return False  # no folder FAT could hold for this product: no request either
    try:
        fd = open_beneath(Path(stick_mount), relative, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
    except (FileNotFoundError, NotADirectoryError, EscapingPath, NotRegularFile):
        return False
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            return False
        raise Failed(f"cannot look for {relative}: {error.strerror}", where=stick_mount,
                     hint="the stick may have been removed") from None
    os.close(fd)
    return True
