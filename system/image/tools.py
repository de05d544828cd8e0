"""Running the real tools, and undoing what they set up: mounts, loop devices, chroot mounts.

Every mount and loop device the build makes is registered in a ``Cleanup`` stack the moment it
exists, and the stack is unwound in a ``finally``: a build that fails or is interrupted leaves
no mount and no loop device behind (README.md, "Failure").
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

# Debian's tools live in /usr/sbin and /sbin, which a non-login root shell may lack on PATH.
TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(Exception):
    """A step of the image build failed; the message says which command and why."""


def say(message: str) -> None:
    print(f"image: {message}", flush=True)


def run(command: list, *, input: bytes | None = None, env: dict | None = None, capture: bool = False,
        quiet: bool = False, cwd: Path | None = None) -> str:
    """Runs ``command``; raises BuildError with its output's tail when it fails.

    ``quiet`` keeps the tool's output out of the build log unless it fails (debootstrap and apt
    print thousands of lines that say nothing when all goes well)."""
    command = [str(part) for part in command]
    full_env = {**os.environ, "PATH": TOOL_PATH + ":" + os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8",
                **(env or {})}
    piped = capture or quiet
    result = subprocess.run(command, input=input, env=full_env, cwd=cwd,
                            stdout=subprocess.PIPE if piped else None,
                            stderr=subprocess.STDOUT if quiet else None)
    output = result.stdout.decode(errors="replace") if piped else ""
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise BuildError(f"{shlex.join(command)} exited {result.returncode}" + (f":\n{tail}" if tail else ""))
    return output


class Cleanup:
    """A stack of undo actions (unmount, detach), unwound in reverse order.

    Unwinding never stops at the first failure: a busy mount is detached lazily so the mounts
    and loop devices under it are still released."""

    def __init__(self):
        self._undo: list[tuple[str, callable]] = []

    def push(self, what: str, undo) -> None:
        self._undo.append((what, undo))

    def mount(self, source, target: Path, *options: str) -> Path:
        """``mount [options] source target``, undone by an unmount."""
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", *options, source, target])
        self.push(f"unmount {target}", lambda: unmount(target))
        return target

    def loop(self, image: Path, offset: int, size: int) -> str:
        """A loop device over ``size`` bytes of ``image`` at ``offset``, undone by detaching it.

        Loop partitions (``losetup -P``) do not appear on every host (no udev in a container),
        so each partition gets a loop device of its own by offset and size limit."""
        device = run(["losetup", "--find", "--show", "--offset", offset, "--sizelimit", size, image],
                     capture=True).strip()
        self.push(f"detach {device}", lambda: run(["losetup", "--detach", device]))
        return device

    def unwind(self) -> None:
        errors = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except Exception as error:  # keep releasing the rest; report all at the end
                errors.append(f"{what}: {error}")
        if errors:
            print("image: clean-up problems:\n  " + "\n  ".join(errors), file=sys.stderr)


def unmount(target: Path) -> None:
    """Unmounts ``target``; lazily if it is busy, so the clean-up goes on."""
    for attempt in range(3):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)  # a process of the chroot (a forked helper) may still be closing files
    run(["umount", "--lazy", str(target)])


def mounts_below(folder: Path) -> list[Path]:
    """Mount points at or beneath ``folder`` (deepest first): a crashed earlier build's leftovers."""
    folder = folder.resolve()
    found = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = Path(line.split()[1].replace("\\040", " "))
        if target == folder or folder in target.parents:
            found.append(target)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


@contextmanager
def chroot_mounts(root: Path):
    """/proc, /sys and /dev inside ``root`` for the package scripts, always unmounted again.

    Package scripts (update-initramfs, depmod, python's venv) need /proc and /dev/null; /dev is
    bound from the host rather than populated, and the release tree never keeps device nodes
    (``bundle make`` refuses them)."""
    cleanup = Cleanup()
    try:
        cleanup.mount("proc", root / "proc", "-t", "proc")
        cleanup.mount("sysfs", root / "sys", "-t", "sysfs")
        cleanup.mount("/dev", root / "dev", "--bind")
        cleanup.mount("devpts", root / "dev/pts", "-t", "devpts")
        yield
    finally:
        cleanup.unwind()


def in_chroot(root: Path, command: list, **kwargs) -> str:
    """Runs ``command`` inside ``root`` with a clean, non-interactive environment."""
    env = {"DEBIAN_FRONTEND": "noninteractive", "HOME": "/root", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return run(["chroot", root, *command], env=env, **kwargs)


class Timings:
    """Wall-clock time per step, printed as the build goes and summed at the end."""

    def __init__(self):
        self.steps: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str):
        say(f"{name} ...")
        start = time.monotonic()
        yield
        seconds = time.monotonic() - start
        self.steps.append((name, seconds))
        say(f"{name}: {seconds:.1f} s")

    def report(self) -> dict:
        return {name: round(seconds, 1) for name, seconds in self.steps}
