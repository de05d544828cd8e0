"""``grub-btrfs``: environments are btrfs subvolumes; GRUB chooses among them (docs/DEVICE.md).

    POOL/envs/<name>      an environment: a whole root filesystem with boot/vmlinuz, boot/initrd.img
    GRUBENV, GRUBENV_COPY two copies of GRUB's environment block: default_env, trial_env

POOL is where the btrfs top level (subvolid 5) is mounted; the running system's ``/`` is one of
the subvolumes, mounted read-only (kernel command line ``rootflags=subvol=envs/<name> ro``).

    environments()   the subvolumes envs/<name>, oldest first; N from the mount of ``/``,
                     R and T from the environment block GRUB reads
    clone(src, new)  btrfs subvolume snapshot POOL/envs/src POOL/envs/new (shares every block)
    create_empty(n)  btrfs subvolume create POOL/envs/n (factory provisioning)
    activate_once(n) trial_env=n          commit(n) default_env=n, trial_env cleared if it was n
    cancel_once()    trial_env=           destroy(n) btrfs subvolume delete POOL/envs/n

GRUB (system/linux/grub/grub.cfg) consumes ``trial_env`` before it boots it, so a trial that
hangs or loses power comes back in ``default_env`` without the agent. The agent writes the
blocks only through :func:`agent.boot.grubenv.rewrite` (in place, flushed, read back): the copy
first, then the block GRUB reads first. GRUB reads the first block when it names a usable
environment and the copy otherwise, and so does this module: whichever write a power cut
interrupts, what GRUB boots and what the agent believes are the same, old or new.

Identity: the subvolume's UUID, which btrfs gives every subvolume it creates and never reuses.
Settings (``[boot]`` beside ``backend = "grub-btrfs"``): ``pool``, ``grubenv``, ``grubenv_copy``
(absolute paths, defaults below) and ``btrfs`` (the command).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from agent.boot import grubenv
from agent.boot.base import BootBackend, BootError, Environment, agent_number, next_agent_name
from agent.system_root import under
from keys.crashpoint import crashpoint

DEFAULTS = {"pool": "/pool", "grubenv": "/boot/efi/EFI/BOOT/env-a/grubenv",
            "grubenv_copy": "/boot/efi/EFI/BOOT/env-b/grubenv", "btrfs": "btrfs"}
ENVS = "envs"
TIMEOUT = 600  # seconds; deleting a large subvolume can take minutes on a slow disk
# The names grub.cfg accepts (its env_usable), kept short; the agent itself uses env-N.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LIST_LINE = re.compile(r"ID (\d+) gen \d+ top level \d+ uuid ([0-9a-f-]{36}) path (.+)")


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(root inside the filesystem, mount point, filesystem type, source) of every mount, in
    mount order, with the kernel's octal escapes undone (proc_pid_mountinfo(5))."""
    def unescape(field: str) -> str:
        return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
    mounts = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as lines:
        for line in lines:
            fields = line.split()
            separator = fields.index("-")
            mounts.append((unescape(fields[3]), unescape(fields[4]), fields[separator + 1],
                           unescape(fields[separator + 2])))
    return mounts


class GrubBtrfsBackend(BootBackend):
    """Every method raises BootError ("grub-btrfs backend: ...") saying what to check."""

    name = "grub-btrfs"
    settings = tuple(DEFAULTS)

    def __init__(self, settings: dict, system_root: Path = Path("/")):
        unknown = sorted(set(settings) - set(DEFAULTS))
        if unknown:
            raise BootError(self.name, f"unknown [boot] setting(s) {', '.join(unknown)}",
                            hint=f"this backend reads {', '.join(DEFAULTS)} (docs/DEVICE.md)")
        values = {**DEFAULTS, **settings}
        for key in ("pool", "grubenv", "grubenv_copy"):
            if not isinstance(values[key], str) or not values[key].startswith("/"):
                raise BootError(self.name, f"[boot] {key} must be an absolute path, not {values[key]!r}",
                                hint=f'for example {key} = "{DEFAULTS[key]}"')
        if not isinstance(values["btrfs"], str) or not values["btrfs"]:
            raise BootError(self.name, "[boot] btrfs must be the command to run (a path or a name on PATH)")
        if values["grubenv"] == values["grubenv_copy"]:
            raise BootError(self.name, "[boot] grubenv and grubenv_copy are the same file",
                            hint="the two copies must be separate files, each in a folder of its own")
        self.system_root = system_root
        self.pool = under(system_root, values["pool"])
        self.envs = self.pool / ENVS
        self.blocks = (under(system_root, values["grubenv"]), under(system_root, values["grubenv_copy"]))
        self.command = values["btrfs"]

    # --- running btrfs -----------------------------------------------------------------------

    def _btrfs(self, *args: str, what: str, hint: str | None = None) -> str:
        command = [self.command, *args]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
        except FileNotFoundError:
            raise BootError(self.name, f"{what}: the command {self.command!r} was not found",
                            hint="install btrfs-progs, or set [boot] btrfs to the command's path") from None
        except subprocess.TimeoutExpired:
            raise BootError(self.name, f"{what}: {' '.join(command)} did not finish within {TIMEOUT} s") from None
        if result.returncode != 0:
            said = "; ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
            raise BootError(self.name, f"{what}: {' '.join(command[1:])} exited {result.returncode}: "
                                       f"{said or 'no message'}", hint=hint)
        return result.stdout

    def _path(self, name: str) -> Path:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise BootError(self.name, f"invalid environment name {name!r}",
                            hint="letters, digits and ._- only, at most 64 characters, as grub.cfg accepts")
        return self.envs / name

    def _subvolumes(self) -> list[tuple[int, str, str]]:
        """(subvolume id, name, UUID) of every subvolume ``envs/<name>``, oldest first."""
        if not self.envs.is_dir():
            raise BootError(self.name, f"{self.envs} is not a folder",
                            hint=f"mount the btrfs top level at {self.pool} (mount -o subvolid=5 DEVICE "
                                 f"{self.pool}); the environments are its subvolumes {ENVS}/NAME")
        output = self._btrfs("subvolume", "list", "-u", str(self.pool), what="cannot list the environments",
                             hint=f"is {self.pool} the top level of a btrfs filesystem, and are you root?")
        found = []
        for line in output.splitlines():
            match = _LIST_LINE.fullmatch(line.strip())
            if match is None:
                raise BootError(self.name, f"cannot read this line of `btrfs subvolume list -u`: {line!r}")
            path = match.group(3)
            folder, _, name = path.rpartition("/")
            if folder == ENVS and _NAME.fullmatch(name):
                found.append((int(match.group(1)), name, match.group(2)))
        return sorted(found)  # btrfs numbers subvolumes in the order it makes them

    def _booted(self) -> str | None:
        """The environment mounted at the system root, if that is one of this pool's subvolumes."""
        root = os.path.realpath(self.system_root)
        pool = os.path.realpath(self.pool)
        mounts = _mountinfo()
        pool_source = next((m[3] for m in reversed(mounts) if m[1] == pool and m[2] == "btrfs"), None)
        for inside, mount_point, fstype, source in reversed(mounts):
            if mount_point == root:
                if fstype != "btrfs" or source != pool_source or not inside.startswith(f"/{ENVS}/"):
                    return None
                return inside[len(ENVS) + 2:]
        return None

    # --- the environment blocks --------------------------------------------------------------

    def _usable(self, name: str | None) -> bool:
        """grub.cfg's env_usable: a well-formed name with a kernel and an initramfs."""
        if not name or not _NAME.fullmatch(name):
            return False
        boot = self.envs / name / "boot"
        try:
            return all(not os.path.isdir(boot / f) and os.path.lexists(boot / f) for f in ("vmlinuz", "initrd.img"))
        except OSError:
            return False

    def _read_block(self, path: Path) -> dict[str, str] | None:
        try:
            return grubenv.parse(grubenv.read(path))
        except (OSError, grubenv.BlockError):
            return None

    def _record(self) -> dict[str, str]:
        """The variables GRUB uses: the first block when it names a usable environment, else the
        copy (grub.cfg reads them the same way)."""
        first = self._read_block(self.blocks[0])
        if first is not None and self._usable(first.get("default_env")):
            return first
        return self._read_block(self.blocks[1]) or first or {}

    def _write_record(self, record: dict[str, str], default: str, trial: str) -> None:
        """``record``: what the blocks hold now (:meth:`_record`), whose other variables are kept."""
        variables = {"default_env": default, "trial_env": trial,
                     **{k: v for k, v in record.items() if k not in ("default_env", "trial_env")}}
        try:
            block = grubenv.render(variables)
        except grubenv.BlockError as error:
            raise BootError(self.name, f"cannot make the GRUB environment block: {error}") from None
        for number, path in ((2, self.blocks[1]), (1, self.blocks[0])):  # the copy first
            try:
                grubenv.rewrite(path, block)
            except (OSError, grubenv.BlockError) as error:
                raise BootError(self.name, f"cannot write the GRUB environment block {path}: {error}",
                                hint="both copies must exist, 1024 bytes each, on a filesystem GRUB can write "
                                     "(the ESP): create them with grub-editenv FILE create") from None
            crashpoint(f"grubenv {number}")

    # --- the interface -----------------------------------------------------------------------

    def environments(self) -> list[Environment]:
        record = self._record()
        booted = self._booted()
        return [Environment(name=name, identity=uuid, path=self.envs / name, booted_now=name == booted,
                            default=record.get("default_env") == name, next_once=record.get("trial_env") == name,
                            made_by_agent=agent_number(name) is not None)
                for _, name, uuid in self._subvolumes()]

    def new_name(self) -> str:
        # Any name in the folder counts, subvolume or not: a leftover folder is never overwritten.
        existing = [p.name for p in self.envs.iterdir()] if self.envs.is_dir() else []
        return next_agent_name(existing)

    def clone_shares_blocks(self) -> bool:
        return True  # a snapshot shares every block with its source until one is written

    def space_path(self) -> Path:
        return self.pool

    def holds(self, path: Path) -> bool:
        """Inside the pool's environments, or on the running environment's own subvolume."""
        resolved = Path(path).resolve()
        if resolved.is_relative_to(self.envs.resolve()):
            return True
        if self._booted() is None:
            return False
        existing = next((p for p in (resolved, *resolved.parents) if p.exists()), Path("/"))
        return os.stat(existing).st_dev == os.stat(self.system_root).st_dev

    def create_empty(self, name: str) -> Path:
        path = self._new(name)
        self._btrfs("subvolume", "create", str(path), what=f"cannot create the environment {name}",
                    hint=f"check the free space of {self.pool}: btrfs filesystem usage {self.pool}")
        return path

    def clone(self, source: str, name: str) -> Path:
        origin = self._path(source)
        if source not in {n for _, n, _ in self._subvolumes()}:
            raise BootError(self.name, f"environment {source} does not exist")
        path = self._new(name)
        crashpoint(f"clone {name}")
        self._btrfs("subvolume", "snapshot", str(origin), str(path), what=f"cannot snapshot {source} as {name}",
                    hint=f"check the free space of {self.pool}: btrfs filesystem usage {self.pool}")
        return path

    def activate_once(self, name: str) -> None:
        if not self._usable(name):
            raise BootError(self.name, f"environment {name} has no boot/vmlinuz and boot/initrd.img; GRUB "
                                       "would not boot it", hint="the platform must ship its kernel and initramfs")
        record = self._record()
        self._write_record(record, record.get("default_env", ""), name)

    def cancel_once(self) -> None:
        record = self._record()
        if record.get("trial_env"):
            self._write_record(record, record.get("default_env", ""), "")

    def commit(self, name: str) -> None:
        if not self._usable(name):
            raise BootError(self.name, f"environment {name} does not exist or has no kernel and initramfs",
                            hint="the platform must ship boot/vmlinuz and boot/initrd.img")
        record = self._record()
        trial = record.get("trial_env", "")
        self._write_record(record, name, "" if trial == name else trial)

    def destroy(self, name: str) -> None:
        path = self._path(name)
        record = self._record()
        if name in (record.get("default_env"), self._booted()):
            raise BootError(self.name, f"environment {name} is booted or the default; it cannot be destroyed")
        if record.get("trial_env") == name:
            self.cancel_once()  # never leave GRUB a trial that no longer exists
        if name not in {n for _, n, _ in self._subvolumes()}:
            raise BootError(self.name, f"environment {name} does not exist")
        self._btrfs("subvolume", "delete", "--commit-after", str(path), what=f"cannot delete the environment {name}")

    def _new(self, name: str) -> Path:
        path = self._path(name)
        if os.path.lexists(path):
            raise BootError(self.name, f"environment {name} already exists")
        return path
