"""Installing from a stick or a bundle: verify everything, then stage into a new environment.

The order is the safety argument (docs/AGENT.md, "Install"), each step persisted before the next:

1. read the medium; walk its trust-root rotations from the device's own root (never backwards);
2. verify every bundle (release-signer threshold over the exact manifest bytes) and choose per
   component (agent/select.py): product, hardware, targeting, anti-rollback;
3. before writing anything: every stored byte of the chosen bundles against its hash, and the
   free space;
4. journal ``pending: staging``; clone the running environment into a new inactive one; build each
   updated component beside its old tree with the apply engine (every byte hashed as read from
   the stick, every file checked), swap it in, and check the untouched components' trees;
5. journal ``pending: trial`` with the new component versions; activate the new environment for
   one trial boot; apply the reboot policy.

A failure anywhere before 5 destroys the new environment and clears the journal; the running
environment is never written to. A crash before 5 is cleaned up on the next run
(agent/recovery.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agent.apply import StagingError, apply_component, verify_staged
from agent.device import Device
from agent.format import stick
from agent.format.bundle_dir import MANIFEST, read_bundle
from agent.format.tree import FILE, tree_digest
from agent.payload import Payload
from agent.recovery import destroy_quietly, recover_interrupted, remove_failed_environments
from agent.scan import scan_tree
from agent.select import Choice, Decision, choose
from agent.state import AgentState
from agent.trust_store import advance, current_root, stick_roots
from agent.verify import VerifiedBundle, verify_bundle
from keys.errors import Failed, Refused, UpdateError


class NotProvisioned(Refused):
    """The machine has no committed environment yet."""


class TrialPending(Refused):
    """An installed update waits for its trial boot; nothing else is installed meanwhile."""


class StagingFailed(Failed):
    """The filesystem failed while staging (full, read-only, I/O error); nothing was changed."""


class NothingInstallable(Refused):
    """The medium was examined; nothing on it may be installed, and something was refused."""


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


@dataclass(frozen=True)
class _Found:
    path: Path
    verified: VerifiedBundle


def _read_medium(device: Device, medium: Path, report: Report):
    """Trust root (after the medium's rotations) and the verified bundles on a stick or bundle dir."""
    state_dir = device.config.state_dir
    root = current_root(device.config.trust_root, state_dir)
    if (medium / MANIFEST).is_file():
        folders = [(medium.name, medium, None)]
        offered_roots = []
    else:
        product = device.config.product
        folders = [(b.id, b.path, b.manifest_sha256) for b in stick.complete_bundles(medium, product)]
        offered_roots = stick_roots(medium, product)
    try:
        newer = advance(root, offered_roots, state_dir)
    except UpdateError as error:  # T-ROOT-*: a bad rotation on the stick poisons the whole stick
        report.refusals.append((str(medium), f"trust root rotation refused: {error}"))
        device.audit.record("refused", source=str(medium), reason=f"trust root rotation: {error}")
        raise
    if newer.version != root.version:
        device.audit.record("trust-root-rotated", from_version=root.version, to_version=newer.version)
    report.trust_root_version = newer.version
    found: dict[str, _Found] = {}
    for bundle_id, path, marked in folders:
        try:
            files = read_bundle(path)
            if marked is not None and hashlib.sha256(files.manifest_bytes).hexdigest() != marked:
                raise Refused("the manifest is not the one the COMPLETE marker names (changed after writing)",
                              where=path)
            found[bundle_id] = _Found(path, verify_bundle(files.manifest_bytes, files.signatures, newer,
                                                          where=path / MANIFEST))
        except UpdateError as error:
            report.refusals.append((bundle_id, str(error)))
            device.audit.record("refused", bundle=bundle_id, reason=str(error))
    return newer, found


def _bundles_used(chosen: dict[str, list[Choice]]) -> list[str]:
    return sorted({step.bundle for route in chosen.values() for step in route})


def _check_spool_space(device: Device, chosen: dict[str, list[Choice]], found: dict[str, _Found]) -> None:
    needed = sum(found[b].verified.manifest.payload_size for b in _bundles_used(chosen))
    directory = device.config.state_dir
    directory.mkdir(parents=True, exist_ok=True)
    info = os.statvfs(directory)
    if needed > info.f_bavail * info.f_frsize:
        raise Refused(f"not enough space in the state directory to copy the update from the medium: "
                      f"{needed >> 20} MiB needed, {(info.f_bavail * info.f_frsize) >> 20} MiB free",
                      where=directory, hint="free space on the state directory's filesystem")


def _spool(device: Device, chosen: dict[str, list[Choice]], found: dict[str, _Found]) -> dict[str, _Found]:
    """Check every stored byte of every chosen bundle before anything is staged (T-CONTENT),
    copying the bytes to the state directory as they are read: staging then uses exactly what
    was verified, and the medium is read once (T-TOCTOU). Returns the bundles as spooled."""
    spool = device.config.state_dir / "spool"
    shutil.rmtree(spool, ignore_errors=True)
    spooled = {}
    for bundle_id in _bundles_used(chosen):
        entry = found[bundle_id]
        local = spool / bundle_id
        with Payload(entry.path, entry.verified.manifest) as payload:
            payload.verify_all(copy_to=local)
        spooled[bundle_id] = _Found(local, entry.verified)
    return spooled


def _tree_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated, inodes) of a tree."""
    total = inodes = 0
    for directory, dirs, files in os.walk(path):
        inodes += len(dirs) + len(files)
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except OSError:
                pass
    return total, inodes


def _check_space(device: Device, chosen: dict[str, list[Choice]], running: Path | None) -> None:
    """Refuse before writing when the environments' filesystem cannot hold the new environment:
    the new or changed files of each route (two largest steps of a chain, every file rounded up
    to a block), plus the clone itself where blocks cannot be shared, and the inodes."""
    root = Path(device.backend.space_path() or running or device.config.state_dir)
    while not root.exists():  # not created yet (before provisioning): its filesystem is the parent's
        root = root.parent
    info = os.statvfs(root)
    block = info.f_frsize or 4096
    needed = inodes = 0
    for route in chosen.values():
        sizes = sorted(sum(-(-max(e.size, 1) // block) * block for e in step.component.entries
                           if e.type == FILE and (e.base_path != e.path or not step.component.is_delta))
                       for step in route)
        needed += sum(sizes[-2:])
        inodes += sum(len(step.component.entries) for step in route[-2:])
    if running is not None and not device.backend.clone_shares_blocks():
        clone_bytes, clone_inodes = _tree_usage(running)
        needed += clone_bytes
        inodes += clone_inodes
    free = info.f_bavail * block
    if needed > free:
        raise Refused(f"not enough space to stage the update: about {needed >> 20} MiB needed, {free >> 20} MiB free",
                      where=root, hint="free space on the environments' filesystem, or remove old environments")
    if info.f_files and inodes > info.f_favail:  # btrfs and ZFS report no inode limit (0)
        raise Refused(f"not enough inodes to stage the update: {inodes} needed, {info.f_favail} free", where=root,
                      hint="free inodes on the environments' filesystem, or remove old environments")


def _nested(device: Device, name: str, names: set[str]) -> tuple[str, ...]:
    """What staging this component leaves alone: other components' trees inside it, and for the
    platform the machine-local paths ([layout] preserve). Relative to the component's tree."""
    own = device.config.component_path(name)
    result = list(device.config.preserve) if name == "platform" else []
    for other in names - {name}:
        path = device.config.component_path(other)
        if own in (".", ""):
            result.append(path)
        elif path.startswith(own + "/"):
            result.append(path[len(own) + 1:])
    return tuple(sorted(result))


def _outermost_first(device: Device, chosen: dict) -> list[str]:
    """A component that contains others (the platform at the environment's root) is staged first."""
    def depth(name: str) -> int:
        path = device.config.component_path(name)
        return 0 if path in (".", "") else path.count("/") + 1
    return sorted(chosen, key=lambda name: (depth(name), name))


def _stage_component(device: Device, route: list[Choice], found: dict[str, _Found], environment: Path,
                     running: Path | None, names: set[str]) -> None:
    """Bring the component's tree in the new environment to the route's last step.

    Intermediate steps of a chain are built beside it; the last step updates the cloned tree in
    place (only what changed is written), reading its base from the running environment, which
    is never written.
    """
    name = route[0].component.name
    target = device.component_dir(environment, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    nested = _nested(device, name, names)
    as_root = os.geteuid() == 0
    base = device.component_dir(running, name) if running is not None else None
    built: list[Path] = []
    try:
        for number, step in enumerate(route, 1):
            last = number == len(route)
            into = target if last else target.with_name(f"{target.name}.staging-{number}")
            if not last:
                shutil.rmtree(into, ignore_errors=True)
            with Payload(found[step.bundle].path, found[step.bundle].verified.manifest) as payload:
                apply_component(step.component, payload, into, base=base if step.component.is_delta else None,
                                set_owner=as_root, exclude=nested if last else (),
                                target_is_clone_of_base=last and number == 1 and running is not None)
            verify_staged(step.component, into, check_owner=as_root, exclude=nested if last else ())
            if not last:
                built.append(into)
                if len(built) > 1:
                    shutil.rmtree(built.pop(0))  # it was only the base of this step
            base = into
    finally:
        for leftover in built:
            shutil.rmtree(leftover, ignore_errors=True)


def _check_untouched(device: Device, state: AgentState, chosen: dict[str, list[Choice]], environment: Path,
                     running: Path, names: set[str]) -> None:
    """The components not updated must have been cloned faithfully from the running environment."""
    for name in state.components:
        if name in chosen:
            continue
        nested = _nested(device, name, names)
        clone = scan_tree(device.component_dir(environment, name), exclude=nested)
        origin = scan_tree(device.component_dir(running, name), exclude=nested)
        if tree_digest(clone) != tree_digest(origin):
            raise StagingError(f"the clone of {name} differs from the running environment",
                               hint="check the environments' filesystem")


def _new_components(state: AgentState, chosen: dict[str, list[Choice]]) -> dict[str, dict]:
    result = {name: installed.__dict__ for name, installed in state.components.items()}
    for name, route in chosen.items():
        c = route[-1].component
        result[name] = {"version": c.version, "sequence": c.sequence, "tree_digest": c.tree_digest}
    return result


def install(device: Device, medium: Path) -> Report:
    """Raises NotProvisioned, TrialPending, NothingInstallable, and any verification or staging error."""
    report = Report()
    state = recover_interrupted(device, device.store.load())
    if state.environment is None:
        raise NotProvisioned("this machine has not been provisioned",
                             hint="install a full bundle first: bundle-agent provision BUNDLE_OR_STICK")
    if state.pending:
        raise TrialPending(f"an update to {state.pending['environment']} waits for its trial boot",
                           hint="reboot (bundle-agent boot, then boot-check) before installing another")
    remove_failed_environments(device, state)  # their space counts for the new environment
    medium = Path(medium)
    _, found = _read_medium(device, medium, report)
    chosen, report.decisions = choose(device.facts, state.components, state.floors,
                                      {k: v.verified for k, v in found.items()})
    for decision in report.decisions:
        device.audit.record("decision", **decision.__dict__)
    if not chosen:
        return _nothing(device, medium, report)
    booted = device.backend.booted()
    if booted is not None and booted.name != state.environment:
        raise Refused(f"the machine runs {booted.name}, but {state.environment} is committed",
                      hint="reboot into the committed environment (bundle-agent boot, then boot-check) first")
    running_env = device.backend.get(state.environment)
    if running_env is None or running_env.path is None:
        raise Failed(f"the committed environment {state.environment} is missing or not mounted")
    _check_space(device, chosen, running_env.path)
    _check_spool_space(device, chosen, found)
    try:
        found = _spool_or_fail(device, state, chosen, found)
        return _stage_and_arm(device, state, chosen, found, running_env.path, report)
    finally:
        shutil.rmtree(device.config.state_dir / "spool", ignore_errors=True)


def _record_failure(device: Device, state: AgentState, message: str, event: str, **details) -> None:
    """Clear the journal and record the failure - best effort: on a full disk the journal may not
    be writable, and that must not hide the error that caused it (it is cleaned up next run)."""
    state.last_result = {"outcome": "failed", "message": message}
    try:
        device.store.save(state)
    except UpdateError as error:
        sys.stderr.write(f"warning: {error}\n")
    device.audit.record(event, reason=message, **details)


def _spool_or_fail(device: Device, state: AgentState, chosen: dict[str, list[Choice]],
                   found: dict[str, _Found]) -> dict[str, _Found]:
    try:
        return _spool(device, chosen, found)
    except OSError as error:
        if isinstance(error, UpdateError):
            raise
        message = f"copying the update from the medium failed: {error.strerror or error}"
        _record_failure(device, state, message, "spool-failed")
        raise StagingFailed(message + "; nothing was installed", where=error.filename or None,
                            hint="free space on the state directory's filesystem, or check the medium") from error


def _stage_and_arm(device: Device, state: AgentState, chosen: dict[str, list[Choice]], found: dict[str, _Found],
                   running: Path, report: Report) -> Report:
    name = device.next_environment_name()
    state.pending = {"phase": "staging", "environment": name, "previous": state.environment}
    device.store.save(state)
    device.audit.record("staging", environment=name,
                        components={n: [step.component.sequence for step in route] for n, route in chosen.items()})
    try:
        environment = device.backend.clone(state.environment, name)
        names = set(state.components) | set(chosen)
        for component_name in _outermost_first(device, chosen):
            _stage_component(device, chosen[component_name], found, environment, running, names)
        _check_untouched(device, state, chosen, environment, running, names)
    except BaseException as error:
        try:
            destroy_quietly(device, name)
        finally:
            state.pending = None
            _record_failure(device, state, f"staging into {name} failed: {error}", "staging-failed", environment=name)
        if isinstance(error, OSError) and not isinstance(error, UpdateError):
            raise StagingFailed(f"staging into {name} failed: {error.strerror or error}; the new environment was "
                                "removed and the running one is unchanged", where=error.filename or None,
                                hint="free space (or inodes) on the environments' filesystem, then insert the "
                                     "stick again") from error
        raise
    state.pending = {"phase": "trial", "environment": name, "previous": state.environment,
                     "components": _new_components(state, chosen),
                     "bundles": _bundles_used(chosen)}
    device.store.save(state)
    device.backend.activate_once(name)
    for component_name, route in sorted(chosen.items()):
        before = state.components.get(component_name)
        after = route[-1].component
        via = f" via {len(route)} steps" if len(route) > 1 else ""
        report.installed[component_name] = (f"{before.version} (sequence {before.sequence})" if before else "nothing") + \
            f" -> {after.version} (sequence {after.sequence}){via}"
    report.environment = name
    device.audit.record("trial-armed", environment=name, installed=report.installed)
    report.message = (f"staged {', '.join(sorted(chosen))} in {name}; it boots once for a trial; "
                      + device.apply_reboot_policy("start the trial"))
    return report


def _nothing(device: Device, medium: Path, report: Report) -> Report:
    integrity = report.refusals  # signatures, hashes, malformed: the medium itself is bad
    refused = [d for d in report.decisions if d.verdict == "refused"]
    if integrity:
        device.audit.record("refused-medium", source=str(medium), reasons=[r for _, r in integrity])
        raise NothingInstallable("; ".join(f"{s}: {r}" for s, r in integrity), where=medium,
                                 hint="the medium was refused; the machine is unchanged")
    report.message = "nothing newer for this machine"
    device.audit.record("nothing-newer", source=str(medium), refused=[d.reason for d in refused])
    return report


def provision(device: Device, medium: Path) -> Report:
    """Factory install: full bundles into the first environment, committed at once."""
    report = Report()
    state = recover_interrupted(device, device.store.load())
    if state.environment is not None:
        raise Refused(f"this machine is already provisioned (environment {state.environment})",
                      hint="use bundle-agent install for updates")
    _, found = _read_medium(device, Path(medium), report)
    chosen, report.decisions = choose(device.facts, {}, {}, {k: v.verified for k, v in found.items()})
    if "platform" not in chosen:
        reasons = [d.reason for d in report.decisions if d.verdict != "chosen"] + [r for _, r in report.refusals]
        raise NothingInstallable("no full platform update on the medium for this machine" +
                                 (f" ({'; '.join(reasons)})" if reasons else ""), where=medium,
                                 hint="provision from a full bundle made for this product and hardware")
    _check_space(device, chosen, None)
    _check_spool_space(device, chosen, found)
    try:
        found = _spool_or_fail(device, state, chosen, found)
        return _provision_into_new_environment(device, state, chosen, found, report)
    finally:
        shutil.rmtree(device.config.state_dir / "spool", ignore_errors=True)


def _provision_into_new_environment(device: Device, state: AgentState, chosen: dict[str, list[Choice]],
                                    found: dict[str, _Found], report: Report) -> Report:
    name = device.next_environment_name()
    final = {n: route[-1].component for n, route in chosen.items()}
    components = {n: {"version": c.version, "sequence": c.sequence, "tree_digest": c.tree_digest}
                  for n, c in final.items()}
    source = None
    if not device.backend.can_create_empty:
        # bectl: the installer made the first environment; provisioning clones it and replaces
        # its components in place (docs/BECTL.md, "Provisioning").
        booted = device.backend.booted()
        if booted is None:
            raise Failed(f"{device.backend.name} backend: no booted environment to provision from",
                         hint="boot the installer-made system, then provision")
        source = booted.name
    # Journaled first: a crash before the commit below leaves a half-built environment that the
    # next run destroys; after it, the next run finishes the provisioning (agent/recovery.py).
    state.pending = {"phase": "provisioning", "environment": name, "components": components}
    device.store.save(state)
    try:
        if source is None:
            environment = device.backend.create_empty(name)
        else:
            environment = device.backend.clone(source, name)
        for component_name in _outermost_first(device, chosen):
            _stage_component(device, chosen[component_name], found, environment, None, set(chosen))
    except BaseException as error:
        try:
            destroy_quietly(device, name)
        finally:
            state.pending = None
            _record_failure(device, state, f"provisioning {name} failed: {error}", "provisioning-failed",
                            environment=name)
        raise
    device.backend.commit(name)  # the commit point
    state.provisioned(name, components)
    device.store.save(state)
    report.installed = {n: f"{c.version} (sequence {c.sequence})" for n, c in final.items()}
    report.environment = name
    report.message = f"provisioned {', '.join(sorted(chosen))} into {name} (committed)"
    device.audit.record("provisioned", environment=name, installed=report.installed)
    return report
