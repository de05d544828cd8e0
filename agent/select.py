"""Choosing what to install from verified bundles: pure, no I/O, every decision with its reason.

Rules (docs/AGENT.md, "What gets installed"):
* the bundle is for this product and lists this hardware model (T-PRODUCT, T-HARDWARE);
* a component the machine does not have is installed from a full update only, and only if the
  bundle targets no serials or this machine's serial (T-TARGET);
* a newer sequence is installed from a full update or from a delta whose base is exactly the
  installed sequence and tree digest;
* the same sequence is a no-op; a lower one is refused as a replay (T-ROLLBACK) unless the
  signed manifest permits replacing exactly the installed sequence (downgrade_from);
* per component the newest candidate wins; a full update beats a delta of the same sequence only
  when no delta applies (deltas are cheaper, both verify to the same tree).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.format.manifest import Component
from agent.state import InstalledComponent
from agent.verify import VerifiedBundle


@dataclass(frozen=True)
class Device:
    product: str
    hardware: str
    serial: str


@dataclass(frozen=True)
class Choice:
    bundle: str  # bundle id
    component: Component


@dataclass(frozen=True)
class Decision:
    bundle: str
    component: str | None
    verdict: str  # "chosen", "not-applicable", "no-op", "refused"
    reason: str


def choose(device: Device, installed: dict[str, InstalledComponent], floors: dict[str, int],
           bundles: dict[str, VerifiedBundle]) -> tuple[dict[str, Choice], list[Decision]]:
    decisions: list[Decision] = []
    candidates: dict[str, list[Choice]] = {}
    for bundle_id, verified in sorted(bundles.items()):
        manifest = verified.manifest
        if manifest.product != device.product:
            decisions.append(Decision(bundle_id, None, "not-applicable",
                                      f"bundle is for product {manifest.product}, this machine is {device.product}"))
            continue
        if device.hardware not in manifest.hardware:
            decisions.append(Decision(bundle_id, None, "not-applicable",
                                      f"bundle is for hardware {', '.join(manifest.hardware)}, this machine is "
                                      f"{device.hardware}"))
            continue
        for component in manifest.components:
            verdict, reason = _judge(device, installed.get(component.name), floors.get(component.name), component)
            decisions.append(Decision(bundle_id, component.name, verdict, reason))
            if verdict == "candidate":
                candidates.setdefault(component.name, []).append(Choice(bundle_id, component))
    chosen = {name: max(options, key=lambda c: (c.component.sequence, c.component.is_delta, c.bundle))
              for name, options in candidates.items()}
    final = []
    for decision in decisions:
        if decision.verdict == "candidate":
            winner = chosen[decision.component]
            if winner.bundle == decision.bundle:
                decision = replace(decision, verdict="chosen")
            else:
                decision = replace(decision, verdict="not-applicable",
                                   reason=f"{decision.reason}; bundle {winner.bundle} has a newer or cheaper one")
        final.append(decision)
    return chosen, final


def _judge(device: Device, have: InstalledComponent | None, floor: int | None, update: Component) -> tuple[str, str]:
    to = f"{update.name} {update.version} (sequence {update.sequence})"
    if have is None:
        if update.is_delta:
            return "not-applicable", f"{to} is a delta, and this machine does not have {update.name}"
        if update.targets and device.serial not in update.targets:
            return "not-applicable", f"{to} is targeted at other machines (serial {device.serial} not listed)"
        return "candidate", f"new component {to}"
    current = f"sequence {have.sequence} ({have.version})"
    floor = have.sequence if floor is None else max(floor, have.sequence)
    if update.sequence == have.sequence:
        return "no-op", f"{to} is already installed"
    if update.sequence < floor:
        if have.sequence in update.downgrade_from:
            return ("candidate" if not update.is_delta or _base_matches(have, update) else "not-applicable",
                    f"{to} replaces {current}: a downgrade the signed manifest permits")
        return "refused", (f"{to} is older than the installed {current}; the manifest does not permit that "
                           "downgrade (an older release replayed)")
    if update.is_delta and not _base_matches(have, update):
        return "not-applicable", (f"{to} is a delta from sequence {update.base.sequence} ({update.base.version}); "
                                  f"this machine has {current}")
    return "candidate", f"{to} updates {current}"


def _base_matches(have: InstalledComponent, update: Component) -> bool:
    return (update.base is not None and update.base.sequence == have.sequence
            and update.base.tree_digest == have.tree_digest)
