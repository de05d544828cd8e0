"""``bundle-agent log [--json] [-n N]``: the audit log, newest first (docs/AGENT.md, "Logs").

For people one line per record that fits 80 columns (time, event, then the details, cut with
``...``); for scripts the records themselves. Reading needs no lock: the log is append-only and
each record is one line written at once.
"""

from __future__ import annotations

import json

import click

from agent.cli.context import DeviceContext
from agent.cli.output import json_option, print_json
from agent.state_dir import unusable
from keys.printable import echo, printable

WIDTH = 80
# Shown first, being what a person looks for in a line cut to 80 columns; the rest by name.
_FIRST = ("environment", "source", "reason", "to", "healthy", "detail")
pass_context = click.make_pass_decorator(DeviceContext)


def one_line(record: dict, width: int = WIDTH) -> str:
    """``TIME EVENT key=value ...`` in at most ``width`` characters."""
    keys = sorted((k for k in record if k not in ("time", "event")),
                  key=lambda k: (_FIRST.index(k) if k in _FIRST else len(_FIRST), k))
    details = " ".join(f"{key}={_text(record[key])}" for key in keys)
    text = printable(f"{record.get('time', '?')} {record.get('event', '?')} {details}".rstrip()).replace("\n", " ")
    return text if len(text) <= width else text[:width - 3] + "..."


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@click.command("log")
@click.option("-n", "--lines", "count", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many records to show, newest first.")
@json_option
@pass_context
def log_command(context: DeviceContext, count: int, as_json: bool) -> None:
    """The audit log, newest record first: every decision and failure with its reason."""
    device = context.device_to_read
    try:
        records = device.audit.newest(count)
    except OSError as error:
        raise unusable(error, device.state_dir.root, "read the audit log") from None
    if as_json:
        print_json({"log": str(device.audit.path), "records": records})
        return
    if not records:
        echo(f"no records in {device.audit.path}")
    for record in records:
        echo(one_line(record))
