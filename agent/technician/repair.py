"""Repair: rebuild what is damaged, from signed full bundles on a stick.

* Damaged components (the audit found files missing, modified or unexpected - a FIFO or socket
  a program left included - or the technician names them, as for a component the audit can only
  call unverifiable): each is rebuilt from a full bundle on the stick of exactly the installed release
  (same sequence and tree digest), into a new environment cloned from the running one, then the
  usual trial boot and commit (agent/install.py). The release does not change, so neither do the
  floors; nothing is chosen by the stick but what is installed already.
* A lost or damaged state (state.json quarantined or deleted on a machine with environments):
  the state is rebuilt from the default environment's kept signed manifests (agent/kept.py),
  the floors from every environment's (agent/floors.py). Clearing a damaged state is beyond what
  the unattended path may do, so it needs a technician token allowing ``clear-state``
  (agent/tokens.py), spent before the new state is written.
"""

from __future__ import annotations

from pathlib import Path

from agent.choice import Choice, Decision
from agent.device import Device
from agent.floors import rebuilt_floors
from agent.install import TrialPending, stage_for_trial
from agent.trust_store import device_roots
from agent.kept import KeptDamaged, verified_kept
from agent.offer import Found, read_offer
from agent.progress import Progress
from agent.report import Report
from agent.resume import recover_interrupted
from agent.state import AgentState, CorruptState
from agent.tokens import require_token, spend_token
from agent.tree_audit import audit_environment
from keys.errors import Refused


class NothingToRebuildFrom(Refused):
    """The stick holds no full bundle of the installed release of a damaged component."""


def repair(device: Device, stick: Path, components: set[str] = frozenset(), progress: Progress | None = None
           ) -> Report:
    """Rebuild the damaged ``components`` (default: those the audit of the committed environment
    finds damaged) from ``stick``, or the state when it is lost. Raises Refused (nothing to
    rebuild from, a token missing), TrialPending, and what an install raises."""
    try:
        state = recover_interrupted(device, device.store.load())
    except CorruptState:  # quarantined by that load: the next one finds no state
        state = AgentState()
    if state.environment is None:
        return _rebuild_state(device, Path(stick), state)
    if state.pending is not None:
        raise TrialPending(f"a {state.pending.phase.value} of {state.pending.environment} is pending",
                           hint="reboot to finish it (boot-check) before repairing")
    audit = audit_environment(device, state.environment)
    damaged = {name for name, result in audit["components"].items() if _damaged(result)} | set(components)
    report = Report()
    if not damaged:
        report.outcome = "nothing-to-repair"
        report.message = f"the audit of {state.environment} found every installed file as signed: nothing to repair"
        return report
    unknown = sorted(damaged - set(state.components))
    if unknown:
        raise Refused(f"{', '.join(unknown)} is not installed", hint="see bundle-agent technician status")
    root, found = read_offer(device, Path(stick), report)
    chosen = {}
    for name in sorted(damaged):
        bundle, component = _same_release(device, state, name, found, Path(stick))
        chosen[name] = [Choice(bundle, component)]
        report.decisions.append(Decision(bundle, name, "chosen", f"repair: rebuild {name} {component.version} "
                                                                 f"(sequence {component.sequence}) from its full bundle"))
    device.audit.record("repair", environment=state.environment, components=sorted(damaged),
                        audit_clean=audit["clean"])
    return stage_for_trial(device, state, chosen, found, report, root.version, progress)


def _damaged(result: dict) -> bool:
    # Not one the audit calls unverifiable (no kept manifest, or one under a trust root replaced
    # since): after a replacement that is every component, and a technician who came to rebuild
    # one would be asked for full bundles of all. Those are rebuilt when named (--component).
    return bool(result["missing_count"] or result["modified_count"] or result["unexpected_count"])


def _same_release(device: Device, state: AgentState, name: str, found: dict[str, Found], stick: Path):
    """The bundle and full component on the stick that is exactly the installed release of
    ``name``, for this product and hardware. Raises NothingToRebuildFrom."""
    installed = state.components[name]
    facts = device.facts
    for bundle, entry in sorted(found.items()):
        manifest = entry.verified.manifest
        if manifest.product != facts.product or facts.hardware not in manifest.hardware:
            continue
        for component in manifest.components:
            if component.name == name and not component.is_delta and component.sequence == installed.sequence \
                    and component.tree_digest == installed.tree_digest:
                return bundle, component
    raise NothingToRebuildFrom(
        f"the stick holds no full bundle of {name} {installed.version} (sequence {installed.sequence}), the "
        "release installed", where=stick,
        hint="write the full bundle of that release to the stick (bundle make --full, bundle write)")


def _rebuild_state(device: Device, stick: Path, state: AgentState) -> Report:
    """A machine with environments and no usable state: rebuild it from the default environment's
    kept signed manifests, with a clear-state token."""
    default = next((e for e in device.backend.environments() if e.default), None)
    if default is None:
        raise Refused("this machine has no committed environment and no state: nothing to repair",
                      hint="provision it: bundle-agent provision STICK")
    try:
        kept = verified_kept(device.state_dir, default.name, device_roots(device.config.trust_root,
                                                                          device.state_dir.trust))
    except KeptDamaged as error:
        kept, problem = {}, error.message
    else:
        problem = "; ".join(f"{n}: {k.problem}" for n, k in sorted(kept.items()) if k.component is None) or None
    if not kept or problem:
        raise Refused(f"the state cannot be rebuilt from {default.name}: "
                      f"{problem or 'no kept signed manifests (it was installed before they were kept)'}",
                      hint="provision the machine again from a full bundle, with a technician token allowing "
                           "provision on the stick")
    token = require_token(device, stick, "clear-state")
    spend_token(device, token, "clear-state")
    components = {name: {"version": k.component.version, "sequence": k.component.sequence,
                         "tree_digest": k.component.tree_digest} for name, k in kept.items()}
    state.floors = rebuilt_floors(device, state.floors)
    state.provisioned(default.name, components)
    state.last_result = {"outcome": "state-rebuilt",
                         "message": f"the state was rebuilt from {default.name}'s signed manifests"}
    device.store.save(state)
    device.audit.record("state-rebuilt", environment=default.name, components=components, token=token.id,
                        floors=state.floors)
    report = Report(environment=default.name, outcome="state-rebuilt", message=state.last_result["message"])
    report.installed = {n: f"{c['version']} (sequence {c['sequence']})" for n, c in sorted(components.items())}
    return report
