"""A backend with two reusable slots, A and B: how an A/B device (RAUC, Android) boots.

It is one module implementing agent/boot/base.py's interface, as a new backend is, and exists to
prove that the agent never trusts a name alone: every update overwrites the inactive slot, so a
name that was committed once later holds other content. The identity is the slot with the
number of times its content was written (``a#2``).

    ROOT/a/, ROOT/b/        the slots' trees (absent when a slot is empty)
    ROOT/record.json        {"default", "next_once", "booted", "written": {"a": n, "b": n}}
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from agent.boot.base import BootBackend, BootError, Environment
from agent.system_root import under
from keys.files import write_atomic

SLOTS = ("a", "b")


class AbSlotsBackend(BootBackend):
    name = "ab-slots"
    plays_boot_loader = True

    def __init__(self, settings: dict, system_root: Path = Path("/")):
        self.root = under(system_root, settings["root"])

    def _record(self) -> dict:
        try:
            return json.loads((self.root / "record.json").read_bytes())
        except FileNotFoundError:
            return {"default": None, "next_once": None, "booted": None, "written": {slot: 0 for slot in SLOTS}}

    def _save(self, record: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / "record.json", json.dumps(record, sort_keys=True).encode())

    def environments(self) -> list[Environment]:
        record = self._record()
        return [Environment(name=slot, identity=f"{slot}#{record['written'][slot]}", path=self.root / slot,
                            booted_now=record["booted"] == slot, default=record["default"] == slot,
                            next_once=record["next_once"] == slot)
                for slot in SLOTS if (self.root / slot).is_dir()]

    def new_name(self) -> str:
        record = self._record()
        free = [slot for slot in SLOTS if slot not in (record["booted"], record["default"])]
        if not free:
            raise BootError(self.name, "both slots are in use")
        return free[0]

    def _overwrite(self, name: str) -> Path:
        record = self._record()
        if name not in SLOTS or name in (record["booted"], record["default"]):
            raise BootError(self.name, f"slot {name!r} cannot be written now")
        record["written"][name] += 1  # before a byte changes: a half-written slot is never the old one
        if record["next_once"] == name:
            record["next_once"] = None
        self._save(record)
        shutil.rmtree(self.root / name, ignore_errors=True)
        return self.root / name

    def create_empty(self, name: str) -> Path:
        path = self._overwrite(name)
        path.mkdir()
        return path

    def clone(self, source: str, name: str) -> Path:
        path = self._overwrite(name)
        subprocess.run(["cp", "-a", str(self.root / source), str(path)], check=True)
        return path

    def _set(self, **changes) -> None:
        record = self._record()
        record.update(changes)
        self._save(record)

    def activate_once(self, name: str) -> None:
        self._set(next_once=name)

    def cancel_once(self) -> None:
        self._set(next_once=None)

    def commit(self, name: str) -> None:
        record = self._record()
        self._set(default=name, next_once=None if record["next_once"] == name else record["next_once"])

    def destroy(self, name: str) -> None:
        self._overwrite(name)  # an emptied slot: its next content has another identity

    def boot(self, committed: str | None = None) -> Environment:
        record = self._record()
        choice = record["next_once"] or record["default"]
        self._set(next_once=None, booted=choice)
        return self.get(choice)
