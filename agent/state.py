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

from agent.journal import Pending
from agent.state_dir import JOURNAL_FILE, RESULT_FILE, STATE_FILE, StateDir, StateUnusable, unusable
from keys.errors import Failed, Refused
from keys.files import write_atomic

# state.json: what is committed, touched only by provisioning, commit and rollback; journal.json:
# the step in progress; result.json: the last outcome, for status (agent/state_dir.py).
FORMAT = 1
_PARTS = {
    STATE_FILE: ("environment", "components", "floors", "history", "commits", "committed_at"),
    JOURNAL_FILE: ("pending", "failed_trials"),  # together: a failed trial is never forgotten
    RESULT_FILE: ("last_result",),
}
# Fields older agents wrote and this one no longer keeps: accepted when read, then dropped, so a
# device updated in the field does not see its result file as damaged.
_RETIRED = {RESULT_FILE: ("trial_count",)}


class CorruptState(Refused):
    """The committed state file was unreadable; it has been quarantined."""


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
    # Earlier committed environments: name, identity and components. A rollback goes only to one
    # whose backend still reports the same identity (agent/boot/base.py).
    history: list[dict] = field(default_factory=list)
    # The step in progress, journaled before it touches an environment (agent/journal.py).
    pending: Pending | None = None
    last_result: dict | None = None
    failed_trials: list[str] = field(default_factory=list)  # environments to remove once not running
    # Commits so far (provisioning, trials, technicians' switches) and the number of the one that
    # made the committed environment: when something was committed, counted without a clock.
    # Each history entry keeps its own "committed_at".
    commits: int = 0
    committed_at: int | None = None

    # The transitions of the committed state. Pure: the caller journals the step before and saves
    # after, and the recovery after a crash (agent/resume.py) applies the same transition.

    def provisioned(self, environment: str, components: dict[str, dict]) -> None:
        """The first environment is committed; the anti-rollback floors start at its sequences, or
        stay where they are when higher (a machine provisioned again after its state was lost
        starts from the floors its kept manifests vouch for, agent/floors.py)."""
        if self.environment != environment:  # a provisioning finished again after a crash counts once
            self.commits += 1
            self.committed_at = self.commits
        self.environment = environment
        self.components = {n: InstalledComponent(**c) for n, c in components.items()}
        for name, installed in self.components.items():
            self.floors[name] = max(self.floors.get(name, installed.sequence), installed.sequence)
        self.pending = None
        self.last_result = {"outcome": "provisioned", "message": f"provisioned {environment}"}

    def committed_trial(self, previous_identity: str | None) -> None:
        """The pending trial passed its health check: it becomes what is committed, and the
        environment committed until now goes into the history with ``previous_identity``, what
        its backend reports for it now (it was the default until this moment: nothing replaced it)."""
        name = self.pending.environment
        if self.environment != name:  # a repeated check after a crash must not push it twice
            self._push_committed(previous_identity)
        self.environment = name
        self.components = {n: InstalledComponent(**c) for n, c in self.pending.components.items()}
        for component, installed in self.components.items():
            self.floors[component] = installed.sequence  # T-ROLLBACK: the floor follows what is committed
        self.pending = None
        versions = ", ".join(f"{n} {c.version}" for n, c in sorted(self.components.items()))
        self.last_result = {"outcome": "committed",
                            "message": f"{name} passed its health check and is committed: {versions}"}

    def _push_committed(self, identity: str | None) -> None:
        """The committed environment goes into the history; the next commit is counted."""
        self.history.append({"environment": self.environment, "identity": identity,
                             "components": {n: c.__dict__ for n, c in self.components.items()},
                             "committed_at": self.committed_at})
        self.commits += 1
        self.committed_at = self.commits

    def switched_to(self, previous_identity: str | None) -> None:
        """A technician's rollback or switch (agent/technician/switch.py) passed its health check:
        the pending environment, one of the history, is committed again with what it holds, and
        the one committed until now goes into the history. The floors stay: the newer releases
        may be installed again, older ones not (a switch below a floor needed a token)."""
        name = self.pending.environment
        if self.environment != name:  # a repeated check after a crash must not push it twice
            self.history = [entry for entry in self.history if entry["environment"] != name]
            self._push_committed(previous_identity)
        self.environment = name
        self.components = {n: InstalledComponent(**c) for n, c in self.pending.components.items()}
        self.pending = None
        versions = ", ".join(f"{n} {c.version}" for n, c in sorted(self.components.items()))
        self.last_result = {"outcome": "committed",
                            "message": f"{name} passed its health check and is committed again: {versions}"}

    def rolled_back_to(self, environment: str) -> None:
        """A manual rollback: ``environment``, the newest of the history, is committed again. The
        anti-rollback floors stay: a rollback is a local decision, and the newer release may be
        installed again later; older ones still may not."""
        if self.environment != environment:  # finished already when a crash repeats it
            entry = next(e for e in reversed(self.history) if e["environment"] == environment)
            self.history = self.history[:self.history.index(entry)]
            self.commits += 1
            self.committed_at = self.commits
            self.environment = environment
            self.components = {n: InstalledComponent(**c) for n, c in entry["components"].items()}
        self.pending = None
        self.last_result = {"outcome": "rolled back", "message": f"{environment} is the default again (manual rollback)"}

    def part_bytes(self, name: str) -> bytes:
        document = {key: value for key, value in asdict(self).items() if key in _PARTS[name]}
        if "pending" in document:
            document["pending"] = self.pending.to_json() if self.pending is not None else None
        document["format"] = FORMAT
        return (json.dumps(document, sort_keys=True, indent=2) + "\n").encode("utf-8")


def _parse(data: bytes, name: str) -> dict:
    document = json.loads(data)
    if not isinstance(document, dict) or document.pop("format", None) != FORMAT:
        raise ValueError(f"not a {name} of format {FORMAT}")
    for retired in _RETIRED.get(name, ()):
        document.pop(retired, None)
    if set(document) - set(_PARTS[name]):
        raise ValueError(f"unknown fields {sorted(set(document) - set(_PARTS[name]))}")
    if document.get("pending") is not None:
        document["pending"] = Pending.from_json(document["pending"])
    failed = document.get("failed_trials", [])
    if not (isinstance(failed, list) and all(isinstance(n, str) for n in failed)):
        raise ValueError("failed_trials is not a list of environment names")
    return document


class StateStore:
    """Three files, each written atomically and only when it changes, so a refused or failed
    install leaves the committed state file byte-identical (docs/AGENT.md, "State")."""

    def __init__(self, state_dir: StateDir):
        self.state_dir = state_dir
        self.path = state_dir.file(STATE_FILE)

    def load(self) -> AgentState:
        """The current state (empty before provisioning). Raises CorruptState after quarantining a
        damaged committed state; a damaged journal or result is quarantined and forgotten. Raises
        StateUnusable when the state cannot be read (no rights: the agent runs as root)."""
        values: dict = {}
        damaged = None
        for name in _PARTS:
            path = self.state_dir.file(name)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as error:
                raise unusable(error, self.state_dir.root, f"read the agent's state ({name})") from None
            try:
                values.update(_parse(data, name))
            except (ValueError, TypeError) as error:
                quarantine = self.quarantine(path)
                if name == STATE_FILE:
                    raise CorruptState(
                        f"the agent state was unreadable ({error}); it was moved to {quarantine.name}", where=path,
                        hint="installs are refused until a technician restores the state; booting continues "
                             "from the boot record") from None
                damaged = {"outcome": "damaged", "message": f"{name} was unreadable ({error}) and moved to "
                                                           f"{quarantine.name}"}
        try:
            values["components"] = {n: InstalledComponent(**v) for n, v in values.get("components", {}).items()}
            state = AgentState(**values)
            for component, floor in state.floors.items():
                if not isinstance(floor, int) or isinstance(floor, bool):
                    raise ValueError(f"floor of {component} is not an integer")
            for name, count in (("commits", state.commits), ("committed_at", state.committed_at or 0)):
                if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise ValueError(f"{name} is not a count")
        except (ValueError, TypeError) as error:
            quarantine = self.quarantine(self.path)
            raise CorruptState(f"the agent state was inconsistent ({error}); it was moved to {quarantine.name}",
                               where=self.path, hint="installs are refused until a technician restores the state")
        if damaged is not None:  # recorded now: the file that said otherwise is gone
            state.last_result = damaged
            self.save(state)
        return state

    def quarantine(self, path: Path) -> Path:
        number = 1
        while (target := path.with_name(f"{path.name}.corrupt-{number}")).exists():
            number += 1
        try:
            os.rename(path, target)
        except OSError as error:
            raise unusable(error, self.state_dir.root, f"move the damaged {path.name} aside") from None
        return target

    def save(self, state: AgentState) -> None:
        """Raises StateUnusable when the state directory cannot be written."""
        root = self.state_dir.root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise unusable(error, root, "create the state directory") from None
        for name in _PARTS:
            data = state.part_bytes(name)
            path = self.state_dir.file(name)
            try:
                unchanged = path.read_bytes() == data
            except FileNotFoundError:
                unchanged = data == AgentState().part_bytes(name)  # absent means empty: never committed
            except OSError as error:
                raise unusable(error, root, f"read the agent's state ({name})") from None
            if not unchanged:
                try:
                    write_atomic(path, data, mode=0o640)
                except StateUnusable:
                    raise
                except Failed as error:  # write_atomic names the file; say what to check
                    raise StateUnusable(f"cannot save the agent's state: {error.message}", where=error.where,
                                        hint=f"run bundle-agent as root, and check that {root} is writable and "
                                             "its filesystem has free space") from None
