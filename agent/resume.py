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
from agent.journal import Pending, Phase
from agent.kept import clean_orphans, forget_environment
from agent.state import AgentState
from keys.errors import UpdateError
from keys.files import remove_stale_temporaries


def recover_interrupted(device: Device, state: AgentState) -> AgentState:
    for scratch in device.state_dir.scratch:  # a crash while spooling or building a chain's steps
        shutil.rmtree(scratch, ignore_errors=True)
    remove_stale_temporaries(device.state_dir.root)  # a crash while writing a state file
    # A trial, of a new environment or of a kept one (a switch), is boot-check's.
    if state.pending is not None and state.pending.phase not in (Phase.TRIAL, Phase.SWITCH):
        _finish_or_undo(device, state, state.pending)
    _clean_kept_orphans(device)
    return state


def _clean_kept_orphans(device: Device) -> None:
    """Records of environments the backend no longer has (destroyed by a crash's cleanup, by
    hand, or a crash between a destroy and forgetting its record), and manifests no record names
    (agent/kept.py). Only when the backend can list its environments: a listing that fails must
    not make every record look orphaned."""
    if not (device.state_dir.environments.exists() or device.state_dir.manifests.exists()):
        return
    try:
        existing = {environment.name for environment in device.backend.environments()}
    except UpdateError:
        return
    clean_orphans(device.state_dir, existing)


_UNDONE = {Phase.STAGING: "an interrupted install into {} was cleaned up",
           Phase.PROVISIONING: "an interrupted provisioning of {} was cleaned up",
           Phase.ROLLBACK: "an interrupted rollback to {} did not take effect"}


def _finish_or_undo(device: Device, state: AgentState, pending: Pending) -> None:
    name = pending.environment
    default = device.backend.default()
    reached_commit_point = default is not None and default.name == name
    if pending.phase is Phase.PROVISIONING and reached_commit_point:
        state.provisioned(name, pending.components)
        event = "provisioned"
    elif pending.phase is Phase.ROLLBACK and reached_commit_point:
        state.rolled_back_to(name)
        event = "manual-rollback"
    else:
        if pending.phase is not Phase.ROLLBACK:
            destroy_quietly(device, name)
        state.pending = None
        what = _UNDONE[pending.phase].format(name)
        state.last_result = {"outcome": "interrupted", "message": what}
        event = "cleaned-up"
    device.store.save(state)
    device.audit.record(event, environment=name, after="an interruption")


def destroy_quietly(device: Device, name: str) -> bool:
    """Destroy an environment that should not exist (half-built, a failed trial), if it does and
    may be: never the booted one or the default. False when it stays (pruning removes it later)."""
    try:
        if device.backend.get(name) is not None:
            device.backend.destroy(name)
    except UpdateError:
        return False
    forget_environment(device.state_dir, name)  # a crash before this leaves an orphan, cleaned next run
    return True


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
