"""The boot-environment interface, in bectl's vocabulary (bectl(8), libbe's be_activate).

An environment is a complete system tree. ``N`` marks the one booted now, ``R`` the default on
reboot, ``T`` the one booted once on the next boot only (a trial): if that boot fails before the
agent commits it, the machine comes back in ``R`` by itself.

The backend owns the environments' names and identities: it names each new environment
(:meth:`BootBackend.new_name`) and reports for each an ``identity`` that changes whenever the
environment's content is replaced - a slot reflashed, a name destroyed and made again. The
agent's history and rollback refer to identities, so a rollback never boots a name whose
content is no longer what was committed there. A new backend is one module implementing this
class and one line in the registry (agent/boot/__init__.py).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from keys.errors import Failed

# The names the agent gives the environments it makes: env-N, N growing. Only these are pruned,
# never an installer's "default" or one another tool made.
_AGENT_NAME = re.compile(r"env-([1-9][0-9]{0,17})")


def agent_number(name: str) -> int | None:
    """N of an ``env-N`` the agent makes; None for any other name."""
    match = _AGENT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def next_agent_name(existing: list[str], highest_made: int = 0) -> str:
    """``env-N`` above every number in ``existing`` and above ``highest_made``."""
    numbers = [n for n in map(agent_number, existing) if n is not None]
    return f"env-{max(numbers + [highest_made]) + 1}"


class BootError(Failed):
    """A boot backend operation failed; the message starts with the backend's name."""

    def __init__(self, backend: str, message: str, **kwargs):
        super().__init__(f"{backend} backend: {message}", **kwargs)


@dataclass(frozen=True)
class Environment:
    name: str
    identity: str  # changes whenever the content is replaced, even under the same name
    path: Path | None  # where its tree can be read and written now (None if not mounted)
    booted_now: bool  # N
    default: bool  # R
    next_once: bool  # T
    made_by_agent: bool = False  # named by new_name(): the agent may prune it

    @property
    def flags(self) -> str:
        return "".join(f for f, on in (("N", self.booted_now), ("R", self.default), ("T", self.next_once)) if on)


class BootBackend(ABC):
    name: str
    settings: tuple[str, ...] = ()  # the [boot] keys it reads besides "backend" (agent/config.py: did you mean)

    @abstractmethod
    def __init__(self, settings: dict, system_root: Path):
        """``settings``: the configuration's ``[boot]`` table without ``backend``; ``system_root``:
        the root every path of the machine is taken under (``--root``, "/" on a running machine).
        Raises BootError naming the setting that is wrong."""

    @abstractmethod
    def environments(self) -> list[Environment]:
        """All environments, oldest first."""

    @abstractmethod
    def new_name(self) -> str:
        """The name for the next environment the agent makes: one no environment has now, and one
        that cannot make an identity recorded earlier appear again."""

    @abstractmethod
    def create_empty(self, name: str) -> Path:
        """A new, empty, inactive environment (factory provisioning). Returns its writable tree."""

    @abstractmethod
    def clone(self, source: str, name: str) -> Path:
        """A new inactive environment cloned cheaply from ``source``. Returns its writable tree."""

    @abstractmethod
    def activate_once(self, name: str) -> None:
        """Boot ``name`` on the next boot only (T); later boots return to the default."""

    @abstractmethod
    def cancel_once(self) -> None:
        """Forget a pending one-time boot."""

    @abstractmethod
    def commit(self, name: str) -> None:
        """Make ``name`` the default on every boot (R)."""

    @abstractmethod
    def destroy(self, name: str) -> None:
        """Remove an environment that is neither booted nor the default."""

    # Cheap-clone facts for the installer's space check, and whether factory provisioning can
    # start from nothing. Backends override what differs.
    can_create_empty = True

    def clone_shares_blocks(self) -> bool:
        """True when a clone costs no space until written (ZFS clones, reflinks)."""
        return False

    def holds(self, path: Path) -> bool:
        """True if ``path`` lies inside an environment (where agent state must never live: a clone
        would copy a journal that says "staging" into the very trial it describes)."""
        return False

    def space_path(self) -> Path | None:
        """A path on the filesystem new environments take their space from (None: the running one's)."""
        return None

    # The boot loader's part: only a backend whose environments no real boot loader chooses
    # (dirs) plays it, for ``bundle-agent boot``.
    plays_boot_loader = False

    def boot(self, committed: str | None = None) -> Environment:
        """Choose and record the environment to start (the one-time choice first, consumed
        durably before it is used). ``committed`` is what the agent's state names, for a damaged
        boot record."""
        raise BootError(self.name, "the real boot loader chooses the environment; `boot` is for the dirs backend")

    def get(self, name: str) -> Environment | None:
        return next((e for e in self.environments() if e.name == name), None)

    def identity_of(self, name: str) -> str | None:
        environment = self.get(name)
        return environment.identity if environment is not None else None

    def booted(self) -> Environment | None:
        return next((e for e in self.environments() if e.booted_now), None)

    def default(self) -> Environment | None:
        return next((e for e in self.environments() if e.default), None)
