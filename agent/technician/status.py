"""Status for a technician: everything ``status`` says, and what a person deciding on a rollback,
a switch or a repair also needs - the anti-rollback floors, what each environment holds and when
it was committed (counted in commits: the device has no trustworthy clock), the trust-root and
agent versions, and the last outcomes from the audit log.
"""

from __future__ import annotations


from agent import agent_version
from agent.device import Device
from agent.floors import rebuilt_floors
from agent.trust_store import device_roots
from agent.kept import KeptDamaged, verified_kept
from agent.lifecycle import pending_summary
from agent.state import AgentState, CorruptState
from agent.trust_store import current_root
from keys.errors import UpdateError

# Audit-log events that end an install, a trial or a technician's action: the "last results".
OUTCOME_EVENTS = frozenset({"committed", "rolled-back", "trial-failed", "trial-cancelled", "staging-failed",
                            "provisioned", "provisioning-failed", "manual-rollback", "switch-armed",
                            "switch-failed", "repair-armed", "refused", "nothing-installed"})
LAST_RESULTS = 5


def technician_status(device: Device) -> dict:
    """A JSON-ready picture of the machine. A damaged state does not stop it: it says so, and
    the floors shown are then those the kept signed manifests vouch for."""
    problems = []
    try:
        state = device.store.load()
    except CorruptState as error:
        state = AgentState()
        problems.append(f"state: {error.message}")
    floors = rebuilt_floors(device, state.floors, excluded=state.failed_trials)
    if state.environment is None and floors:
        problems.append("no committed state, but the environments hold signed releases: the floors shown are "
                        "those their kept manifests vouch for; a technician token allowing clear-state or "
                        "provision is needed to go on (docs/TECHNICIAN.md)")
    try:
        root_version = current_root(device.config.trust_root, device.state_dir.trust).version
    except UpdateError as error:
        root_version = None
        problems.append(f"trust root: {error.message}")
    try:
        roots = device_roots(device.config.trust_root, device.state_dir.trust)  # once, for every environment
    except UpdateError:
        roots = {}  # said under "problems" above: nothing kept can be verified
    environments = [_environment(device, state, e, roots) for e in device.backend.environments()]
    return {
        "device": {"product": device.config.product, "hardware": device.config.hardware,
                   "serial": device.config.serial},
        "agent_version": agent_version(),
        "trust_root_version": root_version,
        "committed_environment": state.environment,
        "commits": state.commits,
        "components": {name: {"version": c.version, "sequence": c.sequence, "floor": floors.get(name)}
                       for name, c in sorted(state.components.items())},
        "floors": dict(sorted(floors.items())),
        "environments": environments,
        "pending": pending_summary(state.pending),
        "last_result": state.last_result,
        "last_results": _last_results(device),
        "problems": problems,
    }


def _environment(device: Device, state: AgentState, environment, roots: dict) -> dict:
    name = environment.name
    earlier = {entry["environment"]: entry for entry in state.history
               if entry.get("identity") in (None, environment.identity)}
    pending = state.pending
    if name == state.environment:
        role, holds, committed_at = "committed", _sequences(state.components), state.committed_at
    elif pending is not None and name == pending.environment and pending.components is not None:
        role, holds, committed_at = f"pending {pending.phase.value}", _sequences(pending.components), None
    elif name in earlier:
        entry = earlier[name]
        newest = state.history[-1]["environment"] == name
        role = "previous" if newest else "earlier"
        holds, committed_at = _sequences(entry["components"]), entry.get("committed_at")
    elif name in state.failed_trials:
        role, holds, committed_at = "failed trial", _kept(device, name, roots), None
    else:
        role, holds, committed_at = "other", _kept(device, name, roots), None
    return {"name": name, "flags": environment.flags, "identity": environment.identity,
            "path": str(environment.path) if environment.path else None, "role": role,
            "holds": holds, "committed_at": committed_at, "made_by_agent": environment.made_by_agent}


def _sequences(components: dict) -> dict:
    def field(c, key):
        return c[key] if isinstance(c, dict) else getattr(c, key)
    return {name: {"version": field(c, "version"), "sequence": field(c, "sequence")}
            for name, c in sorted(components.items())}


def _kept(device: Device, name: str, roots: dict) -> dict | None:
    """What the kept signed manifests say ``name`` holds (None: no record, as for an environment
    another tool made)."""
    try:
        kept = verified_kept(device.state_dir, name, roots)
    except (KeptDamaged, UpdateError):
        return None
    return {component: {"version": k.component.version, "sequence": k.component.sequence}
            for component, k in sorted(kept.items()) if k.component is not None} or None


def _last_results(device: Device) -> list[dict]:
    try:
        records = device.audit.newest(200)
    except OSError:
        return []
    return [r for r in records if r.get("event") in OUTCOME_EVENTS][:LAST_RESULTS]
