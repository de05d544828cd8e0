"""``bundle write``: a thin command over bundler/stick_write.py (docs/STICK.md)."""

from __future__ import annotations

import click

from agent.cli.output import json_option, print_json
from bundler.cli.options import EXISTING_DIR, root_chain_option
from agent.cli.progress import ProgressDisplay
from bundler.stick_write import write_stick
from keys.printable import echo

_STATUS_TEXT = {
    "written": "written",
    "replaced-incomplete": "written (replaced an incomplete copy)",
    "replaced-damaged": "written (replaced a copy that no longer verified)",
    "kept": "already there, verified in place",
}


@click.command("write")
@click.argument("stick", metavar="STICK_DIR", type=EXISTING_DIR)
@click.argument("bundles", metavar="BUNDLE_DIR...", nargs=-1, required=True, type=EXISTING_DIR)
@root_chain_option("A trust root to put on the stick.", required=True)
@json_option
def write(stick, bundles, root_paths, as_json):
    """Put each BUNDLE_DIR and the trust roots on the stick mounted at STICK_DIR, read every byte back,
    then mark each bundle complete (layout: docs/STICK.md).

    Each bundle is checked as a device would first; nothing is written if one is refused, the
    stick is short of space, or it would hold more bundles for the product than devices accept
    (docs/STICK.md, "Limits"). Running it again keeps what is already complete (after
    verifying it).
    """
    with ProgressDisplay("write") as progress:
        report = write_stick(stick, bundles, root_paths, progress=progress)
    if as_json:
        print_json(report.to_json())  # printable: paths need not be UTF-8
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
