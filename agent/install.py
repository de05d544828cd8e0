"""Installing from a stick or a bundle: verify everything, then stage into a new environment.

The order is the safety argument (docs/AGENT.md, "Install"), each step persisted before the next:

1. read the medium; walk its trust-root rotations from the device's own root (never backwards);
2. verify every bundle (release-signer threshold over the exact manifest bytes) and choose per
   component (agent/choice.py): product, hardware, targeting, anti-rollback;
3. before writing anything: every listing against the device's layout (agent/layout.py), every
   stored byte of the chosen bundles against its hash, and the free space;
4. journal ``pending: staging``; clone the running environment into a new inactive one and update
   each chosen component in place, strictly beneath the new environment's root
   (agent/staging.py: every byte hashed as read, every file checked, the untouched components'
   trees compared);
5. journal ``pending: trial`` with the new component versions; activate the new environment for
   one trial boot; apply the reboot policy.

A failure anywhere before 5 destroys the new environment and clears the journal; the running
environment is never written to. A crash before 5 is cleaned up on the next run
(agent/resume.py).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.device import Device
from agent.format import codec
from agent.format.bundle_dir import MANIFEST
from agent.format.manifest import MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_STORED_MANIFEST_BYTES
from agent.format.tree import FILE
from agent.journal import Pending, Phase
from agent.medium import complete_bundles, read_bundle
from agent.payload import Payload
from agent.resume import destroy_quietly, recover_interrupted, remove_failed_environments
from agent.choice import Choice, Decision, choose
from agent.staging import check_layout, stage
from agent.state import AgentState
from agent.trust_store import advance, current_root, stick_roots
from agent.verify import VerifiedBundle, verify_bundle
from keys.errors import Failed, Refused, UpdateError
from keys.printable import echo


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
    manifest_sha256: str  # of the manifest file as read: names the bundle's spool (never a medium path)


def _read_medium(device: Device, medium: Path, report: Report):
    """Trust root (after the medium's rotations) and the verified bundles on a stick or bundle dir.

    Refusals of single bundles go to ``report.refusals`` and are logged once, with the outcome
    (``_record_examined``): however many folders a stick holds, it costs the log one record (T-LOG).
    """
    accepted = device.state_dir.trust
    root = current_root(device.config.trust_root, accepted)
    try:
        if (medium / MANIFEST).is_file():  # a bundle directory, named for people (BUNDLE/payload/.. is BUNDLE)
            folders = [(os.path.basename(os.path.abspath(medium)), medium, None)]
            offered_roots = []
        else:
            product = device.config.product
            folders = [(b.id, b.path, b.manifest_sha256) for b in complete_bundles(medium, product)]
            offered_roots = stick_roots(medium, product, root.version)
    except UpdateError as error:  # the layout itself: too many folders (T-LOG), a symlink (T-SYMLINK-READ)...
        device.audit.record("refused-medium" if isinstance(error, Refused) else "medium-unreadable",
                            source=str(medium), reason=str(error))
        raise
    try:
        newer = advance(root, offered_roots, accepted)
    except UpdateError as error:  # T-ROOT-*: a bad rotation on the stick poisons the whole stick
        report.refusals.append((str(medium), f"trust root rotation refused: {error}"))
        device.audit.record("refused", source=str(medium), reason=f"trust root rotation: {error}")
        raise
    if newer.version != root.version:
        device.audit.record("trust-root-rotated", from_version=root.version, to_version=newer.version)
    report.trust_root_version = newer.version
    found: dict[str, _Found] = {}
    held = _ManifestsHeld()
    for bundle_id, path, marked in folders:
        try:
            # The marker's hash is checked on the bytes as read, before any parsing (T-TAMPER).
            files = read_bundle(path, manifest_sha256=marked)
            held.check_room(files.manifest_bytes)
            verified = verify_bundle(files.manifest_bytes, files.signatures, newer, where=path / MANIFEST)
            held.hold(verified)
            found[bundle_id] = _Found(path, verified, files.manifest_sha256)
        except UpdateError as error:
            report.refusals.append((bundle_id, str(error)))
    return newer, found


class _ManifestsHeld:
    """The verified manifests of one medium are held together while the agent chooses, so together
    they obey the limits of one manifest (docs/FORMAT.md, "Limits"): its stored and decompressed
    bytes and its entries. Memory then stays bounded however many signed bundles a stick carries
    (T-EXHAUST); a bundle past the limits is refused, the ones before it are still considered."""

    def __init__(self) -> None:
        self.stored = self.decompressed = self.entries = 0

    def check_room(self, stored: bytes) -> None:
        """Before parsing: the sizes the stored manifest declares. Raises Refused."""
        try:
            declared = codec.declared_size(stored)
        except codec.CorruptObject:
            declared = 0  # not a manifest: the parser says why
        declared = declared if declared <= MAX_MANIFEST_BYTES else 0  # too large alone: the parser says so
        if self.stored + len(stored) > MAX_STORED_MANIFEST_BYTES or \
                self.decompressed + declared > MAX_MANIFEST_BYTES:
            raise Refused(f"with the bundles read before it, the manifests on this medium would exceed "
                          f"{MAX_STORED_MANIFEST_BYTES >> 20} MiB stored or {MAX_MANIFEST_BYTES >> 20} MiB "
                          "decompressed, the limits of one manifest; this bundle was not read",
                          hint="put fewer or smaller bundles on one medium (docs/STICK.md, \"Limits\")")

    def hold(self, verified: VerifiedBundle) -> None:
        """After parsing: the entries. Raises Refused (the manifest is then dropped)."""
        entries = sum(len(component.entries) for component in verified.manifest.components)
        if self.entries + entries > MAX_ENTRIES:
            raise Refused(f"with the bundles read before it, the manifests on this medium would list more than "
                          f"{MAX_ENTRIES} entries, the limit of one manifest",
                          hint="put fewer or smaller bundles on one medium (docs/STICK.md, \"Limits\")")
        self.stored += len(verified.manifest_bytes)
        self.decompressed += codec.declared_size(verified.manifest_bytes)
        self.entries += entries


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
    copying the bytes to STATE/spool/<manifest SHA-256> as they are read: staging then uses
    exactly what was verified, and the medium is read once (T-TOCTOU). Returns the bundles as
    spooled. The whole spool is removed after every install and by recovery."""
    shutil.rmtree(device.state_dir.spool, ignore_errors=True)
    spooled = {}
    for bundle_id in _bundles_used(chosen):
        entry = found[bundle_id]
        # Named by the manifest file's SHA-256, which the agent computed: never by a name from the
        # medium, so `install BUNDLE/payload/..` cannot choose where the agent writes.
        local = device.state_dir.spooled_bundle(entry.manifest_sha256)
        with Payload(entry.path, entry.verified.manifest) as payload:
            payload.verify_all(copy_to=local)
        spooled[bundle_id] = _Found(local, entry.verified, entry.manifest_sha256)
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


def _check_layout(device: Device, chosen: dict[str, list[Choice]]) -> None:
    """Refuse, before anything is written, listings that do not fit this machine's layout (T-NESTED)."""
    try:
        check_layout(device.config.layout, chosen)
    except Refused as error:
        device.audit.record("refused", reason=str(error))
        raise


def _sources(found: dict[str, _Found]) -> dict:
    return {bundle_id: (entry.path, entry.verified.manifest) for bundle_id, entry in found.items()}


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
        raise TrialPending(f"an update to {state.pending.environment} waits for its trial boot",
                           hint="reboot (bundle-agent boot, then boot-check) before installing another")
    remove_failed_environments(device, state)  # their space counts for the new environment
    medium = Path(medium)
    _, found = _read_medium(device, medium, report)
    chosen, report.decisions = choose(device.facts, state.components, state.floors,
                                      {k: v.verified for k, v in found.items()})
    if not chosen:
        return _nothing(device, medium, report)
    _record_examined(device, "examined", medium, report)
    _check_layout(device, chosen)
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
        shutil.rmtree(device.state_dir.spool, ignore_errors=True)


def _record_failure(device: Device, state: AgentState, message: str, event: str, **details) -> None:
    """Clear the journal and record the failure - best effort: on a full disk the journal may not
    be writable, and that must not hide the error that caused it (it is cleaned up next run)."""
    state.last_result = {"outcome": "failed", "message": message}
    try:
        device.store.save(state)
    except UpdateError as error:
        echo(f"warning: {error}", err=True)
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


@contextmanager
def _undone_on_failure(device: Device, state: AgentState, name: str, what: str, event: str, unchanged: str,
                       retry: str):
    """The one failure path of install and provisioning: the new environment ``name`` is destroyed,
    the journal cleared and the failure recorded, whatever went wrong (an interrupt included); a
    filesystem error is reported as StagingFailed, saying ``unchanged`` and how to ``retry``."""
    try:
        yield
    except BaseException as error:
        try:
            destroy_quietly(device, name)
        finally:
            state.pending = None
            _record_failure(device, state, f"{what} failed: {error}", event, environment=name)
        if isinstance(error, OSError) and not isinstance(error, UpdateError):
            raise StagingFailed(f"{what} failed: {error.strerror or error}; the new environment was removed and "
                                f"{unchanged}", where=error.filename or None,
                                hint=f"free space (or inodes) on the environments' filesystem, {retry}") from error
        raise


def _stage_and_arm(device: Device, state: AgentState, chosen: dict[str, list[Choice]], found: dict[str, _Found],
                   running: Path, report: Report) -> Report:
    name = device.next_environment_name()
    state.pending = Pending(Phase.STAGING, name, previous=state.environment)
    device.store.save(state)
    device.audit.record("staging", environment=name,
                        components={n: [step.component.sequence for step in route] for n, route in chosen.items()})
    with _undone_on_failure(device, state, name, f"staging into {name}", "staging-failed",
                            "the running one is unchanged", "then insert the stick again"):
        environment = device.backend.clone(state.environment, name)
        stage(device.config.layout, chosen, _sources(found), environment, running, set(state.components),
              device.state_dir.chain)
    state.pending = Pending(Phase.TRIAL, name, previous=state.environment,
                            components=_new_components(state, chosen), bundles=tuple(_bundles_used(chosen)))
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


# Refusals named in the message of a refused medium; all of them are in its audit record.
_REASONS_SHOWN = 8


def _record_examined(device: Device, event: str, medium: Path, report: Report) -> None:
    """One audit record for everything examined on the medium: each refused bundle and each
    decision with its reason. One per medium, never one per folder: a forged stick must not
    choose how much gets logged (T-LOG; agent/audit.py bounds the record itself)."""
    device.audit.record(event, source=str(medium),
                        refused=[{"source": source, "reason": reason} for source, reason in report.refusals],
                        decisions=[decision.__dict__ for decision in report.decisions])


def _reasons(reasons: list[str]) -> str:
    """The first few reasons, and how many more the audit log holds."""
    more = len(reasons) - _REASONS_SHOWN
    return "; ".join(reasons[:_REASONS_SHOWN]) + (f"; and {more} more (in the audit log)" if more > 0 else "")


def _nothing(device: Device, medium: Path, report: Report) -> Report:
    integrity = report.refusals  # signatures, hashes, malformed: the medium itself is bad
    if integrity:
        _record_examined(device, "refused-medium", medium, report)
        raise NothingInstallable(_reasons([f"{s}: {r}" for s, r in integrity]), where=medium,
                                 hint="the medium was refused; the machine is unchanged")
    report.message = "nothing newer for this machine"
    _record_examined(device, "nothing-newer", medium, report)
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
        _record_examined(device, "refused-medium", Path(medium), report)
        reasons = [d.reason for d in report.decisions if d.verdict != "chosen"] + [r for _, r in report.refusals]
        raise NothingInstallable("no full platform update on the medium for this machine" +
                                 (f" ({_reasons(reasons)})" if reasons else ""), where=medium,
                                 hint="provision from a full bundle made for this product and hardware")
    _record_examined(device, "examined", Path(medium), report)
    _check_layout(device, chosen)
    _check_space(device, chosen, None)
    _check_spool_space(device, chosen, found)
    try:
        found = _spool_or_fail(device, state, chosen, found)
        return _provision_into_new_environment(device, state, chosen, found, report)
    finally:
        shutil.rmtree(device.state_dir.spool, ignore_errors=True)


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
    # next run destroys; after it, the next run finishes the provisioning (agent/resume.py).
    state.pending = Pending(Phase.PROVISIONING, name, components=components)
    device.store.save(state)
    with _undone_on_failure(device, state, name, f"provisioning {name}", "provisioning-failed",
                            "the machine is as blank as before", "then provision again"):
        if source is None:
            environment = device.backend.create_empty(name)
        else:
            environment = device.backend.clone(source, name)
        stage(device.config.layout, chosen, _sources(found), environment, None, set(), device.state_dir.chain)
    device.backend.commit(name)  # the commit point
    state.provisioned(name, components)
    device.store.save(state)
    report.installed = {n: f"{c.version} (sequence {c.sequence})" for n, c in final.items()}
    report.environment = name
    report.message = f"provisioned {', '.join(sorted(chosen))} into {name} (committed)"
    device.audit.record("provisioned", environment=name, installed=report.installed)
    return report
