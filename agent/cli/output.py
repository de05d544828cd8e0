"""What the commands of both command lines print: readable text for people, ``--json`` for
machines. Every name from a medium goes through ``keys/printable.py``.

Every ``--json`` document is one JSON object on standard output with ``"ok"`` and
``"version"`` (:data:`agent.cli.errors.JSON_VERSION`); each command's shape is published in
docs/json/ and checked by tests/test_json_output.py. A failure prints the error document
instead (agent/cli/errors.py).
"""

from __future__ import annotations

import json

import click

from agent.cli.errors import JSON_OUTPUT, JSON_VERSION
from agent.report import Report
from keys.printable import echo, printable_data


def _remember_json(ctx: click.Context, _param, value: bool) -> bool:
    if value:  # the group reports a failure as JSON too (agent/cli/errors.py)
        ctx.meta[JSON_OUTPUT] = True
    return value


def json_option(command):
    """``--json``: the command's result as one JSON document on stdout, its failure too."""
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json,
                        help="Print the result, or the error, as one JSON document on stdout (docs/json/).")(command)


def print_json(value: dict) -> None:
    """``value`` as a --json document: ``ok`` and ``version`` first, unless it has them."""
    echo(json.dumps(printable_data({"ok": True, "version": JSON_VERSION, **value}), indent=2))


def print_outcome(as_json: bool, message: str, **fields) -> None:
    """What a command that writes files did: ``message`` for people, or with ``--json`` a
    document holding it and ``fields`` (docs/json/files.schema.json)."""
    if as_json:
        print_json({"message": message, **fields})
    else:
        echo(message)


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
