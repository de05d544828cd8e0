"""Rules for paths inside a component tree (docs/FORMAT.md, "Paths").

A manifest is signed, but a signed manifest is not trusted to stay inside its environment: an
insider or a compromised build machine must not be able to write outside it (T-PATH in
docs/THREAT-MODEL.md). These checks are pure and run on every manifest the device parses.
"""

from __future__ import annotations

import posixpath
import unicodedata
from typing import Mapping

MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
MAX_DEPTH = 128
ROOT = "."


class PathError(ValueError):
    """A path or link target breaks the rules; the message says which rule."""


def check_path(path: str) -> None:
    """A component-relative path: ``a/b/c``, or ``.`` for the component's root directory."""
    if path == ROOT:
        return
    if not isinstance(path, str) or not path:
        raise PathError("empty path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise PathError(f"path {path!r} is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise PathError(f"path longer than {MAX_PATH_BYTES} bytes")
    if "\0" in path:
        raise PathError(f"path {path!r} contains a NUL byte")
    if path.startswith("/"):
        raise PathError(f"path {path!r} is absolute")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise PathError(f"path {path[:80]!r}... is nested deeper than {MAX_DEPTH} levels")
    for part in parts:
        if part in ("", ".", ".."):
            raise PathError(f"path {path!r} has an empty, '.' or '..' component")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathError(f"a name in {path[:80]!r} is longer than {MAX_NAME_BYTES} bytes")


def parent(path: str) -> str:
    return posixpath.dirname(path) or ROOT


def ancestors(path: str) -> list[str]:
    """The directories leading to ``path``, outermost first (``a``, ``a/b`` for ``a/b/c``)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def collision_key(path: str, *, fold_case: bool) -> str:
    """Two paths with the same key are the same file on some filesystem (NFC/NFD, or case)."""
    key = unicodedata.normalize("NFC", path)
    return key.casefold() if fold_case else key


def check_link_target(path: str, target: str, *, must_stay_inside: bool) -> None:
    """A symlink target: bounded, no NUL; for content components, relative and inside the tree."""
    if not isinstance(target, str) or not target:
        raise PathError(f"symlink {path!r} has an empty target")
    try:
        size = len(target.encode("utf-8"))
    except UnicodeEncodeError:
        raise PathError(f"symlink {path!r} target is not valid UTF-8") from None
    if size > MAX_PATH_BYTES or "\0" in target:
        raise PathError(f"symlink {path!r} has an overlong target or one with a NUL byte")
    if must_stay_inside and target.startswith("/"):
        raise PathError(f"symlink {path!r} -> {target!r} is absolute; content components may only "
                        "link inside themselves")


MAX_SYMLINK_HOPS = 40  # Linux's limit
# The names walked while resolving every symlink of one listing. A legitimate link costs a few
# steps; 40 chained links each padded to 4 KiB ("a/../a/../") cost ~80,000, so a signed but
# hostile manifest with thousands of them would keep the device busy for minutes without this.
MAX_RESOLUTION_STEPS = 4_000_000


class ResolutionBudget:
    """The steps left for resolving the symlinks of one listing (shared by its resolve_within calls)."""

    def __init__(self, steps: int = MAX_RESOLUTION_STEPS):
        self.left = steps


def resolve_within(path: str, symlinks: Mapping[str, str], budget: ResolutionBudget | None = None) -> str:
    """Resolve ``path`` the way the kernel would inside a tree whose symlinks are ``symlinks``.

    Returns the resolved component-relative path. Raises PathError if resolution climbs above the
    component's root, loops, or exhausts ``budget``. A purely lexical check is not enough:
    ``s -> ..`` followed by ``e -> s/../x`` escapes although ``normpath`` says it stays inside.
    """
    budget = budget or ResolutionBudget()
    pending = [part for part in reversed(path.split("/")) if part not in ("", ".")]  # next name last
    resolved: list[str] = []  # the resolved prefixes: "a", "a/b", "a/b/c"
    hops = 0
    while pending:
        budget.left -= 1
        if budget.left < 0:
            raise PathError(f"resolving the symlinks takes more than {MAX_RESOLUTION_STEPS} steps (at {path!r})")
        part = pending.pop()
        if part == "..":
            if not resolved:
                raise PathError(f"{path!r} resolves outside its component")
            resolved.pop()
            continue
        candidate = f"{resolved[-1]}/{part}" if resolved else part
        target = symlinks.get(candidate)
        if target is None:
            resolved.append(candidate)
            continue
        hops += 1
        if hops > MAX_SYMLINK_HOPS:
            raise PathError(f"{path!r} goes through a symlink loop")
        if target.startswith("/"):
            raise PathError(f"{path!r} goes through the absolute symlink {candidate!r}")
        pending.extend(part for part in reversed(target.split("/")) if part not in ("", "."))
    return resolved[-1] if resolved else ROOT
