"""What an install or provisioning did: for the command line (text and --json) and the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.choice import Decision


@dataclass
class Report:
    """What an install or provisioning did, for the command line and the audit log."""

    decisions: list[Decision] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)  # (bundle or medium, reason)
    installed: dict[str, str] = field(default_factory=dict)  # component -> "from -> to"
    environment: str | None = None
    trust_root_version: int | None = None
    message: str = ""

    def to_json(self) -> dict:
        return {"message": self.message, "environment": self.environment, "installed": self.installed,
                "trust_root_version": self.trust_root_version,
                "decisions": [d.__dict__ for d in self.decisions],
                "refusals": [{"source": s, "reason": r} for s, r in self.refusals]}
