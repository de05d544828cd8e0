"""After a crash: finish or undo the step the journal says was in progress.

Every step that changes environments is journaled first (``pending`` in STATE/journal.json), and
its commit point is one write of the boot backend - the default environment (docs/AGENT.md,
"State and crash safety"). Every command that changes anything starts here:

* ``staging``: a half-built environment; destroyed (the running one was never written);
* ``provisioning``: committed if the backend's default is already the new environment (the crash
  fell after the commit point), else destroyed - a blank machine stays blank, never half-built;
* ``rollback``: finished if the backend's default is already the rollback's target, else
  forgotten (the committed environment stays; the technician repeats the rollback);
* ``trial``: left for ``boot-check``, which knows whether the trial booted.

Trials that failed while running could not be destroyed then; they are listed in the journal
and removed by :func:`remove_failed_environments` (``boot-check``, ``install``) once the machine
runs elsewhere: a machine offered a bad update again and again must not fill its disk.
"""

from __future__ import annotations

import shutil

from agent.device import Device
from agent.staging import CHAIN
from agent.state import AgentState
from keys.errors import UpdateError
from keys.files import remove_stale_temporaries


def recover_interrupted(device: Device, state: AgentState) -> AgentState:
    shutil.rmtree(device.config.state_dir / "spool", ignore_errors=True)  # a crash while copying
    shutil.rmtree(device.config.state_dir / CHAIN, ignore_errors=True)  # ... or while building a chain's steps
    remove_stale_temporaries(device.config.state_dir)  # a crash while writing a state file
    pending = state.pending or {}
    phase, name = pending.get("phase"), pending.get("environment")
    if phase in ("staging", "provisioning", "rollback"):
        _finish_or_undo(device, state, phase, name)
    return state


def _finish_or_undo(device: Device, state: AgentState, phase: str, name: str) -> None:
    pending = state.pending
    default = device.backend.default()
    reached_commit_point = default is not None and default.name == name
    if phase == "provisioning" and reached_commit_point:
        state.provisioned(name, pending["components"])
        event = "provisioned"
    elif phase == "rollback" and reached_commit_point:
        state.rolled_back_to(name)
        event = "manual-rollback"
    else:
        if phase != "rollback":
            destroy_quietly(device, name)
        state.pending = None
        what = {"staging": f"an interrupted install into {name} was cleaned up",
                "provisioning": f"an interrupted provisioning of {name} was cleaned up",
                "rollback": f"an interrupted rollback to {name} did not take effect"}[phase]
        state.last_result = {"outcome": "interrupted", "message": what}
        event = "cleaned-up"
    device.store.save(state)
    device.audit.record(event, environment=name, after="an interruption")


def destroy_quietly(device: Device, name: str) -> bool:
    """Destroy an environment that should not exist (half-built, a failed trial), if it does and
    may be: never the booted one or the default. False when it stays (pruning removes it later)."""
    try:
        if device.backend.get(name) is None:
            return True
        device.backend.destroy(name)
        return True
    except UpdateError:
        return False


def remove_failed_environments(device: Device, state: AgentState) -> list[str]:
    """Destroy the failed trials (``state.failed_trials``) that are no longer booted or chosen by
    the boot loader; those still running stay listed for the next time. Returns the names removed."""
    removed, listed = [], list(state.failed_trials)
    for name in listed:
        environment = device.backend.get(name)
        if environment is not None and (environment.booted_now or environment.default or environment.next_once):
            continue
        if destroy_quietly(device, name):
            state.failed_trials.remove(name)
            if environment is not None:
                removed.append(name)
                device.audit.record("removed-failed", environment=name)
    if state.failed_trials != listed:
        device.store.save(state)
    return removed
