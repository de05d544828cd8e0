"""Checking installed trees against their signed manifests (docs/AGENT.md, "Audit").

:func:`compare` is pure: the entries a manifest lists against those a scan found, every difference
named (not just the first), for staging's own check (agent/apply.py verify_staged) and for the
audit of an installed environment. :func:`audit_environment` is the I/O shell: for each component
of an environment it scans the tree exactly as staging checked it (agent/layout.py: nested
components and machine-local ``preserve`` paths left out) and compares it with the component as
its kept signed manifest says (agent/kept.py) - verified under the device's trust root, so the
audit trusts nothing but that root. A component without a verifiable kept manifest is reported
as unverifiable, never as clean.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from agent.format.paths import ancestors
from agent.format.tree import HARDLINK, SYMLINK, Entry
from agent.trust_store import device_roots
from agent.kept import KeptDamaged, VerifiedKept, environment_records, verified_kept
from agent.scan import scan_tree
from keys.errors import Failed, Refused, UpdateError
from keys.printable import printable

MAX_LISTED = 1000  # paths listed per kind and component; the counts say how many in all


@dataclass(frozen=True)
class Modified:
    path: str
    what: tuple[str, ...]  # of "type", "size", "content", "target", "mode", "owner"


@dataclass
class AuditResult:
    missing: list[str] = field(default_factory=list)
    modified: list[Modified] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    first: str | None = None  # the first difference in listing order, in words (staging's error)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.modified or self.unexpected)


def _within(path: str, roots: Iterable[str]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def compare(expected: Iterable[Entry], actual: Iterable[Entry], exclude: tuple[str, ...] = (), *,
            check_owner: bool) -> AuditResult:
    """Pure: ``expected`` (a manifest's entries) against ``actual`` (a scan of the tree, made with
    the same ``exclude``). Paths beneath ``exclude`` are not compared, and the directories leading
    to them are not unexpected. Mode is not compared for links (symlinks have none that matters, a
    hard link's is its file's); owner only with ``check_owner`` (staged as root) and not for hard
    links (their file's). Modification times are not compared: the manifest's are informational."""
    found = {entry.path: entry for entry in actual}
    result = AuditResult()
    for want in expected:
        if _within(want.path, exclude):
            continue
        have = found.pop(want.path, None)
        if have is None:
            result.missing.append(want.path)
            result.first = result.first or f"{want.path!r} is missing"
            continue
        checks = [("type", want.type, have.type), ("size", want.size, have.size),
                  ("content", want.sha256, have.sha256), ("target", want.target, have.target)]
        if want.type not in (HARDLINK, SYMLINK):
            checks.append(("mode", want.mode, have.mode))
        if check_owner and want.type != HARDLINK:
            checks.append(("owner", (want.uid, want.gid), (have.uid, have.gid)))
        what = tuple(name for name, wanted, got in checks if wanted != got)
        if what:
            result.modified.append(Modified(want.path, what))
            result.first = result.first or f"{want.path!r} has the wrong {what[0]}"
    leading = {directory for path in exclude for directory in ancestors(path)}
    result.unexpected = sorted(set(found) - leading)
    if result.unexpected:
        result.first = result.first or f"{result.unexpected[0]!r} is unexpected"
    return result


def _capped(values: list, convert=lambda v: v) -> list:
    return [convert(v) for v in values[:MAX_LISTED]]


def result_json(result: AuditResult) -> dict:
    """The lists capped at MAX_LISTED each, with their full counts."""
    return {"missing": _capped(result.missing), "missing_count": len(result.missing),
            "modified": _capped(result.modified, lambda m: {"path": m.path, "what": list(m.what)}),
            "modified_count": len(result.modified),
            "unexpected": _capped(result.unexpected), "unexpected_count": len(result.unexpected)}


def _empty(manifest_sha256: str | None, problem: str | None) -> dict:
    return {"manifest_sha256": manifest_sha256, "version": None, "sequence": None,
            **result_json(AuditResult()), "other_filesystems": [], "problem": problem}


def audit_environment(device, environment: str, *, check_owner: bool | None = None) -> dict:
    """Audit every installed component of ``environment`` against its verified kept manifest.

    ``check_owner``: compare owners (default: when running as root, as staging sets them only then).
    The components are those its kept record names, and for the committed environment also those
    the state names (one installed before manifests were kept is reported unverifiable).
    Returns {"environment", "clean", "problem", "components": {NAME: {"manifest_sha256", "version",
    "sequence", "missing", "modified", "unexpected", their counts, "problem"}}}.
    Raises Refused (no such environment), Failed (not mounted), NoTrustRoot."""
    check_owner = os.geteuid() == 0 if check_owner is None else check_owner
    found = device.backend.get(environment)
    if found is None:
        raise Refused(f"there is no environment {environment}", hint="see bundle-agent status for their names")
    if found.path is None:
        raise Failed(f"{device.backend.name} backend: {environment} is not mounted; its files cannot be audited",
                     hint="mount the environment, then audit it again")
    state_dir = device.state_dir
    roots = device_roots(device.config.trust_root, state_dir.trust)
    problem = None
    try:
        names = set(environment_records(state_dir, environment))
        kept = verified_kept(state_dir, environment, roots)
    except KeptDamaged as error:
        names, kept, problem = set(), {}, error.message
    names |= _state_components(device, environment)
    if not names and problem is None:
        problem = f"no record of what {environment} holds: it was made before installed manifests were kept"
    layout = device.config.layout
    components = {}
    for name in sorted(names):
        components[name] = _audit_component(found.path, layout, name, names,
                                            kept.get(name) or VerifiedKept(None, None, _UNVERIFIABLE), check_owner)
    clean = problem is None and all(c["problem"] is None and not (c["missing_count"] or c["modified_count"]
                                                                   or c["unexpected_count"])
                                    for c in components.values())
    return {"environment": environment, "clean": clean, "problem": problem, "components": components}


_UNVERIFIABLE = ("unverifiable: no kept signed manifest (installed before manifests were kept); install "
                 "an update of it to have one")


def _state_components(device, environment: str) -> set[str]:
    """The components the state names for ``environment`` when it is the committed one; none when
    the state is unusable (the record alone then says what is installed)."""
    try:
        state = device.store.load()
    except UpdateError:
        return set()
    return set(state.components) if state.environment == environment else set()


def _audit_component(environment_path, layout, name: str, names: set[str], kept: VerifiedKept,
                     check_owner: bool) -> dict:
    if kept.component is None:
        return _empty(kept.manifest_sha256, kept.problem)
    component = kept.component
    exclude = layout.left_alone(name, names)
    tree = environment_path / layout.component_path(name)
    problem = None
    foreign: list[str] = []  # FIFOs, sockets, device nodes: no component carries one, so unexpected
    mounts: list[str] = []
    # The booted environment on bectl is the live "/", with devfs, /tmp, log datasets and perhaps
    # the stick mounted in it. A filesystem mounted where the manifest lists nothing beneath is not
    # the component's; one mounted over listed files (a deep boot environment's child dataset, or
    # one that hides the files) is audited like the rest.
    listed_beneath = {directory for entry in component.entries for directory in ancestors(entry.path)}
    if tree.is_symlink() or not tree.is_dir():
        actual = []  # everything is missing
        problem = None if not tree.exists() and not tree.is_symlink() else f"{tree} is not a directory"
    else:
        try:
            actual = scan_tree(tree, exclude=exclude, foreign=foreign, mounts=mounts, enter=listed_beneath)
        except (UpdateError, OSError) as error:  # an unreadable folder
            return {**_empty(kept.manifest_sha256, f"the tree cannot be scanned: {error}"),
                    "version": component.version, "sequence": component.sequence}
    others = tuple(path for path in mounts if path not in listed_beneath)
    result = compare(component.entries, actual, exclude + others, check_owner=check_owner)
    result.unexpected = sorted({*result.unexpected, *map(printable, foreign)})  # a name may not be UTF-8
    return {"manifest_sha256": kept.manifest_sha256, "version": component.version, "sequence": component.sequence,
            **result_json(result), "other_filesystems": _capped(sorted(others)), "problem": problem}
