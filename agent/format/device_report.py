"""The device report wire format (docs/STICK.md, "Reports"): one JSON document a device signs with
its own key and leaves on a stick, read back by the vendor's ``bundle report``.

    STICK/<product>/reports/<SERIAL>-<COUNTER>.json           the report (canonical JSON)
    STICK/<product>/reports/<SERIAL>-<COUNTER>.json.minisig   its minisign signature by the device key
    STICK/<product>/reports/REQUEST                           an empty file: "leave a report here"

The device builds it (agent/device_report.py), the vendor parses it (bundler/device_reports.py);
nobody else touches the layout. Pure: no files, no clock.

The signature's trusted comment is ``bundle device report serial=<SERIAL> counter=<N>``: it
binds the document type, the device and the counter into the global signature, so a report of
one device cannot pass for another's or for another number, and a signature over a report can
never be taken for a bundle's or a trust root's (the device key is in no trust root anyway).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agent.format.manifest import LABEL
from agent.format.stick import product_folder
from keys import strict_json
from keys.errors import Refused
from keys.strict_json import JSONShapeError, field

DOCUMENT_TYPE = "device-report"
FORMAT = 1
REPORTS = "reports"  # the folder under STICK/<product>/
REQUEST = "REQUEST"  # the marker a stick carries to ask the unattended path for a report
SUFFIX = ".json"
SIGNATURE_SUFFIX = ".minisig"  # minisign's default: `minisign -Vm FILE` finds FILE.minisig
# The last audit-log records a report carries (newest first), and the room they may take: a stick
# decides part of what is logged, so neither may grow with it (T-LOG).
DEFAULT_EVENTS = 50
MAX_EVENTS = 1000
EVENTS_BUDGET = 256 << 10
AUDIT_BUDGET = 512 << 10  # the installed-files audit, cut further if its lists are longer than this
MAX_REPORT_BYTES = 1 << 20  # what a vendor reads from one report file
COMMENT_PREFIX = "bundle device report"
_COMMENT = re.compile(COMMENT_PREFIX + r" serial=(\S+) counter=([1-9][0-9]{0,18})")
# Serial characters a FAT file name keeps as they are; any other (":" is a valid serial) is
# written %XX, so two serials never share a file name and the name stays on FAT.
_NAME_SAFE = re.compile(r"[A-Za-z0-9_+~@-]")
_FILE_NAME = re.compile(r"(.+)-([0-9]{8,19})\.json")


class MalformedReport(Refused):
    """A device report is not a report of this format (or not one this tool reads)."""


# --- names ------------------------------------------------------------------------------------------


def serial_in_name(serial: str) -> str:
    """``serial`` as it appears in a file name: letters, digits and ``_+~@-`` as they are, any
    other character (``.``, ``:``) as ``%XX``, so no name starts with ``.`` (hidden, or ``._``
    junk to the agent) and FAT can store every one."""
    return "".join(c if _NAME_SAFE.fullmatch(c) else f"%{ord(c):02X}" for c in serial)


def report_name(serial: str, counter: int) -> str:
    """``<SERIAL>-<COUNTER:08d>.json``: a device's reports sort by number in a listing."""
    return f"{serial_in_name(serial)}-{counter:08d}{SUFFIX}"


def signature_name(report: str) -> str:
    return report + SIGNATURE_SUFFIX


def is_report_name(name: str) -> bool:
    return _FILE_NAME.fullmatch(name) is not None


def reports_folder(product: str) -> str:
    """``<product>/reports``, relative to the stick. Raises StickLayoutError."""
    return f"{product_folder(product)}/{REPORTS}"


def request_path(product: str) -> str:
    return f"{reports_folder(product)}/{REQUEST}"


# --- the trusted comment -------------------------------------------------------------------------


def trusted_comment(serial: str, counter: int) -> str:
    assert LABEL.fullmatch(serial) and counter >= 1, (serial, counter)
    return f"{COMMENT_PREFIX} serial={serial} counter={counter}"


def parse_trusted_comment(comment: str) -> tuple[str, int] | None:
    """``(serial, counter)`` of a report signature's trusted comment, None if it is not one."""
    match = _COMMENT.fullmatch(comment)
    return None if match is None else (match[1], int(match[2]))


# --- building -----------------------------------------------------------------------------------------


def _shortened(value: Any, items: int) -> Any:
    """``value`` with every list cut to ``items`` entries, each cut saying how many it left out."""
    if isinstance(value, dict):
        return {k: _shortened(v, items) for k, v in value.items()}
    if isinstance(value, list):
        kept = [_shortened(v, items) for v in value[:items]]
        return kept + [f"... and {len(value) - items} more"] if len(value) > items else kept
    return value


def _size(value: Any) -> int:
    return len(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8"))


def bounded_audit(audit: dict | None, budget: int = AUDIT_BUDGET) -> dict | None:
    """The installed-files audit, its lists cut until it fits ``budget`` bytes."""
    if audit is None:
        return None
    for items in (1000, 100, 10, 0):
        cut = _shortened(audit, items)
        if _size(cut) <= budget:
            return cut
    return {"omitted": f"the audit result of {_size(audit)} bytes does not fit a report"}


def bounded_events(events: list[dict], count: int = DEFAULT_EVENTS, budget: int = EVENTS_BUDGET
                   ) -> tuple[list[dict], int]:
    """The newest ``count`` events that fit ``budget`` bytes together, and how many were left out."""
    kept, used = [], 0
    for event in events[:min(count, MAX_EVENTS)]:
        size = _size(event) + 4
        if used + size > budget:
            break
        kept.append(event)
        used += size
    return kept, len(events) - len(kept)


def build_report(*, serial: str, product: str, hardware: str, status: dict, audit: dict | None,
                 trust_root_version: int | None, agent_version: str, events: list[dict], counter: int,
                 problems: list[str] = ()) -> bytes:
    """The report's bytes: canonical JSON (sorted keys), bounded by MAX_REPORT_BYTES.

    ``status`` is what ``bundle-agent status`` reports (agent/lifecycle.py ``status``) without
    its ``device``; ``audit`` the installed-files audit of the running environment, if one was
    made; ``events`` the audit log's records, newest first (cut to DEFAULT_EVENTS within
    EVENTS_BUDGET); ``problems`` what could not be found out (a damaged state, no trust root).
    """
    assert counter >= 1 and LABEL.fullmatch(serial), (serial, counter)
    kept, omitted = bounded_events(events)
    document = {
        "type": DOCUMENT_TYPE, "format": FORMAT,
        "serial": serial, "product": product, "hardware": hardware, "counter": counter,
        "agent_version": agent_version, "trust_root_version": trust_root_version,
        "committed_environment": status.get("committed_environment"),
        "components": status.get("components", {}),
        "environments": [{"name": e["name"], "flags": e["flags"], "identity": e["identity"]}
                         for e in status.get("environments", [])],
        "pending": status.get("pending"), "last_result": status.get("last_result"),
        "audit": bounded_audit(audit), "events": kept, "events_omitted": omitted,
        "problems": list(problems),
    }
    data = strict_json.dumps(document)
    assert len(data) <= MAX_REPORT_BYTES, len(data)  # every part is bounded above
    return data


# --- parsing (the vendor's side) -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceReport:
    """A parsed report. Parsing decides nothing: only bundler/device_reports.py says who signed it."""

    serial: str
    product: str
    hardware: str
    counter: int
    document: dict

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "DeviceReport":
        """Raises MalformedReport."""
        try:
            document = strict_json.loads(data, limit=MAX_REPORT_BYTES)
            kind = field(document, "type", str, context="report")
            if kind != DOCUMENT_TYPE:
                raise JSONShapeError(f"document type is {kind!r}, not {DOCUMENT_TYPE!r}")
            major = field(document, "format", int, context="report")
            if major != FORMAT:
                raise JSONShapeError(f"format version {major} is not supported (this tool reads {FORMAT})")
            labels = {name: field(document, name, str, context="report") for name in ("serial", "product", "hardware")}
            for name, value in labels.items():
                if not LABEL.fullmatch(value):
                    raise JSONShapeError(f"report: {name} {value!r} is not a label (letters, digits and ._+:~@-)")
            counter = field(document, "counter", int, context="report")
            if counter < 1:
                raise JSONShapeError(f"report: counter {counter} must be 1 or more")
            field(document, "agent_version", str, context="report")
            field(document, "components", dict, context="report")
            field(document, "environments", list, context="report")
            field(document, "events", list, context="report")
            version = document.get("trust_root_version")
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise JSONShapeError("report: trust_root_version must be an integer or null")
        except JSONShapeError as error:
            raise MalformedReport(f"not a device report: {error}", where=where,
                                  hint="give the .json file bundle-agent wrote to the stick's reports folder") from None
        return cls(counter=counter, document=document, **labels)
