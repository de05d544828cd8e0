"""Checking device reports on the vendor's side (docs/STICK.md, "Reports").

The registry is a folder the vendor keeps: ``<SERIAL>.pub``, the public key each device printed
with ``bundle-agent identity`` when it was provisioned, and ``<SERIAL>.counter``, the highest
report number already accepted from it (written by ``bundle report verify --record``).

A report is trusted only once its signature verifies with the key registered for the serial its
signature names, and the document then says the same serial and number (verify, then parse:
STYLE.md 3). Whether a number is new is a separate, pure decision over the verified reports in
the order given (:func:`find_replays`): a report whose number does not grow for its device is a
replay - an old report shown again, or a device whose state was reset.

:func:`verify_report` and :func:`find_replays` read no files; the rest of the module does the I/O.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from agent.format.device_report import (MAX_REPORT_BYTES, DeviceReport, MalformedReport, parse_trusted_comment,
                                        signature_name)
from agent.format.manifest import LABEL
from keys.errors import BadSignature, Failed, MalformedKey, Refused, UpdateError
from keys.files import read_capped, write_atomic
from keys.minisign import MAX_PUBLIC_KEY_FILE_BYTES, MAX_SIGNATURE_FILE_BYTES, PublicKey, Signature

PUBLIC_SUFFIX = ".pub"
COUNTER_SUFFIX = ".counter"
_COUNTER = re.compile(rb"(0|[1-9][0-9]{0,18})\n?")
_REGISTER_HINT = ("register the device: save what `bundle-agent identity --pub` prints on it as "
                  "DIR/SERIAL.pub")


class UnknownDevice(Refused):
    """The report names a device the registry does not hold."""


class ReportMismatch(Refused):
    """The signed trusted comment and the report disagree on the device or the number."""


# --- pure decisions ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature verified with its device's registered key."""

    report: DeviceReport
    key_id: str
    where: str | None = None

    @property
    def serial(self) -> str:
        return self.report.serial

    @property
    def counter(self) -> int:
        return self.report.counter


def claimed_device(signature: Signature, *, where=None) -> tuple[str, int]:
    """``(serial, counter)`` the signature's trusted comment names: where to look the key up.
    Not yet authenticated. Raises MalformedReport."""
    claimed = parse_trusted_comment(signature.trusted_comment)
    if claimed is None or not LABEL.fullmatch(claimed[0]):
        raise MalformedReport("the signature is not a device report's (its trusted comment is "
                              f"{signature.trusted_comment[:80]!r})", where=where,
                              hint="give a report bundle-agent wrote, with its .minisig beside it")
    return claimed


def verify_report(data: bytes, signature: Signature, device_key: PublicKey | None, *,
                  where=None) -> VerifiedReport:
    """Trust ``data`` as a report of the device its signature names, whose registered key is
    ``device_key`` (None: not registered). Both minisign signatures must verify over the exact
    bytes before the document is parsed; then the document must name the same serial and number
    as the signed trusted comment.

    Raises MalformedReport, UnknownDevice, BadSignature (a flipped byte, another key),
    ReportMismatch.
    """
    serial, counter = claimed_device(signature, where=where)
    if device_key is None:
        raise UnknownDevice(f"device {serial} is not registered (its report is signed by key "
                            f"{signature.key_id_text})", where=where, hint=_REGISTER_HINT)
    if signature.key_id != device_key.key_id:
        raise BadSignature(f"signed by key {signature.key_id_text}, but device {serial} is registered with key "
                           f"{device_key.id}", where=where,
                           hint="the report is not from the registered machine; if its key was recreated, "
                                "register the new one (bundle-agent identity --pub)")
    signature.verify(device_key, data, where=where)
    report = DeviceReport.from_bytes(data, where=where)
    if (report.serial, report.counter) != (serial, counter):
        raise ReportMismatch(f"the report says device {report.serial} report {report.counter}, its signature "
                             f"device {serial} report {counter}", where=where,
                             hint="the report was altered: do not trust it")
    return VerifiedReport(report=report, key_id=device_key.id, where=None if where is None else str(where))


def find_replays(reports: Sequence[VerifiedReport], recorded: dict[str, int]) -> list[int | None]:
    """For each report, in the order given: None if its number is greater than every number seen
    before for its device (in ``recorded``, then in the reports before it), else that highest
    number - the report is a replay."""
    highest = dict(recorded)
    verdicts: list[int | None] = []
    for verified in reports:
        before = highest.get(verified.serial, 0)
        if verified.counter <= before:
            verdicts.append(before)
        else:
            verdicts.append(None)
            highest[verified.serial] = verified.counter
    return verdicts


# --- the verdict of each report, for the command line -------------------------------------------------------


@dataclass
class Verdict:
    path: Path
    verdict: str  # "verified", "replay" or "refused"
    serial: str | None = None
    counter: int | None = None
    key_id: str | None = None
    reason: str | None = None
    hint: str | None = None

    def to_json(self) -> dict:
        return {"path": str(self.path), "verdict": self.verdict, "serial": self.serial, "counter": self.counter,
                "key_id": self.key_id, "reason": self.reason, "hint": self.hint}


# --- I/O ----------------------------------------------------------------------------------------------------


def report_paths(paths: Sequence[Path]) -> list[Path]:
    """The report files given: a folder stands for its ``*.json`` files in name order (a stick's
    ``<product>/reports``: each device's reports then come by number). Raises Failed."""
    found = []
    for path in paths:
        if path.is_dir():
            try:
                names = sorted(n for n in os.listdir(path) if n.endswith(".json") and not n.startswith("."))
            except OSError as error:
                raise Failed(f"cannot list the folder: {error.strerror}", where=path) from None
            found += [path / n for n in names]
        else:
            found.append(path)
    return found


def read_report(path: Path) -> tuple[bytes, Signature]:
    """A report file and its ``.minisig``. Raises Failed, Refused, MalformedSignature."""
    data = read_capped(path, MAX_REPORT_BYTES, what="report")
    signature_file = path.with_name(signature_name(path.name))
    if not os.path.lexists(signature_file):
        raise Refused("the report is not signed: its .minisig is missing", where=path,
                      hint=f"copy {signature_file.name} from the stick beside it")
    raw = read_capped(signature_file, MAX_SIGNATURE_FILE_BYTES, what="report signature")
    return data, Signature.from_bytes(raw, where=signature_file)


class Registry:
    """The vendor's folder of registered devices (see the module's docstring)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise Failed("the device registry is not a folder", where=self.directory,
                         hint="give --devices the folder holding one SERIAL.pub per registered device")

    def key(self, serial: str) -> PublicKey | None:
        """The registered key of ``serial`` (a label: no path can be made of it), None if there is
        none. Raises MalformedKey, Failed."""
        assert LABEL.fullmatch(serial), serial
        path = self.directory / f"{serial}{PUBLIC_SUFFIX}"
        if not os.path.lexists(path):
            return None
        try:
            return PublicKey.from_bytes(read_capped(path, MAX_PUBLIC_KEY_FILE_BYTES, what="device public key"),
                                        where=path)
        except MalformedKey as error:
            raise Failed(f"the registered key is damaged: {error.message}", where=path,
                         hint="save the device's public key again (bundle-agent identity --pub)") from None

    def counter_path(self, serial: str) -> Path:
        assert LABEL.fullmatch(serial), serial
        return self.directory / f"{serial}{COUNTER_SUFFIX}"

    def recorded(self, serial: str) -> int:
        """The highest report number recorded for ``serial``, 0 if none. Raises Failed."""
        path = self.counter_path(serial)
        if not os.path.lexists(path):
            return 0
        data = read_capped(path, 32, what="recorded report number")
        match = _COUNTER.fullmatch(data)
        if match is None:
            raise Failed("the recorded report number is damaged (not a number)", where=path,
                         hint="write the highest report number accepted from this device into it")
        return int(match[1])

    def record(self, serial: str, counter: int) -> bool:
        """Record ``counter`` as the highest accepted from ``serial`` if it is higher; True if so."""
        if counter <= self.recorded(serial):
            return False
        write_atomic(self.counter_path(serial), f"{counter}\n".encode("ascii"))
        return True


def check_reports(paths: Sequence[Path], registry: Registry) -> list[Verdict]:
    """The verdict of every report in ``paths``, in order: each refused one with its reason, the
    verified ones then checked for replays against the registry's recorded numbers."""
    verdicts: list[Verdict] = []
    verified: list[tuple[Verdict, VerifiedReport]] = []
    for path in paths:
        verdict = Verdict(path, "refused")
        verdicts.append(verdict)
        try:
            data, signature = read_report(path)
            verdict.key_id = signature.key_id_text
            verdict.serial, verdict.counter = claimed_device(signature, where=path)
            report = verify_report(data, signature, registry.key(verdict.serial), where=path)
        except UpdateError as error:
            verdict.reason, verdict.hint = error.message, error.hint
            continue
        verdict.verdict = "verified"
        verified.append((verdict, report))
    recorded = {serial: registry.recorded(serial) for serial in {r.serial for _, r in verified}}
    for (verdict, report), before in zip(verified, find_replays([r for _, r in verified], recorded)):
        if before is not None:
            verdict.verdict = "replay"
            verdict.reason = (f"report {report.counter} of device {report.serial} is not newer than report "
                              f"{before}, already seen from this device")
            verdict.hint = ("an old report was shown again, or the machine's state was reset: ask for a new report "
                            "from the machine")
    return verdicts
