"""The step in progress, journaled before it touches an environment: the only place phases are named.

docs/AGENT.md, "State and crash safety": every step that changes environments writes its
:class:`Pending` to ``STATE/journal.json`` first, and its commit point is one write of the boot
backend. After a crash the next command finishes or undoes it (agent/resume.py); a trial is left
for ``boot-check``, which knows whether it booted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Phase(str, Enum):
    STAGING = "staging"  # a new environment is being built; the running one is untouched
    TRIAL = "trial"  # the new environment boots once; boot-check commits it or rolls back
    PROVISIONING = "provisioning"  # the first environment is being built (factory)
    ROLLBACK = "rollback"  # a technician's rollback to the previous committed environment
    # A kept committed environment boots once for a trial (a technician's rollback or switch,
    # agent/technician/switch.py); boot-check commits it or returns, and never destroys it.
    SWITCH = "switch"


@dataclass(frozen=True)
class Pending:
    phase: Phase
    environment: str  # the environment the step makes, or (rollback) goes back to
    previous: str | None = None  # the committed environment when the step began
    components: dict[str, dict] | None = None  # trial, provisioning, switch: what becomes committed
    bundles: tuple[str, ...] | None = None  # trial: the bundles it was staged from

    def to_json(self) -> dict:
        """As in journal.json: absent fields are left out."""
        result = {"phase": self.phase.value, "environment": self.environment}
        for key in ("previous", "components", "bundles"):
            value = getattr(self, key)
            if value is not None:
                result[key] = list(value) if key == "bundles" else value
        return result

    @classmethod
    def from_json(cls, value) -> "Pending":
        """Raises ValueError (a journal of the wrong shape is quarantined, agent/state.py)."""
        if not isinstance(value, dict) or set(value) - {"phase", "environment", "previous", "components", "bundles"}:
            raise ValueError("pending is not an object of the journal's fields")
        phase, environment = value.get("phase"), value.get("environment")
        if phase not in {p.value for p in Phase} or not isinstance(environment, str):
            raise ValueError("pending names no known phase or no environment")
        previous, components, bundles = value.get("previous"), value.get("components"), value.get("bundles")
        if not (previous is None or isinstance(previous, str)) or not (components is None or isinstance(components, dict)) \
                or not (bundles is None or isinstance(bundles, list) and all(isinstance(b, str) for b in bundles)):
            raise ValueError("pending has fields of the wrong type")
        pending = cls(Phase(phase), environment, previous, components, tuple(bundles) if bundles is not None else None)
        if pending.phase in (Phase.TRIAL, Phase.PROVISIONING, Phase.SWITCH) and components is None:
            raise ValueError(f"a {phase} names no components")
        if pending.phase in (Phase.STAGING, Phase.TRIAL, Phase.ROLLBACK, Phase.SWITCH) and previous is None:
            raise ValueError(f"a {phase} names no previous environment")
        return pending
