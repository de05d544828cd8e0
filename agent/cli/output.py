"""What the agent's commands print: readable text for people, ``--json`` for machines. Every
name from a medium goes through ``keys/printable.py``."""

from __future__ import annotations

import json

from agent.report import Report
from keys.printable import echo, printable_data


def print_json(value) -> None:
    echo(json.dumps(printable_data(value), indent=2))


def print_report(report: Report, as_json: bool) -> None:
    """An install's or a provisioning's report: refusals, skipped bundles, changes, the outcome."""
    if as_json:
        print_json(report.to_json())
        return
    for source, reason in report.refusals:
        echo(f"refused {source}: {reason}")
    for decision in report.decisions:
        if decision.verdict != "chosen":
            echo(f"skipped {decision.bundle} {decision.component or ''}: {decision.reason}".replace("  ", " "))
    for name, change in sorted(report.installed.items()):
        echo(f"{name}: {change}")
    echo(report.message)
