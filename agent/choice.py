"""Choosing what to install from verified bundles: pure, no I/O, every decision with its reason.

Rules (docs/AGENT.md, "What gets installed"):
* the bundle is for this product and lists this hardware model (T-PRODUCT, T-HARDWARE);
* a component the machine does not have is installed from a full update only, and only if the
  bundle targets no serials or this machine's serial (T-TARGET);
* a newer sequence is installed from a full update or from a delta whose base is exactly the
  installed sequence and tree digest;
* the anti-rollback floor (T-ROLLBACK, :func:`admissible`) applies to every component, installed
  or not: nothing below it, unless the signed manifest permits replacing exactly the installed
  sequence (downgrade_from); the floor itself is allowed, so what a technician rolled back from
  may be installed again; the same sequence as installed is a no-op;
* per component the newest reachable sequence wins, by the route that reads the fewest bytes
  from the medium: a full update, a delta from the installed state, or a chain of deltas
  (possibly starting from a full update) whose every base is exactly the previous step's result.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

from agent.format.manifest import Component
from agent.state import InstalledComponent
from agent.verify import VerifiedBundle


@dataclass(frozen=True)
class DeviceFacts:
    """What a bundle is matched against: this machine's product, hardware model and serial."""

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


def choose(device: DeviceFacts, installed: dict[str, InstalledComponent], floors: dict[str, int],
           bundles: dict[str, VerifiedBundle]) -> tuple[dict[str, list[Choice]], list[Decision]]:
    """Per component, the route to install (one full update or delta, or a chain of them)."""
    decisions: list[Decision] = []
    updates: dict[str, list[tuple[Choice, int]]] = {}
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
        sizes = manifest.stored_costs()
        for component in manifest.components:
            verdict, reason = _judge(device, installed.get(component.name), floors.get(component.name), component)
            decisions.append(Decision(bundle_id, component.name, verdict, reason))
            cost = sum(sizes[o] for o in {c.object for e in component.entries for c in e.chunks})
            updates.setdefault(component.name, []).append((Choice(bundle_id, component), cost))
    chosen = {}
    for name, options in updates.items():
        route = _route(device, installed.get(name), floors.get(name), options)
        if route:
            chosen[name] = route
    final = []
    for decision in decisions:
        route = chosen.get(decision.component, [])
        step = next((i for i, c in enumerate(route) if c.bundle == decision.bundle), None)
        if step is not None:
            reason = decision.reason if len(route) == 1 else f"step {step + 1} of {len(route)}: {decision.reason}"
            decision = replace(decision, verdict="chosen", reason=reason)
        elif decision.verdict == "candidate":
            decision = replace(decision, verdict="not-applicable",
                               reason=f"{decision.reason}; a newer or cheaper route is on the same medium")
        elif decision.verdict == "link":
            decision = replace(decision, verdict="not-applicable", reason=decision.reason)
        final.append(decision)
    return chosen, final


def choose_exact(device: DeviceFacts, installed: dict[str, InstalledComponent], wanted: dict[str, int],
                 bundles: dict[str, VerifiedBundle]) -> tuple[dict[str, list[Choice]], list[Decision]]:
    """A downgrade a technician token allows (agent/tokens.py): each component of ``wanted`` goes
    to exactly that sequence, from a full update or a delta from what is installed, whatever
    the floors say; nothing else is chosen. The product, hardware and targeting rules still
    hold. Components with no such update on the medium are left out of the route."""
    chosen: dict[str, list[Choice]] = {}
    decisions: list[Decision] = []
    for bundle_id, verified in sorted(bundles.items()):
        manifest = verified.manifest
        if manifest.product != device.product or device.hardware not in manifest.hardware:
            decisions.append(Decision(bundle_id, None, "not-applicable", "bundle is for another product or hardware"))
            continue
        for component in manifest.components:
            have = installed.get(component.name)
            to = f"{component.name} {component.version} (sequence {component.sequence})"
            if wanted.get(component.name) != component.sequence:
                verdict, reason = "not-applicable", f"{to} is not the downgrade the token names"
            elif component.targets and device.serial not in component.targets:
                verdict, reason = "not-applicable", f"{to} is targeted at other machines"
            elif component.is_delta and (have is None or not _base_matches(have, component)):
                verdict, reason = "not-applicable", f"{to} is a delta from another base"
            elif component.name in chosen and not chosen[component.name][0].component.is_delta:
                verdict, reason = "not-applicable", f"{to}: another bundle brings it too"
            else:
                chosen[component.name] = [Choice(bundle_id, component)]
                verdict, reason = "chosen", f"{to}: a downgrade a technician token allows"
            decisions.append(Decision(bundle_id, component.name, verdict, reason))
    return chosen, decisions


def admissible(sequence: int, have: int | None, floor: int | None) -> bool:
    """T-ROLLBACK, the one rule: a step goes up from ``have`` (the installed sequence, or the
    previous step's) and never below ``floor``. The floor follows what was committed and stays
    after a rollback - also when the environment rolled back to lacks the component - so a stick
    cannot follow the technician back down; the floor itself is allowed."""
    return (floor is None or sequence >= floor) and (have is None or sequence > have)


def _route(device: DeviceFacts, have: InstalledComponent | None, floor: int | None,
           options: list[tuple[Choice, int]]) -> list[Choice]:
    """Cheapest route (bytes read from the medium) to the newest reachable sequence.

    States are (sequence, tree digest). From the installed state a full update always applies; a
    delta applies only from its exact base. Upgrades never go below the floor; a downgrade is a
    single step the manifest permits from exactly the installed sequence.
    """
    start = (have.sequence, have.tree_digest) if have else None
    best: dict = {start: (0, [])}
    heap = [(0, 0, start)]
    order = 0
    while heap:
        cost, _, state = heapq.heappop(heap)
        if cost > best[state][0]:
            continue
        for choice, step_cost in options:
            update = choice.component
            if not admissible(update.sequence, state[0] if state is not None else None, floor):
                continue
            if state is None and (update.is_delta or (update.targets and device.serial not in update.targets)):
                continue
            if update.is_delta and (update.base.sequence, update.base.tree_digest) != state:
                continue
            target = (update.sequence, update.tree_digest)
            total = cost + step_cost
            if target not in best or total < best[target][0]:
                best[target] = (total, best[state][1] + [choice])
                order += 1
                heapq.heappush(heap, (total, order, target))
    reached = [state for state in best if state is not None and state != start]
    if reached:
        newest = max(state[0] for state in reached)
        return min((best[s] for s in reached if s[0] == newest), key=lambda item: item[0])[1]
    if have is not None:  # no upgrade: a permitted downgrade, if any (T-ROLLBACK exception)
        permitted = [(cost, c) for c, cost in options
                     if c.component.sequence < have.sequence and have.sequence in c.component.downgrade_from
                     and (not c.component.is_delta or _base_matches(have, c.component))]
        if permitted:
            return [max(permitted, key=lambda item: (item[1].component.sequence, -item[0]))[1]]
    return []


def _judge(device: DeviceFacts, have: InstalledComponent | None, floor: int | None, update: Component) -> tuple[str, str]:
    to = f"{update.name} {update.version} (sequence {update.sequence})"
    if have is None:
        if not admissible(update.sequence, None, floor):
            return "refused", (f"{to} is older than sequence {floor}, which this machine had committed before "
                               "(anti-rollback floor); an older release replayed")
        if update.is_delta:
            return "not-applicable", f"{to} is a delta, and this machine does not have {update.name}"
        if update.targets and device.serial not in update.targets:
            return "not-applicable", f"{to} is targeted at other machines (serial {device.serial} not listed)"
        return "candidate", f"new component {to}"
    current = f"sequence {have.sequence} ({have.version})"
    if update.sequence == have.sequence:
        return "no-op", f"{to} is already installed"
    if not admissible(update.sequence, have.sequence, floor):
        if update.sequence < have.sequence and have.sequence in update.downgrade_from:
            if update.is_delta and not _base_matches(have, update):
                return "not-applicable", f"{to} is a permitted downgrade, but a delta from another base"
            return "candidate", f"{to} replaces {current}: a downgrade the signed manifest permits"
        if update.sequence < have.sequence:
            return "refused", (f"{to} is older than the installed {current}; the manifest does not permit that "
                               "downgrade (an older release replayed)")
        return "refused", (f"{to} is older than sequence {floor}, which this machine had committed before "
                           "(anti-rollback floor); an older release replayed")
    if update.is_delta and not _base_matches(have, update):
        return "link", (f"{to} is a delta from sequence {update.base.sequence} ({update.base.version}); "
                        f"this machine has {current}")
    return "candidate", f"{to} updates {current}"


def _base_matches(have: InstalledComponent, update: Component) -> bool:
    return (update.base is not None and update.base.sequence == have.sequence
            and update.base.tree_digest == have.tree_digest)
