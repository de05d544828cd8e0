"""``bundle write``: a thin command over bundler/stick_write.py (docs/STICK.md)."""

from __future__ import annotations

import json

import click

from bundler.cli.options import EXISTING_DIR, EXISTING_FILE
from bundler.progress import StepProgress
from bundler.stick_write import write_stick
from keys.printable import echo, printable_data

_STATUS_TEXT = {
    "written": "written",
    "replaced-incomplete": "written (replaced an incomplete copy)",
    "replaced-damaged": "written (replaced a copy that no longer verified)",
    "kept": "already there, verified in place",
}


@click.command("write")
@click.argument("stick", metavar="STICK_DIR", type=EXISTING_DIR)
@click.argument("bundles", metavar="BUNDLE_DIR...", nargs=-1, required=True, type=EXISTING_DIR)
@click.option("--root", "root_paths", type=EXISTING_FILE, multiple=True,
              required=True, help="Trust root to put on the stick; repeat for each version of the chain.")
@click.option("--json", "as_json", is_flag=True)
def write(stick, bundles, root_paths, as_json):
    """Put the bundles and the trust roots on the stick mounted at STICK_DIR, read every byte back,
    then mark each bundle complete (layout: docs/STICK.md).

    Each bundle is checked as a device would first; nothing is written if one is refused, the
    stick is short of space, or it would hold more bundles for the product than devices accept
    (docs/STICK.md, "Limits"). Running it again keeps what is already complete (after
    verifying it).
    """
    with StepProgress() as progress:
        report = write_stick(stick, bundles, root_paths, progress=progress)
    if as_json:
        echo(json.dumps(printable_data(report.to_json()), indent=2))  # paths need not be UTF-8
        return
    echo(f"{report.stick}: {report.product}, every byte read back and verified")
    for root in report.roots:
        status = "written" if root["status"] == "written" else "already there, read back"
        echo(f"  trust root version {root['version']}: {status}")
    for bundle in report.bundles:
        echo(f"  bundle {bundle['id']} ({', '.join(bundle['components'])}) from {bundle['source']}: "
             f"{_STATUS_TEXT[bundle['status']]}")
    if report.available is None:
        echo("  free space: the stick's filesystem does not report it, so it was not checked first")
