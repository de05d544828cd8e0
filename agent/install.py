"""Installing from a stick or a bundle: verify everything, then stage into a new environment.

The order is the safety argument (docs/AGENT.md, "Install"), each step persisted before the next:

1. read the medium; walk its trust-root rotations from the device's own root (never backwards);
2. verify every bundle (release-signer threshold over the exact manifest bytes; agent/offer.py)
   and choose per component (agent/choice.py): product, hardware, targeting, anti-rollback;
3. before writing anything: every listing against the device's layout (agent/layout.py), the
   free space (agent/space.py), every stored byte of the chosen bundles against its hash;
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

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from agent import system_log
from agent.choice import Choice, choose, choose_exact
from agent.device import Device
from agent.other_products import other_products
from agent.floors import rebuilt_floors
from agent.identity import ensure_identity
from agent.format.token import VerifiedToken
from agent.journal import Pending, Phase
from agent.kept import KeptDamaged, KeptRecord, environment_records, keep_environment, kept_component
from agent.offer import Found, bundles_used, read_offer
from agent.payload import Payload
from agent.progress import Progress, step_counter
from agent.report import Report, nothing_outcome
from agent.resume import destroy_quietly, recover_interrupted, remove_failed_environments
from agent.space import check_spool_space, check_staging_space
from agent.staging import check_layout, stage
from agent.state import AgentState
from agent.tokens import require_token, spend_token
from keys.errors import Failed, Refused, UpdateError
from keys.files import sync_filesystem
from keys.printable import echo


class NotProvisioned(Refused):
    """The machine has no committed environment yet."""


class TrialPending(Refused):
    """An installed update waits for its trial boot; nothing else is installed meanwhile."""


class StagingFailed(Failed):
    """The filesystem failed while staging (full, read-only, I/O error); nothing was changed."""


class NothingInstallable(Refused):
    """The medium was examined; nothing on it may be installed, and something was refused."""


def _spool(device: Device, chosen: dict[str, list[Choice]], found: dict[str, Found],
           progress: Progress | None = None) -> dict[str, Found]:
    """Check every stored byte of every chosen bundle before anything is staged (T-CONTENT),
    copying the bytes to STATE/spool/<manifest SHA-256> as they are read: staging then uses
    exactly what was verified, and the medium is read once (T-TOCTOU). Returns the bundles as
    spooled. The whole spool is removed after every install and by recovery."""
    shutil.rmtree(device.state_dir.spool, ignore_errors=True)
    spooled = {}
    for bundle_id in bundles_used(chosen):
        entry = found[bundle_id]
        # Named by the manifest file's SHA-256, which the agent computed: never by a name from the
        # medium, so `install BUNDLE/payload/..` cannot choose where the agent writes.
        local = device.state_dir.spooled_bundle(entry.manifest_sha256)
        with Payload(entry.path, entry.verified.manifest) as payload:
            size = entry.verified.manifest.payload_size
            payload.verify_all(step_counter(progress, f"verifying {bundle_id}", size), copy_to=local)
        spooled[bundle_id] = Found(local, entry.verified, entry.manifest_sha256)
    return spooled


def _check_layout(device: Device, chosen: dict[str, list[Choice]]) -> None:
    """Refuse, before anything is written, listings that do not fit this machine's layout (T-NESTED)."""
    try:
        check_layout(device.config.layout, chosen)
    except Refused as error:
        device.audit.record("refused", reason=str(error))
        raise


def _sources(found: dict[str, Found]) -> dict:
    return {bundle_id: (entry.path, entry.verified.manifest) for bundle_id, entry in found.items()}


def _new_components(state: AgentState, chosen: dict[str, list[Choice]]) -> dict[str, dict]:
    result = {name: installed.__dict__ for name, installed in state.components.items()}
    for name, route in chosen.items():
        c = route[-1].component
        result[name] = {"version": c.version, "sequence": c.sequence, "tree_digest": c.tree_digest}
    return result


def install(device: Device, medium: Path, progress: Progress | None = None,
            downgrade: dict[str, int] | None = None) -> Report:
    """``progress`` hears how far verifying and staging are (agent/progress.py). ``downgrade``: a
    technician's downgrade of these components to exactly these sequences, below the floors,
    allowed only by a technician token on the medium (agent/tokens.py), spent once the update
    is verified and copied, before anything is staged.

    Raises NotProvisioned, TrialPending, NothingInstallable, NoToken and the token's refusals,
    and any verification or staging error."""
    report = Report()
    state = recover_interrupted(device, device.store.load())
    if state.environment is None:
        system_log.log("install-refused", {"source": str(medium), "reason": "not provisioned"})
        if _has_environments(device):
            raise NotProvisioned(f"this machine has environments ({_environment_names(device)}) but no usable state",
                                 hint="a technician provisions it again: bundle-agent provision STICK, with a "
                                      "technician token allowing provision on the stick; the anti-rollback "
                                      "floors are rebuilt from the kept signed manifests")
        raise NotProvisioned("this machine has not been provisioned",
                             hint="install a full bundle first: bundle-agent provision BUNDLE_OR_STICK")
    if state.pending:
        # To the system log only: the audit log holds the trial already, and a stick left in a
        # machine that retries must not grow it.
        system_log.log("install-refused", {"source": str(medium), "reason": "a trial boot is pending",
                                           "environment": state.pending.environment})
        raise TrialPending(f"an update to {state.pending.environment} waits for its trial boot",
                           hint="reboot (bundle-agent boot, then boot-check) before installing another")
    remove_failed_environments(device, state)  # their space counts for the new environment
    medium = Path(medium)
    token = require_token(device, medium, "downgrade", downgrade) if downgrade else None
    root, found = read_offer(device, medium, report)
    verified = {k: v.verified for k, v in found.items()}
    if downgrade:
        chosen, report.decisions = choose_exact(device.facts, state.components, downgrade, verified)
        missing = sorted(set(downgrade) - set(chosen))
        if missing:
            raise NothingInstallable(f"the medium holds no update of {', '.join(missing)} to the sequence the "
                                     "downgrade names (a full one, or a delta from what is installed)", where=medium,
                                     hint="put the full bundle of that release on the stick")
    else:
        chosen, report.decisions = choose(device.facts, state.components, state.floors, verified)
    if not chosen:
        return _nothing(device, medium, report)
    _record_examined(device, "examined", medium, report)
    spend = (lambda: spend_token(device, token, "downgrade")) if token is not None else None
    return stage_for_trial(device, state, chosen, found, report, root.version, progress, before_staging=spend)


def stage_for_trial(device: Device, state: AgentState, chosen: dict[str, list[Choice]], found: dict[str, Found],
                    report: Report, root_version: int, progress: Progress | None = None,
                    before_staging: Callable[[], None] | None = None) -> Report:
    """Steps 3 to 5 for routes already chosen from verified bundles (``found``, verified under the
    trust root of ``root_version``): check the layout and the space, spool, stage into a new
    environment cloned from the committed one, keep the signed manifests, arm the trial. Shared by
    install and the technician's repair; ``before_staging`` runs once the update is verified and
    copied, before anything is written (a token is spent there). Raises Refused (a layout
    conflict, the machine running another environment than the committed one), Failed,
    StagingFailed and any staging error."""
    _check_layout(device, chosen)
    booted = device.backend.booted()
    if booted is not None and booted.name != state.environment:
        raise Refused(f"the machine runs {booted.name}, but {state.environment} is committed",
                      hint="reboot into the committed environment (bundle-agent boot, then boot-check) first")
    running_env = device.backend.get(state.environment)
    if running_env is None or running_env.path is None:
        raise Failed(f"the committed environment {state.environment} is missing or not mounted")
    check_staging_space(device, chosen, running_env.path)
    check_spool_space(device, chosen, found)
    try:
        found = _spool_or_fail(device, state, chosen, found, progress)
        if before_staging is not None:
            before_staging()
        return _stage_and_arm(device, state, chosen, found, running_env.path, report, root_version, progress)
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
                   found: dict[str, Found], progress: Progress | None = None) -> dict[str, Found]:
    try:
        return _spool(device, chosen, found, progress)
    except KeyboardInterrupt as interrupt:  # SIGINT, or SIGTERM (agent/cli/interrupt.py)
        _record_failure(device, state, f"copying the update from the medium failed: {_interrupted(interrupt)}",
                        "spool-failed")
        raise
    except OSError as error:
        if isinstance(error, UpdateError):
            raise
        message = f"copying the update from the medium failed: {error.strerror or error}"
        _record_failure(device, state, message, "spool-failed")
        raise StagingFailed(message + "; nothing was installed", where=error.filename or None,
                            hint="free space on the state directory's filesystem, or check the medium") from error


def _interrupted(interrupt: KeyboardInterrupt) -> str:
    """The recorded reason of an interrupt: ``interrupted (SIGINT)`` or ``interrupted (SIGTERM)``
    (agent/cli/interrupt.py raises them with the signal's name; a bare KeyboardInterrupt is SIGINT)."""
    return f"interrupted ({str(interrupt) or 'SIGINT'})"


@contextmanager
def _undone_on_failure(device: Device, state: AgentState, name: str, what: str, event: str, unchanged: str,
                       retry: str):
    """The one failure path of install and provisioning: the new environment ``name`` is destroyed,
    the journal cleared and the failure recorded, whatever went wrong (an interrupt included); a
    filesystem error is reported as StagingFailed, saying ``unchanged`` and how to ``retry``."""
    try:
        yield
    except BaseException as error:
        reason = _interrupted(error) if isinstance(error, KeyboardInterrupt) else str(error)
        try:
            destroy_quietly(device, name)
        finally:
            state.pending = None
            _record_failure(device, state, f"{what} failed: {reason}", event, environment=name)
        if isinstance(error, OSError) and not isinstance(error, UpdateError):
            raise StagingFailed(f"{what} failed: {error.strerror or error}; the new environment was removed and "
                                f"{unchanged}", where=error.filename or None,
                                hint=f"free space (or inodes) on the environments' filesystem, {retry}") from error
        raise


def _keep_manifests(device: Device, name: str, chosen: dict[str, list[Choice]], found: dict[str, Found],
                    root_version: int, inherit_from: str | None = None) -> None:
    """Keep the signed manifest of each chosen component's last step, and record them for ``name``
    with the records of ``inherit_from`` (the running environment) for the components it did not
    update (agent/kept.py). Before the environment is armed or committed: whatever is booted has
    its record. A running environment without a usable record passes none on (those components
    are audited as unverifiable)."""
    inherited: dict[str, KeptRecord] = {}
    if inherit_from is not None:
        try:
            inherited = {n: r for n, r in environment_records(device.state_dir, inherit_from).items()
                         if n not in chosen}
        except KeptDamaged as error:
            device.audit.record("kept-record-damaged", environment=inherit_from, reason=error.message)
    updated = {}
    for component, route in chosen.items():
        verified = found[route[-1].bundle].verified
        updated[component] = (verified.manifest_bytes, verified.signatures.counted, root_version)
    keep_environment(device.state_dir, name, updated, inherited)


def _stage_and_arm(device: Device, state: AgentState, chosen: dict[str, list[Choice]], found: dict[str, Found],
                   running: Path, report: Report, root_version: int, progress: Progress | None = None) -> Report:
    name = device.backend.new_name()
    state.pending = Pending(Phase.STAGING, name, previous=state.environment)
    device.store.save(state)
    device.audit.record("staging", environment=name,
                        components={n: [step.component.sequence for step in route] for n, route in chosen.items()})
    with _undone_on_failure(device, state, name, f"staging into {name}", "staging-failed",
                            "the running one is unchanged", "then insert the stick again"):
        environment = device.backend.clone(state.environment, name)
        stage(device.config.layout, chosen, _sources(found), environment, running,
              {component: c.tree_digest for component, c in state.components.items()},
              device.state_dir.chain, progress,
              lambda component: kept_component(device.state_dir, state.environment, component))
        sync_filesystem(environment)  # on the disk before a boot can be pointed at it
        _keep_manifests(device, name, chosen, found, root_version, inherit_from=state.environment)
    state.pending = Pending(Phase.TRIAL, name, previous=state.environment,
                            components=_new_components(state, chosen), bundles=tuple(bundles_used(chosen)))
    device.store.save(state)
    with _undone_on_failure(device, state, name, f"arming {name} for its trial boot", "staging-failed",
                            "the running one is unchanged", "then insert the stick again"):
        device.backend.activate_once(name)
    for component_name, route in sorted(chosen.items()):
        before = state.components.get(component_name)
        after = route[-1].component
        via = f" via {len(route)} steps" if len(route) > 1 else ""
        report.installed[component_name] = (f"{before.version} (sequence {before.sequence})" if before else "nothing") + \
            f" -> {after.version} (sequence {after.sequence}){via}"
    report.environment = name
    device.audit.record("trial-armed", environment=name, installed=report.installed)
    report.outcome = "staged"
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
    facts = device.facts
    others = [] if report.decisions else other_products(medium, facts.product)
    report.outcome = "not-for-this-machine" if others else nothing_outcome(report.decisions)
    report.message = {
        "nothing-on-medium": "no update bundles on this medium",
        "not-for-this-machine": (f"the bundles on this medium are for other machines (this one is {facts.product}, "
                                 f"hardware {facts.hardware}" +
                                 (f"; the stick holds updates for {', '.join(others)})" if others else ")")),
        "up-to-date": "this machine is up to date: nothing on this medium is newer than what it has",
        "no-applicable-update": "newer updates are on this medium, but none applies to what this machine has "
                                "(see the skipped bundles)",
    }[report.outcome] + "; nothing was installed"
    _record_examined(device, report.outcome, medium, report)
    return report


def provision(device: Device, medium: Path, progress: Progress | None = None) -> Report:
    """Factory install: full bundles into the first environment, committed at once. ``progress``
    hears how far verifying and staging are."""
    report = Report()
    state = recover_interrupted(device, device.store.load())
    if state.environment is not None:
        raise Refused(f"this machine is already provisioned (environment {state.environment})",
                      hint="use bundle-agent install for updates")
    token = None
    if _has_environments(device):
        # T-ROLLBACK: a machine that has environments but no state lost it (damaged, deleted).
        # Provisioning it again is a technician's decision, and it never goes below the floors
        # the kept signed manifests vouch for (agent/floors.py).
        token = authorise_provision(device, Path(medium))
        state.floors = rebuilt_floors(device, state.floors, excluded=state.failed_trials)
    root, found = read_offer(device, Path(medium), report)
    chosen, report.decisions = choose(device.facts, {}, state.floors, {k: v.verified for k, v in found.items()})
    if "platform" not in chosen:
        _record_examined(device, "refused-medium", Path(medium), report)
        reasons = [d.reason for d in report.decisions if d.verdict != "chosen"] + [r for _, r in report.refusals]
        raise NothingInstallable("no full platform update on the medium for this machine" +
                                 (f" ({_reasons(reasons)})" if reasons else ""), where=medium,
                                 hint="provision from a full bundle made for this product and hardware")
    _record_examined(device, "examined", Path(medium), report)
    _check_layout(device, chosen)
    check_staging_space(device, chosen, None)
    check_spool_space(device, chosen, found)
    try:
        found = _spool_or_fail(device, state, chosen, found, progress)
        if token is not None:
            _spend_provision_token(device, token)
        return _provision_into_new_environment(device, state, chosen, found, report, root.version, progress)
    finally:
        shutil.rmtree(device.state_dir.spool, ignore_errors=True)


def _has_environments(device: Device) -> bool:
    """Whether the agent made environments on this machine before: then it was provisioned."""
    return any(environment.made_by_agent for environment in device.backend.environments())


class TokenNeeded(Refused):
    """Provisioning a machine that already has environments needs a technician token."""


def authorise_provision(device: Device, medium: Path) -> VerifiedToken:
    """The technician token on ``medium`` allowing "provision" on this machine (agent/tokens.py,
    docs/TRUST.md "Technician tokens"), verified but not yet spent: :func:`_spend_provision_token`
    records it once everything has been checked, before anything is written. Never allows
    without one. Raises TokenNeeded saying why this machine needs it and why no token does."""
    try:
        return require_token(device, medium, "provision")
    except Refused as error:
        raise TokenNeeded(f"this machine already has environments ({_environment_names(device)}) but no usable "
                          f"state: provisioning it again needs a technician token allowing \"provision\"; "
                          f"{error.message}", where=error.where, hint=error.hint) from error


def _spend_provision_token(device: Device, token: VerifiedToken) -> None:
    """Recorded as used before the new environment is made (agent/tokens.py spend_token)."""
    spend_token(device, token, "provision")


def _environment_names(device: Device) -> str:
    return ", ".join(e.name for e in device.backend.environments() if e.made_by_agent)


def _provision_into_new_environment(device: Device, state: AgentState, chosen: dict[str, list[Choice]],
                                    found: dict[str, Found], report: Report, root_version: int,
                                    progress: Progress | None = None) -> Report:
    name = device.backend.new_name()
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
        stage(device.config.layout, chosen, _sources(found), environment, None, {}, device.state_dir.chain,
              progress)
        sync_filesystem(environment)
        _keep_manifests(device, name, chosen, found, root_version)
    # The device's own key for signing its reports (agent/identity.py), before the commit point: a
    # provisioned machine always has one (a machine that had one keeps it).
    ensure_identity(device.state_dir, device.audit)
    device.backend.commit(name)  # the commit point
    state.provisioned(name, components)
    device.store.save(state)
    report.installed = {n: f"{c.version} (sequence {c.sequence})" for n, c in final.items()}
    report.environment = name
    report.outcome = "provisioned"
    report.message = f"provisioned {', '.join(sorted(chosen))} into {name} (committed)"
    device.audit.record("provisioned", environment=name, installed=report.installed)
    return report
