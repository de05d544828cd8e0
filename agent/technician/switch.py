"""A technician's rollback or switch to a kept committed environment, through a trial boot.

Like an install, the environment boots once (the backend's one-time activation, GRUB's
``trial_env``) and ``boot-check`` commits it after its health check, or the machine comes back
to the environment committed now. Unlike an install nothing is built and nothing is destroyed:
a switch that fails its check leaves the environment as it was, for another look.

Authorisation (docs/TECHNICIAN.md): the previous committed environment needs none - a
technician may always undo the last update. Any other environment holding a component below
its anti-rollback floor is a downgrade, allowed only by a technician token on the stick naming
those components and sequences (agent/tokens.py), spent before anything changes. The floors stay
where they are after the switch: the newer releases may be installed again, older ones not.
"""

from __future__ import annotations

from pathlib import Path

from agent.device import Device
from agent.journal import Pending, Phase
from agent.resume import recover_interrupted
from agent.state import AgentState
from agent.tokens import require_token, spend_token
from keys.errors import Refused


class NoSuchEnvironment(Refused):
    """The environment named is not one the machine committed and still holds as committed."""


def switch_targets(device: Device, state: AgentState) -> list[dict]:
    """The earlier committed environments the backend still holds with the identity recorded
    when they were committed, newest first: what a rollback or switch may go to."""
    identities = {e.name: e.identity for e in device.backend.environments()}
    return [entry for entry in reversed(state.history)
            if entry["environment"] != state.environment and identities.get(entry["environment"]) == entry.get("identity")]


def arm_switch(device: Device, target: str | None, stick: Path | None = None) -> str:
    """Arm a trial boot of ``target`` (None: the previous committed environment). Returns what
    was done, in words. Raises NotProvisioned-like Refused, TrialPending-like Refused,
    NoSuchEnvironment, NoToken."""
    state = recover_interrupted(device, device.store.load())
    if state.environment is None:
        raise Refused("this machine has no committed environment to switch from",
                      hint="see bundle-agent technician status")
    if state.pending is not None:
        raise Refused(f"a {state.pending.phase.value} of {state.pending.environment} is pending",
                      hint="reboot to finish it (boot-check), or cancel it with bundle-agent rollback")
    targets = switch_targets(device, state)
    if target is None:
        if not targets:
            raise NoSuchEnvironment("there is no previous committed environment to roll back to",
                                    hint="install the release wanted from a stick instead")
        entry = targets[0]
    else:
        if target == state.environment:
            raise Refused(f"{target} is the committed environment already")
        entry = next((e for e in targets if e["environment"] == target), None)
        if entry is None:
            names = ", ".join(e["environment"] for e in targets) or "none"
            raise NoSuchEnvironment(f"{target} is not a committed environment this machine still holds "
                                    f"(those it may switch to: {names})", hint="see bundle-agent technician status")
    name = entry["environment"]
    below = {component: c["sequence"] for component, c in sorted(entry["components"].items())
             if c["sequence"] < state.floors.get(component, 0)}
    token = None
    if below and entry is not targets[0]:
        if stick is None:
            raise Refused(f"{name} holds " + ", ".join(f"{c} sequence {s}" for c, s in below.items()) +
                          ", below the anti-rollback floor: switching to it is a downgrade",
                          hint="give the stick holding a technician token that allows this downgrade "
                               "(bundle token make --allow downgrade --downgrade COMPONENT=SEQUENCE)")
        token = require_token(device, stick, "downgrade", below)
        spend_token(device, token, "downgrade")  # spent first: a crash cannot make it usable twice
    state.pending = Pending(Phase.SWITCH, name, previous=state.environment, components=entry["components"])
    device.store.save(state)  # journaled: boot-check knows the trial is a switch
    try:
        device.backend.activate_once(name)
    except BaseException:
        state.pending = None
        device.store.save(state)
        raise
    what = "rollback" if entry is targets[0] else "switch"
    device.audit.record("switch-armed", environment=name, previous=state.environment, what=what,
                        token=token.id if token else None)
    return (f"{name} boots once for a trial ({what} from {state.environment}); boot-check commits it after its "
            f"health check, or {state.environment} comes back; " + device.apply_reboot_policy(f"start {name}"))
