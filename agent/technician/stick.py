"""What is on this stick: every bundle and component with the decision an install would make
and why, without changing anything (no rotation kept, nothing logged, nothing copied).

The verdict tells apart what a technician holding a stick must tell apart: an empty stick, a
stick for another product, a machine already up to date, and a stick that would install.
"""

from __future__ import annotations

from pathlib import Path

from agent.choice import choose
from agent.device import Device
from agent.format.bundle_dir import MANIFEST
from agent.medium import bundle_folders
from agent.offer import read_offer
from agent.other_products import other_products
from agent.payload import Payload
from agent.report import Report, nothing_outcome
from keys.errors import UpdateError

# The verdicts, for people: what the stick means for this machine.
VERDICTS = {
    "would-install": "an install from this stick would stage an update",
    "nothing-on-medium": "no bundle for this product on the stick",
    "not-for-this-machine": "bundles, but none for this product and hardware",
    "up-to-date": "this machine already has what the stick carries, or newer",
    "no-applicable-update": "newer releases, but none applies to what is installed",
}


def stick_contents(device: Device, mount: Path, *, check_payload: bool = False) -> dict:
    """Each bundle on the stick at ``mount`` with what an install would decide, and the verdict.
    ``check_payload``: also read every stored byte of every verified bundle (slow; tells a
    damaged bundle apart). Raises the stick's layout errors, CorruptState, StateUnusable."""
    state = device.store.load()
    report = Report()
    root, found = read_offer(device, Path(mount), report, look_only=True)
    chosen, decisions = choose(device.facts, state.components, state.floors,
                               {bundle: entry.verified for bundle, entry in found.items()})
    rows = []
    damaged = {}
    if check_payload:
        for bundle, entry in found.items():
            try:
                with Payload(entry.path, entry.verified.manifest) as payload:
                    payload.verify_all()
            except UpdateError as error:
                damaged[bundle] = f"damaged: {error}"
    for decision in decisions:
        component = _component(found, decision.bundle, decision.component)
        verdict, reason = decision.verdict, decision.reason
        if decision.bundle in damaged:
            verdict, reason = "refused", damaged[decision.bundle]
        rows.append({"bundle": decision.bundle, "component": decision.component,
                     "version": component.version if component else None,
                     "sequence": component.sequence if component else None,
                     "kind": ("delta" if component.is_delta else "full") if component else None,
                     "decision": verdict, "reason": reason})
    for source, reason in report.refusals:
        rows.append({"bundle": source, "component": None, "version": None, "sequence": None, "kind": None,
                     "decision": "refused", "reason": reason})
    incomplete = [] if (Path(mount) / MANIFEST).is_file() else bundle_folders(Path(mount), device.config.product)[1]
    for name in incomplete:
        rows.append({"bundle": name, "component": None, "version": None, "sequence": None, "kind": None,
                     "decision": "incomplete", "reason": "no COMPLETE marker: the copy was interrupted; write it again"})
    would_install = bool(chosen) and not any(step.bundle in damaged for route in chosen.values() for step in route)
    verdict = "would-install" if would_install else nothing_outcome(decisions)
    others = other_products(Path(mount), device.config.product) if verdict == "nothing-on-medium" else []
    message = VERDICTS[verdict]
    if others:
        message += f"; the stick holds bundles for {', '.join(others)}"
    return {"stick": str(mount), "verdict": verdict, "message": message, "trust_root_version": root.version,
            "would_install": {name: route[-1].component.sequence for name, route in sorted(chosen.items())}
            if would_install else {},
            "other_products": others, "bundles": rows}


def _component(found, bundle: str, name: str | None):
    entry = found.get(bundle)
    if entry is None or name is None:
        return None
    return next((c for c in entry.verified.manifest.components if c.name == name), None)
