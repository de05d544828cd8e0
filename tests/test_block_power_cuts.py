"""Block-level power cuts for the commit and the boot record (issue 5; FIELD-NOTES, "Filesystems and
crash testing here").

Killing the agent (tests/test_power_cuts.py) loses nothing the kernel has accepted; a power cut
also loses whatever is still only in the page cache. This kernel has no device-mapper
(dm-flakey, dm-log-writes), so the cut is modelled at the block device: the whole device
(configuration, state, environments) lives on a loop-mounted filesystem, periodic writeback is
frozen, the step runs, and the backing image is copied without syncing. The copy holds exactly
what reached the block device - what the agent fsync'd, and what the filesystem's journal carried
with it - and mounting it replays the journal as the next boot would. On the copy: the boot record
and the state files must parse and name environments that exist and verify, the machine must
reboot (``boot``, ``boot-check``) into a complete environment holding what the state says is
committed, and a step that had finished must be there whole.

A control shows that the model does lose data: in the same window a deliberately unsafe write
(temporary file and rename, no fsync) replaces a file, and on the copy it must be lost (the old
bytes) or zero-length. ext4 is mounted ``noauto_da_alloc`` because by default it flushes a file
renamed over another (a heuristic for exactly this unsafe pattern) and the control would survive;
the agent must not depend on that heuristic. ``commit=300`` on ext4 and btrfs keeps the journal
from committing on its own timer during the window.

The cuts: right after the step finished, and the agent killed (SIGKILL) at a crash point with the
image copied at that moment. ``make test`` cuts where a rename of the boot record or the state has
happened but its directory is not fsync'd yet; ``make crash-test`` cuts at every point. The
writeback sysctls are global: they are saved and restored in a ``finally``, and a lock file
serialises these tests across processes. A ``sync`` by any other process during the window writes
everything back; the control then fails the test rather than letting it pass vacuously.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sim.device import STAGED, Cabinet, World
from tests.sim.power_cut import FULL_SWEEP, SUMMARY, Release, check_booted, reboot
from tests.sim.summary import count_summary
from tests.sim.tools import debian_tools

MiB = 1 << 20
IMAGE_SIZE = 320 * MiB  # mkfs.xfs wants at least 300 MiB; the image is sparse
FILESYSTEMS = {  # kind -> (Debian package, mkfs command, mount options)
    "ext4": ("e2fsprogs", ["mkfs.ext4", "-q"], "noauto_da_alloc,commit=300"),
    "xfs": ("xfsprogs", ["mkfs.xfs", "-q"], "defaults"),
    "btrfs": ("btrfs-progs", ["mkfs.btrfs", "-q"], "commit=300"),
}
FROZEN = {"vm/dirty_writeback_centisecs": "0", "vm/dirty_expire_centisecs": "360000"}  # no flusher for an hour
LOCK = Path(tempfile.gettempdir()) / "bundle-agent-writeback-frozen.lock"
STATE_FILES = ("envs/boot.json", "state/state.json", "state/journal.json", "state/result.json")
CONTROL, OLD, NEW = "state/control.json", b'{"control": "old"}\n', b'{"control": "new, never fsynced"}\n'


def _run(*command) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True)


# --- loop devices and frozen writeback -----------------------------------------------------------


def _tools(kind: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("block-level power cuts loop-mount filesystem images and set vm sysctls: they need root")
    package, mkfs, _ = FILESYSTEMS[kind]
    debian_tools(package, mkfs[0])
    debian_tools("mount", "losetup", "mount", "umount")


@contextmanager
def mounted(image: Path, mountpoint: Path, kind: str):
    """``image`` attached to a loop device and mounted with the kind's options at ``mountpoint``."""
    attached = _run("losetup", "--find", "--show", image)
    if attached.returncode != 0:
        pytest.skip(f"no loop device available: {attached.stderr.strip()}")
    loop = attached.stdout.strip()
    try:
        mountpoint.mkdir(exist_ok=True)
        done = _run("mount", "-t", kind, "-o", FILESYSTEMS[kind][2], loop, mountpoint)
        if done.returncode != 0 and kind not in Path("/proc/filesystems").read_text().split():
            pytest.skip(f"this kernel cannot mount {kind}: {done.stderr.strip()}")
        assert done.returncode == 0, done.stderr
        try:
            yield mountpoint
        finally:
            if _run("umount", mountpoint).returncode != 0:
                _run("umount", "-l", mountpoint)
    finally:
        _run("losetup", "-d", loop)


@contextmanager
def writeback_frozen():
    """Periodic writeback off until the block ends: dirty pages stay in memory unless fsync'd.

    The sysctls are global, so the old values are restored in a ``finally`` and a lock file
    serialises every test that freezes writeback. Everything dirty before the window is written
    first, so the window holds only the step's own writes."""
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        paths = {Path("/proc/sys") / name: value for name, value in FROZEN.items()}
        saved = {path: path.read_text() for path in paths}
        os.sync()
        try:
            try:
                for path, value in paths.items():
                    path.write_text(value)
            except OSError as error:
                pytest.skip(f"cannot set {path.name} ({error.strerror}): writeback cannot be frozen here")
            yield
        finally:
            for path, value in saved.items():
                path.write_text(value)


def _unsafe_replace(path: Path, data: bytes) -> None:
    """The control: a temporary file renamed over ``path`` with no fsync at all - what
    keys/files.write_atomic exists to avoid."""
    temporary = path.with_name(path.name + ".unsafe")
    temporary.write_bytes(data)
    os.rename(temporary, path)


def _copy_unsynced(image: Path, copy: Path) -> None:
    """Copy the backing image through the page cache; nothing is synced (cp does not sync)."""
    done = _run("cp", "--sparse=always", image, copy)
    assert done.returncode == 0, done.stderr


# --- the device and its steps ----------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    name: str
    before: tuple[tuple[str, ...], ...]  # durable before the window opens
    command: tuple[str, ...]  # the step the power cut hits
    after_completed: str  # the release committed after a cut right after the step, and a reboot


STEPS = {
    # The boot loader consumes the trial's one-time choice: lost, the trial would boot twice.
    "boot-record": Step("boot-record", (), ("boot",), "r1"),
    # boot-check in a healthy trial commits: the boot record's default, then the committed state.
    "commit": Step("commit", (("boot",),), ("boot-check",), "r2"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    world = World(tmp_path_factory.mktemp("world"))
    world.stick(world.dir / "stick-d12", "d12")
    return world


@pytest.fixture(scope="module")
def releases(world) -> dict[str, Release]:
    return {"r1": Release.of("r1", world.bundles / "full-1"), "r2": Release.of("r2", world.bundles / "full-2")}


@pytest.fixture(scope="module", params=sorted(FILESYSTEMS))
def template(request, world, tmp_path_factory) -> tuple[str, Path, list[tuple[int, str]]]:
    """A ``kind`` image holding a device with the trial of d12 armed, cleanly unmounted, and the
    crash points of each step (traced on a copy)."""
    kind = request.param
    _tools(kind)
    directory = tmp_path_factory.mktemp(f"block-{kind}")
    image = directory / "template.img"
    with open(image, "wb") as handle:
        handle.truncate(IMAGE_SIZE)
    made = _run(*FILESYSTEMS[kind][1], image)
    assert made.returncode == 0, made.stderr
    with mounted(image, directory / "mnt", kind) as mountpoint:
        device = Cabinet(world, mountpoint / "device")
        device.provision()
        device.agent("install", world.dir / "stick-d12", check=True)
        (device.dir / CONTROL).write_bytes(OLD)
        traces = {}
        for step in STEPS.values():
            scratch = device.copy(mountpoint / f"trace-{step.name}")
            for command in step.before:
                scratch.agent(*command, check=True)
            scratch.agent(*step.command, trace=directory / f"{step.name}.trace")
            traces[step.name] = [(int(n), name) for n, name in (line.split(" ", 1) for line in
                                 (directory / f"{step.name}.trace").read_text().splitlines())]
            _run("rm", "-rf", scratch.dir)
    yield kind, image, traces
    image.unlink()


def _points(traces: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """0 (after the step finished) and, for make test, each point that follows a rename of the boot
    record or the committed state - renamed, the directory not yet fsync'd; all points in the full sweep."""
    if FULL_SWEEP:
        return [(0, "completed")] + traces
    names = dict(traces)
    return [(0, "completed")] + [(n, name) for n, name in traces
                                 if names.get(n - 1) in ("rename boot.json", "rename state.json")]


# --- the checks on the copy ------------------------------------------------------------------------


def _parse(path: Path) -> dict | None:
    """A JSON object, or None when the file does not exist. Raises ValueError when it is damaged."""
    if not path.exists():
        return None
    document = json.loads(path.read_bytes())
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _check_records(device: Cabinet, releases: dict[str, Release]) -> list[tuple[str, str]]:
    """Before the reboot: the boot record and the state parse, and what they name exists and verifies."""
    try:
        record = _parse(device.dir / "envs/boot.json")
        state = _parse(device.dir / "state/state.json")
        journal = _parse(device.dir / "state/journal.json") or {}
    except ValueError as error:  # json.JSONDecodeError included: a zero-length or torn file
        return [("unbootable", f"a record does not parse: {error}")]
    if record is None or state is None:
        return [("unbootable", f"{'the boot record' if record is None else 'the committed state'} is missing")]
    committed = {n: c["tree_digest"] for n, c in state["components"].items()}
    pending = journal.get("pending") or {}
    trial = pending.get("environment") if pending.get("phase") == "trial" else None
    trial_digests = {n: c["tree_digest"] for n, c in pending.get("components", {}).items()}
    problems = []
    if why := device.differences(state["environment"], committed):
        problems.append(("unbootable", f"the committed state's environment: {why}"))
    for role in ("default", "next_once"):
        name = record.get(role)
        if name is None:
            if role == "default":
                problems.append(("unbootable", "the boot record has no default"))
            continue
        expected = trial_digests if name == trial else committed if name == state["environment"] else None
        if expected is None:
            problems.append(("unbootable", f"the boot record's {role} {name} is neither committed nor the trial"))
        elif why := device.differences(name, expected):
            problems.append(("unbootable", f"the boot record's {role}: {why}"))
    return problems


@pytest.mark.parametrize("step_name", sorted(STEPS))
def test_block_level_power_cut(template, step_name, world, releases, tmp_path):
    kind, template_image, traces = template
    step = STEPS[step_name]
    failures = []
    for number, name in _points(traces[step_name]):
        found, seen = _cut(kind, template_image, step, number, releases, tmp_path)
        kinds = {k for k, _ in found}
        count_summary("power", SUMMARY, injected=1, unbootable=int("unbootable" in kinds), lost=int("lost" in kinds))
        print(f"{kind} {step_name} {'after the step' if number == 0 else f'point {number} ({name})'}: "
              f"{'; '.join(d for _, d in found) or 'ok'}; {seen}")
        failures += [f"{kind} {step_name} point {number} ({name}): {k}: {d}" for k, d in found]
    assert not failures, "\n".join(failures)


def _cut(kind: str, template_image: Path, step: Step, number: int, releases: dict[str, Release],
         work: Path) -> tuple[list[tuple[str, str]], str]:
    """One block-level cut at crash point ``number`` (0: after the step finished). Returns the
    problems and, in words, what the copy held of the boot record, the state and the control."""
    live, copy = work / "live.img", work / "cut.img"
    for image in (live, copy):
        image.unlink(missing_ok=True)
    _copy_unsynced(template_image, live)  # the template is cleanly unmounted: nothing is pending
    with mounted(live, work / "live", kind) as mountpoint:
        device = Cabinet.at(mountpoint / "device")
        for command in step.before:
            device.agent(*command, check=True)
        before = _contents(device)
        with writeback_frozen():
            _unsafe_replace(device.dir / CONTROL, NEW)
            result = device.agent(*step.command, crash_at=number)
            after = _contents(device)
            _copy_unsynced(live, copy)
    live.unlink()
    # Run to the end, install exits 4: it staged an update (docs/OPERATOR.md, "Exit codes").
    expected = -9 if number else STAGED if step.command[0] in ("install", "on-insert") else 0
    if result.returncode != expected:
        return [("harness", f"{' '.join(step.command)} exited {result.returncode}, expected {expected}: "
                            f"{result.stderr.strip()}")], "not checked"
    with mounted(copy, work / "cut", kind) as mountpoint:
        device = Cabinet.at(mountpoint / "device")
        data = (device.dir / CONTROL).read_bytes()
        control = "zero-length" if data == b"" else "lost (the old bytes)" if data == OLD else repr(data[:40])
        held = _contents(device)
        seen = "; ".join(f"{Path(name).name} {_which(held.get(name), before.get(name), after.get(name))}"
                         for name in ("envs/boot.json", "state/state.json")) + f"; unsafe control write {control}"
        problems = []
        if data == NEW:
            problems.append(("harness", "the unsafe write survived the cut: writeback was not frozen (another "
                                        "process may have synced), so this cut proves nothing"))
        problems += _check_records(device, releases)
        if number == 0:  # the step finished: everything it wrote was fsync'd and must be there whole
            for name, data in after.items():
                if held.get(name) != data:
                    problems.append(("lost", f"{name} as the finished step left it did not survive the cut"))
        if not problems:
            if trouble := reboot(device, False):
                problems.append(trouble)
            else:
                allowed = (step.after_completed,) if number == 0 else ("r1", "r2")
                problems += check_booted(device, releases, allowed, ("env-1",), "r1")
    copy.unlink()
    return problems, seen


def _contents(device: Cabinet) -> dict[str, bytes]:
    return {name: (device.dir / name).read_bytes() for name in STATE_FILES if (device.dir / name).exists()}


def _which(held: bytes | None, before: bytes | None, after: bytes | None) -> str:
    if held == after:
        return "as the step left it" if before != after else "unchanged"
    return "as before the step" if held == before else "damaged" if held else "missing"
