"""The boot-environment interface, in bectl's vocabulary (bectl(8), libbe's be_activate).

An environment is a complete system tree. ``N`` marks the one booted now, ``R`` the default on
reboot, ``T`` the one booted once on the next boot only (a trial): if that boot fails before the
agent commits it, the machine comes back in ``R`` by itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from keys.errors import Failed


class BootError(Failed):
    """A boot backend operation failed; the message starts with the backend's name."""

    def __init__(self, backend: str, message: str, **kwargs):
        super().__init__(f"{backend} backend: {message}", **kwargs)


@dataclass(frozen=True)
class Environment:
    name: str
    path: Path | None  # where its tree can be read and written now (None if not mounted)
    booted_now: bool  # N
    default: bool  # R
    next_once: bool  # T

    @property
    def flags(self) -> str:
        return "".join(f for f, on in (("N", self.booted_now), ("R", self.default), ("T", self.next_once)) if on)


class BootBackend(ABC):
    name: str

    @abstractmethod
    def environments(self) -> list[Environment]:
        """All environments, oldest first."""

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

    def get(self, name: str) -> Environment | None:
        return next((e for e in self.environments() if e.name == name), None)

    def booted(self) -> Environment | None:
        return next((e for e in self.environments() if e.booted_now), None)

    def default(self) -> Environment | None:
        return next((e for e in self.environments() if e.default), None)
