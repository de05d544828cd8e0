"""The agent's durable state: what is committed, the anti-rollback floors, the pending update.

Written atomically (keys/files.write_atomic: temp, fsync, rename, fsync dir). A state file that
does not parse is quarantined (renamed aside) and reported, never trusted: installs are refused
until a technician looks, while booting goes on from the boot record, which is separate.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from keys.errors import Refused
from keys.files import write_atomic

STATE_FILE = "state.json"
FORMAT = 1


class CorruptState(Refused):
    """The state file was unreadable; it has been quarantined."""


@dataclass(frozen=True)
class InstalledComponent:
    version: str
    sequence: int
    tree_digest: str


@dataclass
class AgentState:
    environment: str | None = None  # the committed environment
    components: dict[str, InstalledComponent] = field(default_factory=dict)
    floors: dict[str, int] = field(default_factory=dict)  # lowest sequence ever acceptable (T-ROLLBACK)
    pending: dict | None = None  # {"phase": "staging"|"trial", "environment", "previous", "components", "bundles"}
    last_result: dict | None = None
    trial_count: int = 0
    history: list[dict] = field(default_factory=list)  # earlier committed environments and their components

    def to_bytes(self) -> bytes:
        document = asdict(self)
        document["format"] = FORMAT
        return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "AgentState":
        document = json.loads(data)
        if not isinstance(document, dict) or document.pop("format", None) != FORMAT:
            raise ValueError("not a state file of format 1")
        components = {name: InstalledComponent(**value) for name, value in document.pop("components").items()}
        state = cls(components=components, **document)
        for name, floor in state.floors.items():
            if not isinstance(floor, int) or isinstance(floor, bool):
                raise ValueError(f"floor of {name} is not an integer")
        return state


class StateStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE

    def load(self) -> AgentState:
        """The current state (empty before provisioning). Raises CorruptState after quarantining."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        try:
            return AgentState.from_bytes(data)
        except (ValueError, TypeError, KeyError) as error:
            quarantine = self.quarantine()
            raise CorruptState(f"the agent state was unreadable ({error}); it was moved to {quarantine.name}",
                               where=self.path,
                               hint="installs are refused until a technician restores the state; booting "
                                    "continues from the boot record") from None

    def quarantine(self) -> Path:
        number = 1
        while (target := self.path.with_name(f"{STATE_FILE}.corrupt-{number}")).exists():
            number += 1
        os.rename(self.path, target)
        return target

    def save(self, state: AgentState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, state.to_bytes(), mode=0o640)
