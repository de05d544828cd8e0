"""``root verify``: check a trust-root chain. Registered by both command lines: the device's
``bundle-agent root`` here, the vendor's ``bundle root`` in bundler/cli/root.py.

Everything it prints goes through ``keys/printable.py``: a path that is not UTF-8 must not crash
it, and a name with control characters must not drive the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.cli.output import json_option, print_json
from keys.detached import load_root_candidate, load_root_chain
from keys.printable import echo
from keys.rotation import VerifiedRoot, accept_chain

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


def describe_root(verified: VerifiedRoot, name: str) -> list[str]:
    root = verified.root
    lines = [f"{name}: trusted root version {root.version}"]
    lines += [f"  {result.describe()}" for result in verified.evidence]
    lines.append(f"  root keys (threshold {root.root_keys.threshold} of {len(root.root_keys.keys)}): "
                 + ", ".join(k.label() for k in root.root_keys.keys))
    lines.append(f"  release signers (threshold {root.release_signers.threshold} of "
                 f"{len(root.release_signers.keys)}): " + ", ".join(k.label() for k in root.release_signers.keys))
    if root.revoked_keys:
        lines.append("  revoked: " + ", ".join(k.label() for k in root.revoked_keys))
    return lines


@click.command("verify")
@click.argument("root_path", metavar="ROOT.json", type=_existing_file)
@click.option("--root", "--trusted", "trusted_paths", multiple=True, type=_existing_file,
              help="An older trust root already trusted; repeat for each version between it and ROOT.json, "
                   "in any order (as everywhere, a chain of trust roots is one --root per version). The "
                   "oldest is the anchor; ROOT.json must follow from it one version at a time.")
@json_option
def verify_root(root_path: Path, trusted_paths: tuple[Path, ...], as_json: bool) -> None:
    """Check the trust root ROOT.json: its own root-key threshold, or a rotation from --root roots.

    Exit 0 if ROOT.json is trusted, 3 if refused (the message names what is missing).
    """
    # The target goes last, not sorted in: an older target must be refused as a replay.
    verified = accept_chain([*load_root_chain(trusted_paths), load_root_candidate(root_path)])
    if as_json:
        # As the agent's --json: no lone surrogate for strict parsers, no control character.
        print_json({"path": str(root_path), "trusted": True, "root_version": verified.version,
                    "evidence": [r.to_json() for r in verified.evidence], "root": json.loads(verified.raw)})
    else:
        echo("\n".join(describe_root(verified, str(root_path))))


@click.group("root")
def root_group() -> None:
    """Check trust roots (for example the chain carried on a stick)."""


root_group.add_command(verify_root)
