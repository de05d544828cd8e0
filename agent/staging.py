"""Building the new environment's components (docs/AGENT.md, "Install", step 4).

Everything here writes strictly beneath the new environment's root and follows no symlink on the
way (agent/beneath.py, T-STAGE-BENEATH); the running environment is only read, also beneath its
root. Listings that would stage one component over another's tree are refused before anything
is written (agent/layout.py, T-NESTED). Intermediate trees of a chain of deltas are built in
``STATE/chain``, never beside the environments, and removed afterwards and after a crash
(agent/resume.py).
"""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

from agent.apply import StagingError, WorkBudget, apply_component, verify_staged
from agent.beneath import Beneath
from agent.format.manifest import Component, Manifest
from agent.format.paths import ROOT
from agent.format.tree import FILE, tree_digest
from agent.known_hashes import KnownHashes
from agent.layout import Layout
from agent.payload import Payload
from agent.progress import Progress, step_counter
from agent.scan import scan_tree
from agent.choice import Choice

def check_layout(layout: Layout, chosen: dict[str, list[Choice]]) -> None:
    """Every listing of every step fits the layout. Raises LayoutConflict (T-NESTED)."""
    for route in chosen.values():
        for step in route:
            layout.check_listing(step.component)


def staging_order(layout: Layout, names) -> list[str]:
    """A component that contains others (the platform at the environment's root) comes first."""
    def depth(name: str) -> int:
        path = layout.component_path(name)
        return 0 if path == ROOT else path.count("/") + 1
    return sorted(names, key=lambda name: (depth(name), name))


def stage(layout: Layout, chosen: dict[str, list[Choice]], bundles: dict[str, tuple[Path, Manifest]],
          environment: Path, running: Path | None, installed: dict[str, str], chain: Path,
          progress: Progress | None = None, running_listing: Callable[[str], Component | None] | None = None) -> None:
    """Bring every chosen component of the new ``environment`` to its route's last step, reading
    bases from ``running`` (None at provisioning), then check that the components not updated
    were cloned faithfully. ``installed``: component -> the tree digest recorded when it was
    installed; ``bundles``: bundle id -> (directory, verified manifest); ``chain``:
    where the steps of a chain before the last are built (StateDir.chain); ``progress`` hears how
    many bytes of each component are written; ``running_listing``: component -> its listing in
    the running environment, asked for only to name a base file that differs (BaseTree).

    Raises StagingError, EscapingPath, WorkExceeded, CorruptPayload, CorruptObject, OSError; the
    caller destroys the new environment.
    """
    names = set(installed) | set(chosen)
    budget = WorkBudget()
    with Beneath.open_root(Path(environment)) as new, _open_or_none(running) as old:
        try:
            for number, name in enumerate(staging_order(layout, chosen)):
                _stage_component(layout, chosen[name], bundles, new, old, names, budget, chain / str(number),
                                 progress, running_listing)
        finally:
            shutil.rmtree(chain, ignore_errors=True)
        if old is not None:
            untouched = {name: digest for name, digest in installed.items() if name not in chosen}
            _check_untouched(layout, untouched, new, old, names)


def _open_or_none(path: Path | None):
    return Beneath.open_root(Path(path), follow_root=True) if path is not None else nullcontext()


def _stage_component(layout: Layout, route: list[Choice], bundles: dict[str, tuple[Path, Manifest]], new: Beneath,
                     old: Beneath | None, names: set[str], budget: WorkBudget, chain: Path,
                     progress: Progress | None = None,
                     running_listing: Callable[[str], Component | None] | None = None) -> None:
    """The last step of the route updates the cloned tree in place (only what changed is
    written); the steps before it are built from scratch under ``chain``, each the base of the
    next. The first step reads its base from the running environment."""
    name = route[0].component.name
    path = layout.component_path(name)
    left_alone = layout.left_alone(name, names)
    as_root = os.geteuid() == 0
    opened: list[Beneath] = []
    first = route[0].component  # asked for only when a patched file fails: first is a delta then
    base_listing = (lambda: _files(running_listing(name), first.base.tree_digest)) if running_listing else None
    try:
        base = None
        if old is not None and route[0].component.is_delta:
            try:
                base = old.directory(path)
            except FileNotFoundError:
                raise StagingError(f"{name} is not at {path!r} in the running environment, where [layout] puts it",
                                   hint="[layout] must stay as it was when the machine was provisioned") from None
            opened.append(base)
        for number, step in enumerate(route, 1):
            last = number == len(route)
            if last:
                into = new.directory(path, create=True)
            else:
                (chain / str(number)).mkdir(parents=True, mode=0o700)
                into = Beneath.open_root(chain / str(number))
            opened.append(into)
            directory, manifest = bundles[step.bundle]
            in_place = last and number == 1 and old is not None
            label = f"staging {name}" + (f" (step {number} of {len(route)})" if len(route) > 1 else "")
            total = _bytes_written(step.component, in_place)
            advance = step_counter(progress, label, total)
            with KnownHashes() as known:
                with Payload(directory, manifest) as payload:
                    apply_component(step.component, payload, into, base=base if step.component.is_delta else None,
                                    set_owner=as_root, exclude=left_alone if last else (), progress=advance,
                                    target_is_clone_of_base=in_place, budget=budget, known=known,
                                    base_listing=base_listing)
                if progress is not None:
                    progress(label, total, total)  # files kept in place were not counted as they went
                verify_staged(step.component, into, check_owner=as_root, exclude=left_alone if last else (),
                              known=known)
            shutil.rmtree(chain / str(number - 1), ignore_errors=True)  # it was only the base of this step
            base = into
            base_listing = lambda built=step.component: _files(built)  # the tree just built
    finally:
        for tree in opened:
            tree.close()


def _files(listing: Component | None, tree_digest: str | None = None) -> dict[str, str] | None:
    """Path -> SHA-256 of the files of ``listing``, if it lists the tree of ``tree_digest`` (when given)."""
    if listing is None or tree_digest not in (None, listing.tree_digest):
        return None
    return {e.path: e.sha256 for e in listing.entries if e.type == FILE}


def _bytes_written(component: Component, in_place: bool) -> int:
    """What staging ``component`` writes, for progress: every file's bytes, less those of the files
    that stay where they are when the tree is updated in place (apply_component)."""
    return sum(e.size for e in component.entries
               if e.type == FILE and not (in_place and e.base_path == e.path))


def _check_untouched(layout: Layout, untouched: dict[str, str], new: Beneath, old: Beneath, names: set[str]) -> None:
    """The components not updated must have been cloned faithfully from the running environment.

    A clone that still matches the digest recorded at install is faithful without a look at the
    running tree: one scan instead of two (a whole platform takes tens of seconds on a slow
    disk). Only when it does not match is the running tree scanned too, because the running
    environment may itself differ from what was installed (a digest recorded over a layout
    since changed, a file the vendor's own tools edited), and that alone must not block an
    update of something else.

    A running environment can have filesystems mounted inside it that its clone does not hold:
    on bectl it is the live "/", with devfs, /tmp, log datasets and perhaps the stick. The
    running tree is read only where the clone has a filesystem too, so those are left out of
    both sides."""
    for name, installed_digest in sorted(untouched.items()):
        left_alone = layout.left_alone(name, names)
        path = layout.component_path(name)
        mounted_in_clone: list[str] = []
        with new.directory(path) as clone:
            cloned = _digest(clone, left_alone, mounts=mounted_in_clone)
        if cloned == installed_digest:
            continue
        mounted_running: list[str] = []
        with old.directory(path) as origin:
            running = _digest(origin, left_alone, mounts=mounted_running, enter=set(mounted_in_clone))
        outside = tuple(m for m in mounted_running if m not in mounted_in_clone)
        if outside:  # read again without them: both lists whole at once would hold twice the memory
            with new.directory(path) as clone:
                cloned = _digest(clone, left_alone + outside)
        if cloned != running:
            raise StagingError(f"the clone of {name} differs from the running environment",
                               hint="check the environments' filesystem")


def _digest(tree: Beneath, left_alone: tuple[str, ...], mounts: list[str] | None = None,
            enter: set[str] | None = None) -> str:
    """The tree's digest, leaving out what no component carries and a program may have made in
    it (a socket, a FIFO, a name or link target that is not UTF-8): the same in the clone and
    the running tree, and never a reason to refuse the update of another component. ``mounts``
    and ``enter`` as for scan_tree."""
    return tree_digest(scan_tree(tree, exclude=left_alone, foreign=[], mounts=mounts, enter=enter))
