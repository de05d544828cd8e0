"""After the install: the boot loader's choice, the health check, commit, rollback, status.

``boot-check`` runs after every boot (docs/AGENT.md, "Trial boot"):
* booted into the pending trial -> run the health hooks: all healthy -> commit (the backend's
  default first - the commit point - then the state: a crash between the two boots the trial
  again and repeats the check; a crash before it boots the previous environment, see below);
  otherwise roll back: the previous environment stays the default, the reason is recorded, the
  reboot policy applies;
* a trial was pending but the machine booted elsewhere -> the trial crashed before the check,
  and the one-time boot already fell back: record the failed trial and destroy it;
* nothing pending -> nothing to do.

A manual ``rollback`` is journaled before the backend's default changes, so a crash in it is
finished or forgotten by the next command (agent/resume.py).
"""

from __future__ import annotations

from pathlib import Path

from agent import system_log
from agent.device import Device
from agent.health import run_hook
from agent.journal import Pending, Phase
from agent.kept import forget_environment
from agent.resume import recover_interrupted, remove_failed_environments
from agent.state import AgentState
from keys.errors import Refused, UpdateError


def boot(device: Device) -> Path:
    """Play the boot loader (a backend that plays it: dirs): returns the environment to start."""
    backend = device.backend
    if not backend.plays_boot_loader:
        return backend.boot()  # raises: the real boot loader chooses
    try:
        committed = device.store.load().environment  # only for a damaged boot record
    except UpdateError:
        committed = None  # booting never depends on the state
    environment = backend.boot(committed)
    device.audit.record("booted", environment=environment.name)
    return environment.path


def _run_hooks(device: Device, environment: Path) -> tuple[bool, str]:
    for hook in device.config.health_hooks:
        healthy, why = run_hook(hook, environment, device.config.health_timeout)
        if not healthy:
            return False, why
    return True, f"{len(device.config.health_hooks)} health hook(s) passed"


def _commit(device: Device, state: AgentState) -> str:
    pending = state.pending
    name = pending.environment
    device.backend.commit(name)  # the commit point: a crash after this boots the trial and repeats the check
    previous_identity = device.backend.identity_of(state.environment)
    if pending.phase is Phase.SWITCH:
        state.switched_to(previous_identity)
    else:
        state.committed_trial(previous_identity)
    device.store.save(state)
    device.audit.record("committed", environment=name, components=pending.components)
    _prune(device, state)
    return state.last_result["message"]


def _prune(device: Device, state: AgentState) -> None:
    """Keep the newest ``keep`` environments (the committed one included), never the booted one.
    Failed trials are already gone: boot-check removed them before it ran the health check."""
    # Only the agent's own environments count and are pruned: never the installer's "default"
    # or those another tool (freebsd-update) made. Those no rollback leads to (one rolled back
    # from, or replaced since it was committed) go first, then the oldest: the rollback target
    # must survive.
    environments = [e for e in device.backend.environments() if e.made_by_agent]
    reachable = {entry.get("identity") for entry in state.history}  # the committed one is the default
    removable = sorted((e for e in environments if not (e.booted_now or e.default or e.next_once)),
                       key=lambda e: e.identity in reachable)
    excess = len(environments) - device.config.keep
    for environment in removable[:max(0, excess)]:
        try:
            device.backend.destroy(environment.name)
        except UpdateError as error:  # the commit stands; the next commit tries again
            device.audit.record("prune-failed", environment=environment.name, reason=error.message, hint=error.hint)
            continue
        forget_environment(device.state_dir, environment.name)
        device.audit.record("pruned", environment=environment.name)


def boot_check(device: Device) -> str:
    """Returns what happened, in words. Raises Refused (rolled back) so the exit code shows it."""
    state = recover_interrupted(device, device.store.load())
    removed = remove_failed_environments(device, state)
    pending = state.pending
    booted = device.backend.booted()
    if pending is None or pending.phase not in (Phase.TRIAL, Phase.SWITCH):
        running = booted.name if booted else "an unknown environment"
        message = f"no trial pending; running {running}"
        if state.environment is not None and running != state.environment:
            message += f", but {state.environment} is committed"
        return message + "".join(f"; removed the failed trial {name}" for name in removed)
    name = pending.environment
    # A switch boots a kept committed environment: when its trial fails it stays as it was, for
    # another look; a new environment that failed is removed.
    switch = pending.phase is Phase.SWITCH
    if booted is None or booted.name != name:
        state.pending = None
        if not switch:
            state.failed_trials.append(name)
        message = (f"the trial of {name} did not reach its health check (it crashed or was never booted); "
                   f"running {booted.name if booted else 'the default'}, which stays committed")
        state.last_result = {"outcome": "trial failed", "message": message}
        device.store.save(state)
        device.audit.record("switch-failed" if switch else "trial-failed", environment=name,
                            booted=booted.name if booted else None)
        if not switch and name in remove_failed_environments(device, state):  # its space is needed next
            message += "; the failed environment was removed"
        return message
    healthy, detail = _run_hooks(device, booted.path)
    device.audit.record("health-check", environment=name, healthy=healthy, detail=detail)
    if healthy:
        return _commit(device, state)
    device.backend.cancel_once()
    state.pending = None
    if not switch:
        state.failed_trials.append(name)  # removed by the next boot-check, which runs elsewhere
    state.last_result = {"outcome": "rolled back", "message": f"{name} failed its health check ({detail}); back to "
                                                              f"{pending.previous}"}
    device.store.save(state)
    device.audit.record("switch-failed" if switch else "rolled-back", environment=name, to=pending.previous,
                        reason=detail)
    raise Refused(state.last_result["message"] + "; " + device.apply_reboot_policy(f"return to {pending.previous}"))


def rollback(device: Device) -> str:
    """Cancel a pending trial, or make the previous environment the default again."""
    state = recover_interrupted(device, device.store.load())
    pending = state.pending
    if pending is not None and pending.phase in (Phase.TRIAL, Phase.SWITCH):
        return _cancel_trial(device, state)
    existing = {e.name: e.identity for e in device.backend.environments()}
    replaced = []
    while state.history and existing.get(state.history[-1]["environment"]) != state.history[-1].get("identity"):
        entry = state.history.pop()  # pruned long ago, or its name now holds another environment
        if entry["environment"] in existing:
            replaced.append(entry["environment"])
    if not state.history:
        system_log.log("rollback-refused", {"reason": "no previous environment"})
        raise Refused("there is no previous environment to roll back to" +
                      "".join(f"; {name} holds another environment than the one committed there" for name in replaced),
                      hint="install the release wanted from a stick instead")
    name = state.history[-1]["environment"]
    state.pending = Pending(Phase.ROLLBACK, name, previous=state.environment)
    device.store.save(state)  # journaled: a crash below is finished or forgotten by the next command
    device.backend.cancel_once()
    device.backend.commit(name)  # the commit point
    state.rolled_back_to(name)
    device.store.save(state)
    device.audit.record("manual-rollback", to=name)
    return state.last_result["message"] + "; " + device.apply_reboot_policy(f"start {name}")


def _cancel_trial(device: Device, state: AgentState) -> str:
    """The committed environment stays the default and the trial is removed - at once when it has
    not booted, after the return to the committed environment when it is running now."""
    name = state.pending.environment
    switch = state.pending.phase is Phase.SWITCH
    device.backend.cancel_once()
    state.pending = None
    if not switch:  # a switch's environment is a kept committed one: it stays
        state.failed_trials.append(name)
    state.last_result = {"outcome": "cancelled", "message": f"the trial of {name} was cancelled"}
    device.store.save(state)
    device.audit.record("trial-cancelled", environment=name)
    booted = device.backend.booted()
    if switch and (booted is None or booted.name != name) or name in remove_failed_environments(device, state):
        return state.last_result["message"]  # not running the trial: nothing to return from
    return state.last_result["message"] + "; " + device.apply_reboot_policy(f"return to {state.environment}")


def status(device: Device) -> dict:
    state = device.store.load()
    return {
        "device": {"product": device.config.product, "hardware": device.config.hardware,
                   "serial": device.config.serial},
        "committed_environment": state.environment,
        "components": {n: {"version": c.version, "sequence": c.sequence} for n, c in sorted(state.components.items())},
        "environments": [{"name": e.name, "identity": e.identity, "flags": e.flags,
                          "path": str(e.path) if e.path else None}
                         for e in device.backend.environments()],
        "pending": pending_summary(state.pending),
        "last_result": state.last_result,
        "history": [entry["environment"] for entry in state.history],
    }


def pending_summary(pending: Pending | None) -> dict | None:
    """The step in progress as status shows it (JSON-ready; also the technician's status)."""
    if pending is None:
        return None
    summary = pending.to_json()
    if pending.components is not None:
        summary["components"] = {n: {"version": c["version"], "sequence": c["sequence"]}
                                 for n, c in pending.components.items()}
    return summary
