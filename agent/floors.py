"""Anti-rollback floors that survive a damaged or lost state (docs/AGENT.md, "Floors after a lost state").

The floors live in STATE/state.json (agent/state.py). A state file that does not parse is
quarantined; one deleted is simply gone - and a machine without a state looks blank, so
provisioning an older full bundle would put the floors back with no warning (T-ROLLBACK). The
signed manifests kept per environment (agent/kept.py) say, under nothing but the device's trust
root, which sequence each environment holds: the highest over every environment the backend
still has is a floor no lost state can lower.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from agent.boot.base import Environment
from agent.trust_store import device_roots
from agent.kept import KeptDamaged, verified_kept
from agent.state_dir import StateDir
from keys.rotation import VerifiedRoot


def counts_for_floors(environment: Environment) -> bool:
    """An environment armed only for a one-time trial (T without R) was never committed: what it
    holds may still fail its health check, so it raises no floor. Every other one was committed
    once, or is running (a trial that booted: counting it errs towards refusing a downgrade)."""
    return not (environment.next_once and not environment.default)


def floors_from_kept(state_dir: StateDir, environments: Iterable[Environment],
                     roots: Mapping[int, VerifiedRoot], excluded: Iterable[str] = ()) -> dict[str, int]:
    """Component -> the highest sequence over the verified kept manifests of ``environments`` (the
    backend's, as it lists them now), except trials only armed and those named in ``excluded``
    (failed trials the journal lists). A record or manifest that is damaged or fails verification
    adds nothing: only what the trust root vouches for raises a floor."""
    floors: dict[str, int] = {}
    skip = set(excluded)
    for environment in environments:
        if environment.name in skip or not counts_for_floors(environment):
            continue
        try:
            # Not cached across environments, though they share manifests: parsed, one may take
            # ~135 MiB (FORMAT.md, "Limits"), and only its sequences are needed here.
            components = verified_kept(state_dir, environment.name, roots)
        except KeptDamaged:
            continue
        for name, kept in components.items():
            if kept.component is not None:
                floors[name] = max(floors.get(name, kept.component.sequence), kept.component.sequence)
    return floors


def highest(*floors: Mapping[str, int]) -> dict[str, int]:
    """Per component the highest of several floor tables: never lower than any of them."""
    result: dict[str, int] = {}
    for table in floors:
        for name, sequence in table.items():
            result[name] = max(result.get(name, sequence), sequence)
    return result


def rebuilt_floors(device, known: Mapping[str, int] | None = None, excluded: Iterable[str] = ()) -> dict[str, int]:
    """The floors any provisioning or repair starts from: the highest of ``known`` (what a usable
    state says) and those the kept manifests of the device's environments vouch for.
    Raises NoTrustRoot, BootError (the backend cannot list its environments)."""
    roots = device_roots(device.config.trust_root, device.state_dir.trust)
    return highest(known or {}, floors_from_kept(device.state_dir, device.backend.environments(), roots, excluded))
