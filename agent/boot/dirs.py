"""``dirs``: environments are directories under one root, chosen by a small durable boot record.

    ROOT/<name>/        an environment's tree
    ROOT/boot.json      {"default": name, "next_once": name or null, "booted": name or null}
    ROOT/made           the highest N of the env-N this backend has made (never made again)

``bundle-agent boot`` plays the boot loader: it consumes the one-time choice durably *before*
using it, so a trial that crashes can never be booted twice, and records what was booted. This
is also a real deployment mode for an application or games partition a launcher runs from.
Clones use reflinks where the filesystem has them (btrfs, xfs: ``cp --reflink=auto``), a plain
copy elsewhere.

Identity: the name. The agent's environments are ``env-N`` with N above every number made before
(``ROOT/made``, written before the directory is), so a name is never made twice and a name's
content is never replaced by another environment's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from agent.boot.base import BootBackend, BootError, Environment, agent_number, next_agent_name
from agent.mounts import mount_points_inside
from agent.reflink import reflink
from agent.system_root import under
from keys.crashpoint import crashpoint
from keys.files import write_atomic

RECORD = "boot.json"
MADE = "made"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class DirsBackend(BootBackend):
    name = "dirs"
    settings = ("root",)
    plays_boot_loader = True

    def __init__(self, settings: dict, system_root: Path = Path("/")):
        unknown = sorted(set(settings) - {"root"})
        if unknown:
            raise BootError(self.name, f"unknown [boot] setting(s) {', '.join(unknown)}",
                            hint="this backend reads root, the directory holding the environments (docs/AGENT.md)")
        if not isinstance(settings.get("root"), str) or not settings["root"]:
            raise BootError(self.name, "[boot] root (the directory holding the environments) is required, as a path",
                            hint='for example root = "/opt/environments"')
        self.root = under(system_root, settings["root"])

    def clone_shares_blocks(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryFile(dir=self.root) as source, tempfile.TemporaryFile(dir=self.root) as copy:
                source.write(b"probe")
                source.flush()
                return reflink(source.fileno(), copy.fileno())
        except OSError:
            return False

    def space_path(self) -> Path:
        return self.root

    def holds(self, path: Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root.resolve())

    # --- the boot record -------------------------------------------------------------------

    def _record(self) -> dict:
        path = self.root / RECORD
        try:
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict):
                raise ValueError("not an object")
            if not all(record.get(key) is None or (isinstance(record[key], str) and _NAME.fullmatch(record[key]))
                       for key in ("default", "next_once", "booted")):
                raise ValueError("not environment names")
        except FileNotFoundError:
            return {"default": None, "next_once": None, "booted": None}
        except ValueError:
            # A damaged record must never stop the machine from booting: boot() falls back to the
            # committed environment (else the newest), keep the damaged file for the technician.
            shutil.copyfile(path, path.with_name(RECORD + ".corrupt"))
            names = self._names()
            return {"default": names[-1] if names else None, "next_once": None, "booted": None, "recovered": True}
        return {key: record.get(key) for key in ("default", "next_once", "booted")}

    def _save(self, record: dict) -> None:
        write_atomic(self.root / RECORD, (json.dumps(record, sort_keys=True) + "\n").encode())

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and not p.is_symlink() and _NAME.fullmatch(p.name)]
        return sorted(names, key=lambda n: (len(n), n))

    def _check_name(self, name: str) -> Path:
        if not _NAME.fullmatch(name):
            raise BootError(self.name, f"invalid environment name {name!r}")
        return self.root / name

    # --- the interface ---------------------------------------------------------------------

    def environments(self) -> list[Environment]:
        record = self._record()
        return [Environment(name=n, identity=n, path=self.root / n, booted_now=record["booted"] == n,
                            default=record["default"] == n, next_once=record["next_once"] == n,
                            made_by_agent=agent_number(n) is not None)
                for n in self._names()]

    def _made(self) -> int:
        try:
            return int((self.root / MADE).read_text())
        except (FileNotFoundError, ValueError):
            return 0  # lost: the directories still there give the floor

    def new_name(self) -> str:
        return next_agent_name(self._names(), self._made())

    def _reserve(self, name: str) -> Path:
        """Refuses an existing name; records an env-N as made before its directory exists, so a
        crash in between can only skip a number, never let one be made twice."""
        path = self._check_name(name)
        if path.exists():
            raise BootError(self.name, f"environment {name} already exists")
        number = agent_number(name)
        if number is not None:
            if number <= self._made():
                raise BootError(self.name, f"environment {name} was made before; names are never made twice",
                                hint="take the name from new_name()")
            self.root.mkdir(parents=True, exist_ok=True)
            write_atomic(self.root / MADE, f"{number}\n".encode())
        return path

    def create_empty(self, name: str) -> Path:
        path = self._reserve(name)
        self.root.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=0o755)
        return path

    def clone(self, source: str, name: str) -> Path:
        origin = self._check_name(source)
        path = self._reserve(name)
        crashpoint(f"clone {name}")
        # -x: the environment, not what the running system mounted inside it (what a snapshot holds).
        result = subprocess.run(["cp", "-a", "-x", "--reflink=auto", str(origin), str(path)], capture_output=True,
                                text=True)
        if result.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            raise BootError(self.name, f"cannot clone {source} to {name}: {result.stderr.strip()}",
                            hint="check free space on the environments' filesystem")
        return path

    def activate_once(self, name: str) -> None:
        self._check_name(name)
        record = self._record()
        record["next_once"] = name
        self._save(record)

    def cancel_once(self) -> None:
        record = self._record()
        if record["next_once"] is not None:
            record["next_once"] = None
            self._save(record)

    def commit(self, name: str) -> None:
        if not self._check_name(name).is_dir():
            raise BootError(self.name, f"environment {name} does not exist")
        record = self._record()
        record["default"] = name
        if record["next_once"] == name:
            record["next_once"] = None
        self._save(record)

    def destroy(self, name: str) -> None:
        record = self._record()
        if name in (record["default"], record["booted"]):
            raise BootError(self.name, f"environment {name} is booted or the default; it cannot be destroyed")
        path = self._check_name(name)
        mounted = next(mount_points_inside(path), None)
        if mounted is not None:  # rmtree would empty that filesystem too: a launcher's data, say
            raise BootError(self.name, f"cannot destroy {name}: another filesystem is mounted at {mounted}",
                            hint=f"unmount it (umount {mounted}); the agent removes {name} the next time it prunes")
        if record["next_once"] == name:
            self.cancel_once()
        shutil.rmtree(path, ignore_errors=True)

    # --- the boot loader's part ------------------------------------------------------------

    def boot(self, committed: str | None = None) -> Environment:
        """Choose the environment to start: the one-time choice (consumed durably first), else the
        default. A damaged record falls back to ``committed`` (what the agent's state names), else
        the newest environment. Raises BootError when there is nothing to boot."""
        record = self._record()
        if record.get("recovered") and committed and (self.root / committed).is_dir():
            record["default"] = committed  # not the newest: that may be a failed or half-built one
        choice = record["next_once"] or record["default"]
        if record["default"] is None and not record.get("recovered"):
            # No record yet: nothing was ever committed (a provisioning cut short is half-built).
            raise BootError(self.name, f"no committed environment under {self.root}",
                            hint="provision the machine: bundle-agent provision BUNDLE")
        if choice is None or not (self.root / choice).is_dir():
            names = self._names()
            if not names:
                raise BootError(self.name, f"no environment to boot under {self.root}",
                                hint="provision the machine: bundle-agent provision BUNDLE")
            choice = record["default"] if record["default"] in names else names[-1]
        record.update(next_once=None, booted=choice)
        record.pop("recovered", None)  # written back whole: the record is repaired
        self._save(record)  # durable before the choice is used: a crashing trial is never retried
        return self.get(choice)
