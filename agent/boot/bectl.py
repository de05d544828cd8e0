"""``bectl``: FreeBSD ZFS boot environments, driven through bectl(8) (docs/BECTL.md).

    environments()   bectl list -H -c creation      (N booted now, R default, T next boot once)
    clone(src, new)  bectl create [-e src] new; bectl mount new MOUNT_DIR/new
    activate_once(n) bectl umount n (if mounted); bectl activate -t n
    cancel_once()    bectl activate -T                (FreeBSD 13.1 and later)
    commit(n)        bectl activate n (and activate -T if n was also armed once)
    destroy(n)       bectl destroy -F n
    create_empty(n)  refused: bectl makes every environment from a snapshot of another one

Settings (``[boot]`` beside ``backend = "bectl"``): ``bectl`` (the command, default ``bectl``),
``beroot`` (the boot-environment root dataset, passed as ``bectl -r BEROOT``; default: derived by
bectl from the pool mounted at ``/``), ``mount_dir`` (absolute; where a new environment is mounted
while it is staged, default ``/var/run/bundle-agent/be``).

Only bectl's documented command line is used, and its output is parsed from ``list -H`` (tab
separated, no header) and ``mount`` (the mount point on stdout). The loader, not this module,
consumes a one-time activation: a trial that crashes falls back to R by itself.

Names and identity: the agent's environments are ``env-N``, N above every number listed. A
destroyed name can be made again, so an environment's identity is its name with its creation
time as ``bectl list`` prints it (to the minute, local time): an environment destroyed and made
again under its name has another identity unless both fell in the same minute, and the agent
only destroys committed environments that are old (pruning keeps the newest). A changed time
zone changes every identity: rollbacks to older environments are then refused, never misdirected.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from agent.boot.base import BootBackend, BootError, Environment, agent_number, next_agent_name

DEFAULT_MOUNT_DIR = "/var/run/bundle-agent/be"
TIMEOUT = 600  # seconds; a destroy of a large environment can take minutes on a slow disk
_SETTINGS = ("bectl", "beroot", "mount_dir")
# Boot environment names: what every ZFS release accepts as a dataset component and the kernel
# can boot from (be_validate_name refuses spaces), kept short; the agent itself uses env-N.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DATASET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*(/[A-Za-z0-9._:-]+)+")  # pool/dataset[/...]
_FLAGS = re.compile(r"N?R?T?")


class BectlBackend(BootBackend):
    """Every method raises BootError ("bectl backend: ...") with bectl's own words and a hint."""

    name = "bectl"
    settings = _SETTINGS

    def __init__(self, settings: dict, system_root: Path = Path("/")):
        # system_root is not used: bectl reaches the pool through the running kernel (-r names
        # the boot-environment root), and mount_dir is a path of the running system.
        if "root" in settings:
            # A dataset name given as root (the dirs backend's directory) would be a mistake to guess at.
            raise BootError(self.name, "[boot] root is the dirs backend's directory setting",
                            hint='give the boot environment root dataset as [boot] beroot = "zroot/ROOT"')
        unknown = sorted(set(settings) - set(_SETTINGS))
        if unknown:
            raise BootError(self.name, f"unknown [boot] setting(s) {', '.join(unknown)}",
                            hint=f"this backend reads {', '.join(_SETTINGS)} (docs/BECTL.md)")
        self.command = settings.get("bectl", "bectl")
        self.beroot = settings.get("beroot")
        mount_dir = settings.get("mount_dir", DEFAULT_MOUNT_DIR)
        if not isinstance(self.command, str) or not self.command:
            raise BootError(self.name, "[boot] bectl must be the command to run (a path or a name on PATH)")
        if self.beroot is not None and not (isinstance(self.beroot, str) and _DATASET.fullmatch(self.beroot)):
            raise BootError(self.name, f"[boot] beroot {self.beroot!r} is not a dataset name like zroot/ROOT",
                            hint="bectl -r needs the pool and the dataset whose children are boot environments")
        if not isinstance(mount_dir, str) or not Path(mount_dir).is_absolute():
            raise BootError(self.name, f"[boot] mount_dir {mount_dir!r} must be an absolute path")
        self.mount_dir = Path(mount_dir)

    # --- running bectl -----------------------------------------------------------------------

    def _run(self, *args: str, what: str, hint: str | None = None) -> str:
        """bectl's stdout. Raises BootError carrying bectl's own words (stderr, and stdout,
        where ``activate`` reports its failures)."""
        command = [self.command, *(("-r", self.beroot) if self.beroot else ()), *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        except FileNotFoundError:
            raise BootError(self.name, f"{what}: the command {self.command!r} was not found",
                            hint="this backend needs FreeBSD's bectl(8); set [boot] bectl to its path") from None
        except OSError as error:
            raise BootError(self.name, f"{what}: cannot run {self.command}: {error.strerror}") from None
        except subprocess.TimeoutExpired:
            raise BootError(self.name, f"{what}: {' '.join(command)} did not finish within {TIMEOUT} s") from None
        if result.returncode != 0:
            said = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
            said = [line for line in said if not line.startswith(("usage:", "Usage:", "bectl ["))] or said
            detail = "; ".join(said[:4]) or "no message"
            raise BootError(self.name, f"{what}: {' '.join(command[1:])} exited {result.returncode}: {detail}",
                            hint=hint or "bectl's own words are quoted above; `bectl list` shows the environments")
        return result.stdout

    def _check_name(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BootError(self.name, f"invalid boot environment name {name!r}",
                            hint="letters, digits and ._- only, at most 64 characters")
        return name

    # --- the interface ---------------------------------------------------------------------

    def environments(self) -> list[Environment]:
        """Oldest first (``-c creation``: ZFS's creation time in seconds; bectl's default order
        is by name, where env-10 would sort before env-9)."""
        output = self._run("list", "-H", "-c", "creation", what="cannot list boot environments",
                           hint="run `bectl list` by hand: is this machine booted from a ZFS boot environment?")
        environments = []
        for line in output.splitlines():
            if not line.strip():
                continue
            fields = line.split("\t")
            # BE, Active, Mountpoint, Space, Created (bectl_list.c print_info with -H)
            if len(fields) < 3 or not fields[0] or not fields[1]:
                raise BootError(self.name, f"cannot read this line of `bectl list -H`: {line!r}",
                                hint="expected tab-separated BE, Active, Mountpoint, Space, Created")
            name, active, mountpoint = fields[0], fields[1], fields[2]
            created = fields[4] if len(fields) > 4 else ""
            flags = "" if active == "-" else active
            if not _FLAGS.fullmatch(flags):
                raise BootError(self.name, f"unexpected Active column {active!r} for {name} in `bectl list -H`")
            environments.append(Environment(
                name=name, identity=f"{name}@{created}", path=None if mountpoint in ("", "-") else Path(mountpoint),
                booted_now="N" in flags, default="R" in flags, next_once="T" in flags,
                made_by_agent=agent_number(name) is not None))
        return environments

    def new_name(self) -> str:
        return next_agent_name([e.name for e in self.environments()])

    can_create_empty = False

    def holds(self, path: Path) -> bool:
        """On the booted environment's own dataset (the device of its mount point, "/"): a clone
        would snapshot the agent's journal into the trial it describes. A deep boot environment's
        child dataset is another device, like a dataset of its own, and is not told apart.
        False when bectl cannot answer: the command that needs it reports that."""
        try:
            booted = self.booted()
        except BootError:
            return False
        if booted is None or booted.path is None:
            return False
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(booted.path):
            return False
        existing = next(p for p in (resolved, *resolved.parents) if p.exists())
        return os.stat(existing).st_dev == os.stat(booted.path).st_dev

    def clone_shares_blocks(self) -> bool:
        return True  # a ZFS clone shares every block with its origin until one is written

    def create_empty(self, name: str) -> Path:
        # Decision (docs/BECTL.md, "Provisioning"): bectl has no empty boot environment - `create`
        # snapshots the booted one or the one named by -e. Emptying such a clone would throw away
        # the operating system around the agent's component directories and leave an
        # environment that cannot boot, so this backend refuses instead of pretending.
        self._check_name(name)
        raise BootError(self.name, f"cannot create an empty boot environment {name}: bectl makes every "
                                   "boot environment from a snapshot of an existing one",
                        hint="the first boot environment comes from the FreeBSD installer or a factory image "
                             "(bectl import); see docs/BECTL.md, Provisioning")

    def clone(self, source: str, name: str) -> Path:
        self._check_name(source)
        self._check_name(name)
        environments = {e.name: e for e in self.environments()}
        if source not in environments:
            raise BootError(self.name, f"boot environment {source} does not exist")
        if name in environments:
            raise BootError(self.name, f"boot environment {name} already exists")
        # bectl(8): -e names a *non-active* environment; the booted one is the default source.
        args = ("create", name) if environments[source].booted_now else ("create", "-e", source, name)
        self._run(*args, what=f"cannot clone {source} to {name}",
                  hint="check the pool's free space: zpool list; zfs list -o space")
        try:
            return self._mount(name)
        except BootError:
            self._discard(name)
            raise

    def activate_once(self, name: str) -> None:
        self._check_name(name)
        environment = self._existing(name)
        # The staged tree has been verified; unmounting it first means nothing can write to it
        # between verification and the trial boot.
        if environment.path is not None and not environment.booted_now:
            self._unmount(name)
        self._run("activate", "-t", name, what=f"cannot arm {name} for one trial boot")

    def cancel_once(self) -> None:
        if not any(e.next_once for e in self.environments()):
            return  # nothing pending: also spares bectl releases before 13.1, which lack -T
        self._run("activate", "-T", what="cannot cancel the one-time boot",
                  hint="bectl activate -T needs FreeBSD 13.1 or later; on older releases run "
                       "zfsbootcfg with an empty value, or choose the default in the loader menu")

    def commit(self, name: str) -> None:
        self._check_name(name)
        environment = self._existing(name)
        self._run("activate", name, what=f"cannot make {name} the default boot environment",
                  hint="check the pool's bootfs property: zpool get bootfs")
        if environment.next_once:
            # A permanent activation leaves the pool's bootonce record alone (libbe be_activate);
            # once committed, a pending one-time boot of the same environment is redundant.
            self.cancel_once()

    def destroy(self, name: str) -> None:
        self._check_name(name)
        environment = self._existing(name)
        if environment.booted_now or environment.default:
            raise BootError(self.name, f"boot environment {name} is booted or the default; it cannot be destroyed")
        if environment.next_once:
            self.cancel_once()  # never leave the loader a one-time choice that no longer exists
        # -F unmounts a staging mount first; bectl destroys the origin snapshot it made itself.
        self._run("destroy", "-F", name, what=f"cannot destroy {name}")
        self._remove_mount_point(name)

    # --- mounting --------------------------------------------------------------------------

    def _existing(self, name: str) -> Environment:
        environment = self.get(name)
        if environment is None:
            raise BootError(self.name, f"boot environment {name} does not exist")
        return environment

    def _mount(self, name: str) -> Path:
        """Mount ``name`` at MOUNT_DIR/name, writable, and return that path."""
        target = self.mount_dir / name
        try:
            self.mount_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.mkdir(mode=0o755, exist_ok=True)
            if any(target.iterdir()):
                raise BootError(self.name, f"the mount point {target} is not empty",
                                hint="another mount or stray files are there; unmount or remove them")
        except OSError as error:
            raise BootError(self.name, f"cannot prepare the mount point {target}: {error.strerror}") from None
        output = self._run("mount", name, str(target), what=f"cannot mount {name} at {target}")
        printed = output.strip().splitlines()[-1:] or [""]
        if Path(printed[0]) != target:
            raise BootError(self.name, f"bectl mounted {name} at {printed[0]!r}, not at {target}")
        return target

    def _unmount(self, name: str) -> None:
        self._run("umount", name, what=f"cannot unmount {name}",
                  hint="a process may still use it: fstat -f MOUNTPOINT")
        self._remove_mount_point(name)

    def _remove_mount_point(self, name: str) -> None:
        try:
            (self.mount_dir / name).rmdir()  # only ever an empty directory this backend made
        except OSError:
            pass

    def _discard(self, name: str) -> None:
        """Best effort after a failed clone; the agent also destroys leftovers on its next run."""
        try:
            self._run("destroy", "-F", name, what=f"cannot remove the half-made {name}")
        except BootError:
            pass
        self._remove_mount_point(name)
