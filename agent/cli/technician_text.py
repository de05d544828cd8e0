"""The technician's results as text for people: lines of at most 80 columns, numbers and words
only (no colour, no box drawing, nothing a dumb terminal cannot show). Both the subcommands and
the menu print these lines (agent/cli/technician.py, agent/cli/menu.py)."""

from __future__ import annotations

import textwrap

from agent.cli.log import one_line
from agent.report import Report
from keys.printable import printable

WIDTH = 80


def fit(text: str, width: int = WIDTH) -> str:
    """One printable line of at most ``width`` columns, cut with ``...``."""
    text = printable(text).replace("\n", " ")
    return text if len(text) <= width else text[:width - 3] + "..."


def wrapped(text: str, width: int = WIDTH) -> list[str]:
    """A message that must be read whole, wrapped to ``width`` columns (later lines indented)."""
    return textwrap.wrap(printable(text).replace("\n", " "), width, subsequent_indent="  ") or [""]


def report_lines(report: Report) -> list[str]:
    """An install's or a repair's report (agent/cli/output.py print_report), wrapped, not cut."""
    lines = []
    for source, reason in report.refusals:
        lines += wrapped(f"refused {source}: {reason}")
    for decision in report.decisions:
        if decision.verdict != "chosen":
            lines += wrapped(f"skipped {decision.bundle} {decision.component or ''}: {decision.reason}")
    for name, change in sorted(report.installed.items()):
        lines += wrapped(f"{name}: {change}")
    return lines + wrapped(report.message)


def status_lines(status: dict) -> list[str]:
    device = status["device"]
    lines = [f"{device['product']} {device['hardware']} serial {device['serial']}",
             f"agent {status['agent_version']}, trust root version {status['trust_root_version']}, "
             f"{status['commits']} commits so far"]
    lines.append(f"committed: {status['committed_environment'] or 'nothing (not provisioned, or state lost)'}")
    lines.append("components:")
    for name, c in status["components"].items():
        lines.append(f"  {name}: {c['version']} (sequence {c['sequence']}, floor {c['floor']})")
    others = {n: f for n, f in status["floors"].items() if n not in status["components"]}
    for name, floor in others.items():
        lines.append(f"  {name}: not installed (floor {floor})")
    lines.append("environments (N booted now, R default, T next boot once):")
    for e in status["environments"]:
        when = f", committed at commit {e['committed_at']}" if e["committed_at"] is not None else ""
        lines.append(f"  {e['name']:10} {e['flags']:3} {e['role']}{when}")
        if e["holds"]:
            lines.append("    holds " + ", ".join(f"{n} {c['version']} (seq {c['sequence']})"
                                                 for n, c in e["holds"].items()))
    pending = status["pending"]
    if pending:
        lines.append(f"pending: {pending['phase']} of {pending['environment']}")
    if status["last_result"]:
        lines.append(f"last result: {status['last_result']['message']}")
    if status["last_results"]:
        lines.append("recent outcomes, newest first:")
        lines += ["  " + one_line(record, WIDTH - 2) for record in status["last_results"]]
    lines += [f"problem: {p}" for p in status["problems"]]
    return [fit(line) for line in lines]


def stick_lines(contents: dict) -> list[str]:
    lines = [f"stick {contents['stick']}", contents["message"]]  # the message never cut by a long path
    if contents["would_install"]:
        lines.append("would install: " + ", ".join(f"{n} sequence {s}" for n, s in contents["would_install"].items()))
    for row in contents["bundles"]:
        what = row["component"] or "(whole bundle)"
        if row["sequence"] is not None:
            what += f" {row['version']} seq {row['sequence']} {row['kind']}"
        lines.append(f"  {row['bundle']} {what}: {row['decision']}")
        lines.append(f"    {row['reason']}")
    return [fit(line) for line in lines]


def audit_lines(audit: dict) -> list[str]:
    verdict = "clean" if audit["clean"] else "NOT CLEAN"
    lines = [f"audit of {audit['environment']}: {verdict}"]
    if audit.get("problem"):
        lines.append(f"  {audit['problem']}")
    for name, result in audit["components"].items():
        if result.get("problem"):
            lines.append(f"  {name}: {result['problem']}")
            continue
        counts = [f"{result[k + '_count']} {k}" for k in ("missing", "modified", "unexpected") if result[k + "_count"]]
        lines.append(f"  {name} {result.get('version')} (sequence {result.get('sequence')}): "
                     + (", ".join(counts) if counts else "every file as signed"))
        for path in result["missing"]:
            lines.append(f"    missing    {path}")
        for change in result["modified"]:
            lines.append(f"    modified   {change['path']} ({', '.join(change['what'])})")
        for path in result["unexpected"]:
            lines.append(f"    unexpected {path}")
        for path in result["other_filesystems"]:
            lines.append(f"    not audited {path} (another filesystem is mounted there)")
        shown = sum(len(result[k]) for k in ("missing", "modified", "unexpected"))
        total = sum(result[k + "_count"] for k in ("missing", "modified", "unexpected"))
        if total > shown:
            lines.append(f"    ... and {total - shown} more (--json lists the first of each kind)")
    return [fit(line) for line in lines]


def log_lines(records: list[dict]) -> list[str]:
    return [one_line(record, WIDTH) for record in records] or ["no records"]
