"""Power cuts at every durable write: kill the agent at each crash point in turn, reboot, check.

keys/crashpoint.py numbers the points a run passes (``BUNDLE_CRASH_TRACE``) and kills the process
with SIGKILL at the N-th (``BUNDLE_CRASH_AT``). For a :class:`Scenario` - a function that prepares
a device and returns the agent command to interrupt - :func:`sweep`

1. prepares the device once, as a template directory, and runs the command on a copy with the
   trace on: that counts the points and is the baseline (the same checks, without a power cut);
2. for each chosen point N: copies the template, runs the command killed at N, then "reboots" as
   the machine would (``bundle-agent boot``, ``bundle-agent boot-check``; again after a rollback,
   whose reboot policy restarts the machine) and checks, as kinds of :class:`Problem`:

   * ``unbootable``: ``boot`` fails, or the environment it selects is missing or incomplete - its
     components' tree digests match no release the device could hold;
   * ``inconsistent``: the booted environment is complete, but it is not the one the committed
     state names, or does not hold what that state says is committed;
   * ``lost``: an environment that was good before the cut (committed, or kept to roll back to) is
     gone, or after the retry the environment to roll back to is gone;
   * ``unparsable``: ``bundle-agent status --json`` fails;
   * ``state``: the committed release is not one the scenario allows after this cut;
   * ``retry``: the scenario's retry (the interrupted install again, ...) fails, or after it and a
     reboot the device does not hold the scenario's end release;
   * ``leftover``: after the retry and a reboot, something the cut left behind is still there: an
     environment neither committed, nor kept to roll back to, nor one the scenario keeps (a
     manual rollback keeps the environment it left), a temporary file, the spool;
   * ``harness``: the command was not killed at N (the points differ between runs).

Each device is a :class:`~tests.sim.device.Cabinet`: everything under one directory, the agent run
with ``--root`` (docs/AGENT.md), so a copied template is a working device.
``BUNDLE_FULL_CRASH_SWEEP=1`` checks every point; otherwise a deterministic sample (:func:`sample`).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.format.manifest import Manifest
from agent.medium import read_bundle
from tests.sim.device import STAGED, Cabinet, World
from tests.sim.summary import count_summary

FULL_SWEEP = os.environ.get("BUNDLE_FULL_CRASH_SWEEP") == "1"
SUMMARY = "power cuts: {injected} injected, {unbootable} unbootable, {lost} lost environments"
WORKERS = max(2, os.cpu_count() or 2)
KEPT_FAILURES = 10  # devices of failed points kept for a post-mortem; the others are deleted
RECORD_RENAMES = ("rename boot.json", "rename state.json", "rename journal.json")


# --- releases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """What a device holds when it runs one release: component -> (version, sequence, tree digest)."""

    name: str
    components: dict[str, tuple[str, int, str]]

    @classmethod
    def of(cls, name: str, *bundles: Path, base: "Release | None" = None) -> "Release":
        """The release the bundles lead to (components they do not carry stay as in ``base``)."""
        components = dict(base.components) if base else {}
        for bundle in bundles:  # the tests' own bundles: only their digests are read, the agent verifies
            manifest = Manifest.from_stored(read_bundle(bundle).manifest_bytes)
            for c in manifest.components:
                components[c.name] = (c.version, c.sequence, c.tree_digest)
        return cls(name, components)

    def digests(self) -> dict[str, str]:
        return {n: c[2] for n, c in self.components.items()}


def _release_named(releases: dict[str, Release], digests: dict[str, str]) -> str:
    for release in releases.values():
        if release.digests() == digests:
            return release.name
    return "an unknown release (" + ", ".join(f"{n} {d[7:19]}" for n, d in sorted(digests.items())) + ")"


# --- scenarios and problems ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """``prepare`` brings a new device to the moment before the step and returns the agent command
    to interrupt. After the cut and a reboot the device must hold one of ``after_cut`` (None: not
    provisioned yet); ``retry`` gives the commands that finish the job (each must exit 0), and after
    them and a reboot the device must hold ``end``. ``keep`` names environments that must survive."""

    name: str
    prepare: Callable[[Cabinet], list]
    after_cut: tuple[str | None, ...]
    end: str
    retry: Callable[[Cabinet], list[list]]
    keep: tuple[str, ...] = ()
    healthy: bool = True
    layout: dict | None = None  # the device's [layout]


@dataclass(frozen=True)
class Problem:
    scenario: str
    point: int  # 0: the baseline - the command finished, then the machine rebooted
    name: str  # the crash point's name
    kind: str  # unbootable, inconsistent, lost, unparsable, state, retry, leftover, harness
    detail: str

    def __str__(self) -> str:
        where = "after the command finished (no cut)" if self.point == 0 else f"point {self.point} ({self.name})"
        return f"{self.scenario} {where}: {self.kind}: {self.detail}"


@dataclass
class Sweep:
    scenario: Scenario
    points: list[tuple[int, str]]  # every crash point the command passes: (number, name)
    checked: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    def report(self) -> str:
        return (f"{self.scenario.name}: {len(self.points)} crash points, {len(self.checked)} injected "
                f"in {self.seconds:.0f} s, {len({p.point for p in self.problems if p.point})} with problems")


def sample(points: list[tuple[int, str]], every: int, *, records: bool = True) -> list[tuple[int, str]]:
    """The points ``make test`` checks: the first, the last, every ``every``-th, and with ``records``
    both sides of each replacement of the boot record, the committed state and the journal (the
    files the promise rests on): killed at the rename the old file stays, killed at the next point
    the new one is in place. Deterministic, so a failure reproduces. The full sweep
    (``BUNDLE_FULL_CRASH_SWEEP=1``) takes them all."""
    if FULL_SWEEP:
        return points
    renames = {n for n, name in points if records and name in RECORD_RENAMES}
    return [(n, name) for n, name in points
            if n in (1, len(points)) or (n - 1) % every == 0 or n in renames or n - 1 in renames]


# --- the reboot and the checks -----------------------------------------------------------------


def reboot(device: Cabinet, allow_unprovisioned: bool) -> tuple[str, str] | None:
    """``boot`` then ``boot-check``, as the machine does; a rollback reboots it once more."""
    for _ in range(3):
        boot = device.agent("boot")
        if boot.returncode != 0:
            if allow_unprovisioned and "no committed environment" in boot.stderr \
                    and not device.committed().get("environment"):
                return None  # a factory machine whose provisioning did not finish: nothing to boot yet
            return "unbootable", f"boot exited {boot.returncode}: {(boot.stdout + boot.stderr).strip()}"
        check = device.agent("boot-check")
        if check.returncode == 0:
            return None
        if check.returncode == 3 and "failed its health check" in check.stderr:
            continue  # rolled back: the reboot policy restarts the machine into the previous environment
        return "state", f"boot-check exited {check.returncode}: {(check.stdout + check.stderr).strip()}"
    return "state", "boot-check still rolled back after three boots"


def check_booted(device: Cabinet, releases: dict[str, Release], allowed: tuple[str | None, ...],
                  keep: tuple[str, ...], provisioning: str) -> list[tuple[str, str]]:
    """The invariants after a reboot (see the module's docstring)."""
    status = device.agent("status", "--json")
    if status.returncode != 0:
        return [("unparsable", f"status --json exited {status.returncode}: {status.stderr.strip()}")]
    problems = []
    state = device.committed()
    committed = state.get("environment")
    digests = {n: c["tree_digest"] for n, c in state.get("components", {}).items()}
    holds = _release_named(releases, digests) if committed else None
    if holds not in allowed:
        problems.append(("state", f"the committed state holds {holds or 'nothing (not provisioned)'}, expected "
                                  + " or ".join(a or "nothing (not provisioned)" for a in allowed)))
    booted = device.boot_record().get("booted")
    if committed is None:
        # Not provisioned: whatever boots must at least be a complete copy of the release being provisioned.
        if booted is not None and (why := device.differences(booted, releases[provisioning].digests())):
            problems.append(("unbootable", f"booted {booted} while nothing is committed: {why}"))
    elif booted is None:
        problems.append(("unbootable", "the boot record names no booted environment"))
    else:
        why = device.differences(booted, digests)
        if why is None and booted != committed:
            problems.append(("inconsistent", f"booted {booted}, but the committed state names {committed}"))
        elif why is not None:
            matches = [r.name for r in releases.values() if device.differences(booted, r.digests()) is None]
            if matches:
                problems.append(("inconsistent", f"booted {booted}, a complete {matches[0]}, but the committed "
                                                 f"state names {committed} holding {holds}"))
            else:
                problems.append(("unbootable", f"booted {why}"))
    existing = device.environments()
    for name in sorted({*keep, *([committed] if committed else [])}):
        if name not in existing:
            problems.append(("lost", f"{name} is gone (environments: {', '.join(existing) or 'none'})"))
    return problems


def _check_end(device: Cabinet, releases: dict[str, Release], scenario: Scenario) -> list[tuple[str, str]]:
    problems = [("retry" if k == "state" else k, d)
                for k, d in check_booted(device, releases, (scenario.end,), (), scenario.end)]
    history = device.committed().get("history", [])
    if history and history[-1]["environment"] not in device.environments():
        problems.append(("lost", f"the environment to roll back to, {history[-1]['environment']}, is gone "
                                 f"(environments: {', '.join(device.environments())})"))
    known = {device.committed().get("environment"), *scenario.keep, *(entry["environment"] for entry in history)}
    if stray := [name for name in device.environments() if name not in known]:
        problems.append(("leftover", f"environments neither committed nor kept to roll back to: {', '.join(stray)}"))
    for directory in ("state", "envs", "trust"):
        if temporaries := sorted(p.name for p in (device.dir / directory).glob(".*.tmp-*")):
            problems.append(("leftover", f"temporary files in {directory}/: {', '.join(temporaries)}"))
    for leftover in ("spool", "chain"):
        if (device.dir / "state" / leftover).exists():
            problems.append(("leftover", f"state/{leftover} is still there"))
    return problems


def _after_the_cut(device: Cabinet, scenario: Scenario, releases: dict[str, Release]) -> list[tuple[str, str]]:
    """Reboot, check, retry, reboot, check the end state."""
    unprovisioned = None in scenario.after_cut
    if trouble := reboot(device, unprovisioned):
        return [trouble]
    problems = check_booted(device, releases, scenario.after_cut, scenario.keep, scenario.end)
    if any(k == "unparsable" for k, _ in problems):
        return problems
    for command in scenario.retry(device):
        result = device.agent(*command)
        if result.returncode not in ((0, STAGED) if str(command[0]) in ("install", "on-insert") else (0,)):
            return problems + [("retry", f"{' '.join(map(str, command))} exited {result.returncode}: "
                                         f"{(result.stdout + result.stderr).strip()}")]
    if trouble := reboot(device, False):
        return problems + [trouble if trouble[0] == "unbootable" else ("retry", trouble[1])]
    return problems + _check_end(device, releases, scenario)


# --- the sweep ---------------------------------------------------------------------------------------


def _scratch(work: Path) -> Path:
    """Where the devices of the points live. Killing a process loses nothing the kernel has
    accepted, so the medium cannot change what a point shows (the block-level cuts in
    test_block_power_cuts.py are where the medium matters); a tmpfs spares every point the disk's
    fsync latency, which otherwise dominates the sweep's time."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="power-cut-", dir=shm))
    return work


def sweep(scenario: Scenario, releases: dict[str, Release], world: World, work: Path, *,
          every: int = 1, records: bool = True) -> Sweep:
    """Prepare ``scenario`` once, count its crash points, then cut the power at each chosen point.

    Adds every injected point to the "power" summary line. Problems are collected, not raised; the
    devices of the first KEPT_FAILURES failed points are kept in ``work`` for a post-mortem.
    """
    work.mkdir(parents=True, exist_ok=True)
    scratch = _scratch(work)
    try:
        return _sweep(scenario, releases, world, work, scratch, every, records)
    finally:
        if scratch != work:
            shutil.rmtree(scratch, ignore_errors=True)


def _sweep(scenario: Scenario, releases: dict[str, Release], world: World, work: Path, scratch: Path,
           every: int, records: bool) -> Sweep:
    template = Cabinet(world, scratch / "template", healthy=scenario.healthy, layout=scenario.layout)
    command = scenario.prepare(template)
    started = time.monotonic()

    baseline = template.copy(scratch / "baseline")
    trace = scratch / "trace"
    baseline.agent(*command, trace=trace)
    points = [(int(number), name) for number, name in
              (line.split(" ", 1) for line in trace.read_text().splitlines())] if trace.exists() else []
    result = Sweep(scenario, points)
    result.problems += [Problem(scenario.name, 0, "", k, d) for k, d in _after_the_cut(baseline, scenario, releases)]

    kept = threading.Semaphore(KEPT_FAILURES)

    def cut(point: tuple[int, str]) -> list[Problem]:
        number, name = point
        device = template.copy(scratch / f"cut-{number}")
        run = device.agent(*command, crash_at=number)
        if run.returncode != -signal.SIGKILL:
            said = (run.stdout + run.stderr).strip().splitlines()[-1:]
            found = [("harness", f"the command was not killed at this point (exit {run.returncode}"
                                 + (f": {said[0]}" if said else "") + "); the crash points differ between runs")]
        else:
            found = _after_the_cut(device, scenario, releases)
        if found and scratch != work and kept.acquire(blocking=False):
            shutil.copytree(device.dir, work / device.dir.name, symlinks=True)
        shutil.rmtree(device.dir, ignore_errors=True)
        return [Problem(scenario.name, number, name, k, d) for k, d in found]

    chosen = sample(points, every, records=records)
    with ThreadPoolExecutor(WORKERS) as pool:
        for problems in pool.map(cut, chosen):  # counted here, in one thread
            kinds = {p.kind for p in problems}
            count_summary("power", SUMMARY, injected=1, unbootable=int("unbootable" in kinds),
                          lost=int("lost" in kinds))
            result.problems += problems
    result.checked = [n for n, _ in chosen]
    result.seconds = time.monotonic() - started
    return result
