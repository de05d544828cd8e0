"""``bundle report verify | show``: device reports a technician brings back on a stick
(docs/STICK.md, "Reports")."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import click

from agent.cli.errors import error_document, print_error
from agent.cli.log import one_line
from agent.cli.output import json_option, print_json
from agent.format.device_report import MAX_REPORT_BYTES, DeviceReport
from bundler.cli.options import EXISTING_DIR, EXISTING_FILE
from bundler.device_reports import Registry, Verdict, check_reports, report_paths
from keys.errors import Refused
from keys.files import read_capped
from keys.printable import echo, printable

WIDTH = 80
_INDENT = " " * 10


@click.group("report")
def report_group() -> None:
    """Device reports: check who wrote them (verify), read one (show)."""


def _verdict_lines(verdict: Verdict) -> list[str]:
    """The verdict on one line, then the reason and hint indented, wrapped to 80 columns."""
    device = f"device {verdict.serial} report {verdict.counter}" if verdict.serial else "device unknown"
    if verdict.verdict == "refused" and verdict.serial:
        device = f"claims device {verdict.serial} report {verdict.counter}"
    lines = [printable(f"{verdict.verdict:9} {verdict.path.name}: {device}")]
    for label, text in (("", verdict.reason), ("hint: ", verdict.hint)):
        if text and verdict.verdict != "verified":
            lines += textwrap.wrap(printable(label + text), WIDTH, initial_indent=_INDENT, subsequent_indent=_INDENT)
    return lines


@report_group.command("verify")
@click.argument("reports", metavar="REPORT...", nargs=-1, required=True,
                type=click.Path(exists=True, path_type=Path))
@click.option("--devices", "devices", type=EXISTING_DIR, required=True, metavar="DIR",
              help="The registry: one SERIAL.pub per registered device (what bundle-agent identity --pub "
                   "prints), and SERIAL.counter, the highest report number accepted.")
@click.option("--record", is_flag=True,
              help="Record each device's highest verified report number in DIR/SERIAL.counter, so a later "
                   "replay of these reports is caught.")
@json_option
def verify_reports(reports: tuple[Path, ...], devices: Path, record: bool, as_json: bool) -> None:
    """Check each REPORT (a report's .json file, with its .minisig beside it, or a folder standing for
    its .json files in name order): signed by the registered key of the device it names,
    unaltered, and newer than every report seen before from that device (in the order given,
    and the number recorded in the registry).

    Exit 0 if every report verified and none is a replay, 3 otherwise.
    """
    registry = Registry(devices)
    verdicts = check_reports(report_paths(list(reports)), registry)
    recorded = {}
    if record:
        for verdict in verdicts:
            if verdict.verdict == "verified" and registry.record(verdict.serial, verdict.counter):
                recorded[verdict.serial] = verdict.counter
    counts = {kind: sum(v.verdict == kind for v in verdicts) for kind in ("verified", "replay", "refused")}
    summary = (f"{len(verdicts)} report(s): {counts['verified']} verified, {counts['replay']} replayed, "
               f"{counts['refused']} refused")
    document = {"devices": str(devices), "reports": [v.to_json() for v in verdicts], "counts": counts,
                "recorded": recorded}
    failure = None
    if counts["replay"] or counts["refused"] or not verdicts:
        failure = Refused(summary if verdicts else "no report found", where=None,
                          hint="do not trust the reports marked refused or replay (reasons above)")
    if as_json:
        # The verdicts are the point, even when some report fails: this document carries them, and
        # the error's fields (error.schema.json's) when it exits 3 (docs/json/report-verify.schema.json).
        if failure is not None:
            document.update(error_document(failure.message, where=failure.where, hint=failure.hint,
                                           exit_code=failure.exit_code, refused=True))
        print_json(document)
    else:
        for verdict in verdicts:
            for line in _verdict_lines(verdict):
                echo(line)
        for serial, counter in sorted(recorded.items()):
            echo(printable(f"recorded report {counter} as the newest of device {serial}"))
        if failure is None:
            echo(summary)
    if failure is not None:
        print_error(failure)
        raise click.exceptions.Exit(failure.exit_code)  # reported above, in the command's own document


# --- show ------------------------------------------------------------------------------------------------


def _fit(text: str, indent: str = "  ") -> str:
    text = printable(indent + text).replace("\n", " ")
    return text if len(text) <= WIDTH else text[:WIDTH - 3] + "..."


def _audit_lines(audit) -> list[str]:
    """The installed-files audit's verdict, read defensively: the report is not verified here."""
    if not isinstance(audit, dict):
        return ["audit: none made for this report"]
    if "omitted" in audit:
        return [_fit(f"audit: {audit['omitted']}", "")]
    environment = audit.get("environment", "?")
    if audit.get("clean") is True:
        return [_fit(f"audit of {environment}: clean, every installed file as its signed manifest says", "")]
    lines = [_fit(f"audit of {environment}: NOT CLEAN", "")]
    components = audit.get("components") if isinstance(audit.get("components"), dict) else {}
    for name, found in sorted(components.items()):
        if not isinstance(found, dict):
            continue
        counts = ", ".join(f"{_count(found, kind)} {kind}" for kind in ("missing", "modified", "unexpected"))
        problem = found.get("problem")
        lines.append(_fit(f"{name}: {counts}" + (f"; {problem}" if problem else "")))
    return lines


def _count(found: dict, kind: str) -> int:
    value = found.get(f"{kind}_count", found.get(kind))
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return len(value) if isinstance(value, list) else 0


def show_lines(report: DeviceReport, events: int = 10) -> list[str]:
    document = report.document
    lines = [_fit(f"report {report.counter} of device {report.serial} ({report.product}, {report.hardware})", ""),
             "not verified: use bundle report verify to check who wrote it",
             _fit(f"agent {document.get('agent_version')}, trust root version "
                  f"{document.get('trust_root_version')}, committed environment "
                  f"{document.get('committed_environment')}", "")]
    components = document.get("components") or {}
    lines.append("components:" if components else "components: none installed")
    for name, component in sorted(components.items()):
        if isinstance(component, dict):
            lines.append(_fit(f"{name}: {component.get('version')} (sequence {component.get('sequence')})"))
    environments = document.get("environments") or []
    lines.append("environments (N booted now, R default, T next boot once):" if environments else "environments: none")
    for environment in environments:
        if isinstance(environment, dict):
            lines.append(_fit(f"{str(environment.get('name')):20} {environment.get('flags', '')}"))
    pending = document.get("pending")
    if isinstance(pending, dict):
        lines.append(_fit(f"pending: {pending.get('phase')} of {pending.get('environment')}", ""))
    last = document.get("last_result")
    if isinstance(last, dict):
        lines.append(_fit(f"last result: {last.get('message')}", ""))
    lines += _audit_lines(document.get("audit"))
    for problem in document.get("problems") or []:
        lines.append(_fit(f"could not be found out: {problem}", ""))
    records = [r for r in document.get("events") or [] if isinstance(r, dict)][:events]
    if records:
        lines.append(f"last {len(records)} events, newest first:")
        lines += [one_line(r, WIDTH - 2) for r in records]
        lines[-len(records):] = ["  " + line for line in lines[-len(records):]]
    return lines


@report_group.command("show")
@click.argument("report_path", metavar="REPORT", type=EXISTING_FILE)
@click.option("-n", "--events", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the report's audit-log events to show, newest first.")
@json_option
def show_report(report_path: Path, events: int, as_json: bool) -> None:
    """Show what the device report REPORT (a .json file) says. It shows, it does not vouch: check
    it with bundle report verify."""
    report = DeviceReport.from_bytes(read_capped(report_path, MAX_REPORT_BYTES, what="report"), where=report_path)
    if as_json:
        print_json({"path": str(report_path), "verified": False, "report": json.loads(json.dumps(report.document))})
        return
    for line in show_lines(report, events):
        echo(line)
