"""What an install or provisioning did: for the command line (text and --json) and the audit log.

``outcome`` tells apart what a technician must tell apart (docs/AGENT.md, "Outcomes"):

* ``staged``: an update was staged; a reboot starts its trial (exit 4);
* ``provisioned``: the first environment was installed and committed;
* ``nothing-on-medium``: no bundle at all on the stick (an empty or wrong stick);
* ``not-for-this-machine``: bundles, but every one for another product or hardware model;
* ``up-to-date``: bundles for this machine, and it already has what they carry or newer;
* ``no-applicable-update``: bundles for this machine with newer releases, none of which applies
  to what is installed (a delta from another base, an update targeted at other serials);
* ``nothing-to-repair``, ``state-rebuilt``: a technician's repair found every installed file as
  signed, or rebuilt a lost state from the kept signed manifests (agent/technician/repair.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.choice import Decision

OUTCOMES = ("staged", "provisioned", "nothing-on-medium", "not-for-this-machine", "up-to-date",
            "no-applicable-update", "nothing-to-repair", "state-rebuilt")


@dataclass
class Report:
    """What an install or provisioning did, for the command line and the audit log."""

    decisions: list[Decision] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)  # (bundle or medium, reason)
    installed: dict[str, str] = field(default_factory=dict)  # component -> "from -> to"
    environment: str | None = None
    trust_root_version: int | None = None
    message: str = ""
    outcome: str | None = None  # one of OUTCOMES once the install or provisioning returned

    def to_json(self) -> dict:
        return {"outcome": self.outcome, "message": self.message,
                "environment": self.environment, "installed": self.installed,
                "trust_root_version": self.trust_root_version,
                "decisions": [d.__dict__ for d in self.decisions],
                "refusals": [{"source": s, "reason": r} for s, r in self.refusals]}


def nothing_outcome(decisions: list[Decision]) -> str:
    """Why nothing was chosen, from the decisions (agent/choice.py): no bundle, none for this
    machine, none newer, or newer ones that do not apply."""
    if not decisions:
        return "nothing-on-medium"
    for_machine = [d for d in decisions if d.component is not None]  # product and hardware matched
    if not for_machine:
        return "not-for-this-machine"
    if any(d.verdict == "not-applicable" for d in for_machine):
        return "no-applicable-update"
    return "up-to-date"
