"""Where components live inside an environment, and which listings may be staged there.

Pure: no files. ``[layout]`` in the agent's configuration (docs/AGENT.md, "Layout") places the
platform and the games folder; the games may be nested inside the platform (the whole-system
layout: ``platform = "."``, ``games = "usr/local/games"``), and ``preserve`` names machine-local
paths of the platform that every new environment keeps from the running one.

A signed listing is not trusted to respect that layout (T-NESTED in docs/THREAT-MODEL.md): the
platform's listing must not claim a path inside the games folder, nor make the games folder,
a preserved path or any directory leading to them anything but a directory. Otherwise staging
one component would replace another's tree, or lead the next one's writes through a symlink.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.format.manifest import Component
from agent.format.paths import ROOT, PathError, ancestors, check_path
from agent.format.tree import DIR
from keys.errors import Refused

PLATFORM = "platform"


class LayoutConflict(Refused):
    """A component's listing claims another component's or a machine-local path."""


def _inside(path: str, folder: str) -> bool:
    """True if ``path`` is ``folder`` or lies beneath it (``.`` contains everything)."""
    return folder == ROOT or path == folder or path.startswith(folder + "/")


def _relative(path: str, folder: str) -> str:
    """``path`` (inside ``folder``) relative to ``folder``."""
    if folder == ROOT:
        return path
    return ROOT if path == folder else path[len(folder) + 1:]


def check_layout_path(value, what: str) -> str:
    """``.`` or a relative path passing the manifest's path rules. Raises ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string (a path inside the environment)")
    if value == ROOT:
        return value
    try:
        check_path(value)
    except PathError as error:
        raise ValueError(f"{what} = {value!r} must be \".\" or a relative path inside the environment, like "
                         f"\"usr/local/games\" ({error})") from None
    return value


@dataclass(frozen=True)
class Layout:
    """Component paths relative to an environment's root; ``preserve`` relative to the platform."""

    platform: str = "platform"
    games: str = "games"
    preserve: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Raises ValueError for a layout in which components would overlap."""
        check_layout_path(self.platform, "platform")
        check_layout_path(self.games, "games")
        if _inside(self.platform, self.games):
            raise ValueError(f"platform = {self.platform!r} lies inside games = {self.games!r}: every name in the "
                             "games folder belongs to a game")
        for path in self.preserve:
            if path == ROOT:
                raise ValueError("preserve: the whole platform cannot be machine-local")
            try:
                check_path(path)
            except PathError as error:
                raise ValueError(f"preserve: {path!r} must be a relative path inside the platform, like "
                                 f'"etc/ssh" ({error})') from None
            local = path if self.platform == ROOT else f"{self.platform}/{path}"
            if _inside(local, self.games) or _inside(self.games, local):
                raise ValueError(f"preserve: {path!r} overlaps the games folder {self.games!r}")

    def component_path(self, name: str) -> str:
        """Where a component's tree lives inside an environment."""
        return self.platform if name == PLATFORM else f"{self.games}/{name.split('/', 1)[1]}"

    def games_folder_in(self, name: str) -> str | None:
        """The games folder relative to this component's tree, if it lies inside it."""
        own = self.component_path(name)
        if name == PLATFORM and _inside(self.games, own):
            return _relative(self.games, own)
        return None

    def left_alone(self, name: str, installed: set[str]) -> tuple[str, ...]:
        """What staging this component leaves as it is, relative to its tree: the trees of the
        other components nested inside it, and for the platform the machine-local paths."""
        own = self.component_path(name)
        result = list(self.preserve) if name == PLATFORM else []
        for other in installed - {name}:
            path = self.component_path(other)
            if _inside(path, own) and path != own:
                result.append(_relative(path, own))
        return tuple(sorted(result))

    def check_listing(self, component: Component) -> None:
        """Refuse, before anything is written, a listing that claims a path of another component
        (anything inside the games folder, for a platform containing it) or that makes the games
        folder, a preserved path or a directory leading to them a non-directory (T-NESTED).
        Entries at or beneath a preserved path are allowed: the machine's own copy is kept.
        Raises LayoutConflict."""
        games = self.games_folder_in(component.name)
        must_be_directories: dict[str, str] = {}
        for path in (games,) if games is not None else ():
            must_be_directories.update({a: f"it leads to the games folder {self.games!r}" for a in ancestors(path)})
            must_be_directories[path] = f"it is the games folder {self.games!r}"
        if component.name == PLATFORM:
            for path in self.preserve:
                must_be_directories.update({a: f"it leads to the machine-local path {path!r} ([layout] preserve)"
                                            for a in ancestors(path) if a not in must_be_directories})
        for entry in component.entries:
            if games is not None and entry.path != games and _inside(entry.path, games):
                raise LayoutConflict(
                    f"{component.name} {component.version} lists {entry.path!r}, inside the games folder "
                    f"{self.games!r}: only game components may be staged there",
                    hint="the bundle does not fit this machine's [layout]; ask the vendor for one that does")
            why = must_be_directories.get(entry.path)
            if why is not None and entry.type != DIR:
                raise LayoutConflict(
                    f"{component.name} {component.version} makes {entry.path!r} a {entry.type}, but {why}: it "
                    "must stay a directory",
                    hint="the bundle does not fit this machine's [layout]; ask the vendor for one that does")
