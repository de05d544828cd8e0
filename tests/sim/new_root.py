"""A vendor who lost the root keys: a new trust root made with the real tools, put on a stick with a
technician token that allows replacing the machine's root with exactly it (docs/TRUST.md,
"Replacing the trust root")."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tests.sim.device import World
from tests.sim.tools import run_cli

PRODUCT, SERIAL = "demo-cabinet", "SN0001"


@dataclass(frozen=True)
class NewRoot:
    """``root``: the new root.json, signed by its own root key (``keys/newroot.key``); its only
    release signer is ``keys/newrel.key``."""

    keys: Path
    root: Path

    @classmethod
    def make(cls, directory: Path, version: int, *, signed: bool = True) -> "NewRoot":
        keys = directory / "keys"
        keys.mkdir(parents=True)
        for name in ("newroot", "newrel"):
            run_cli("bundle", "keys", "new", name, "--dir", keys, "--no-passphrase", check=True)
        root = directory / "new-root.json"
        run_cli("bundle", "root", "new", "--out", root, "--version", str(version), "--root-key", keys / "newroot.pub",
                "--signer", keys / "newrel.pub", check=True)
        if signed:
            run_cli("bundle", "root", "sign", root, "--key", keys / "newroot.key", check=True)
        return cls(keys, root)

    def files(self) -> list[Path]:
        """root.json and its signature files."""
        return sorted(self.root.parent.glob(self.root.name + "*"))

    def put(self, stick: Path, version: int) -> Path:
        """Copy the root and its signatures to STICK/<product>/trust/root-<version>.json[...]."""
        folder = stick / PRODUCT / "trust"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"root-{version}.json"
        for source in self.files():
            shutil.copy(source, folder / (target.name + source.name[len(self.root.name):]))
        return target


def put_token(world: World, directory: Path, stick: Path, *allow: str, trust_root: Path | None = None) -> str:
    """A token made by `bundle token make`, signed by both release signers of the world's root, moved
    to the stick. Returns its id."""
    out = directory / "tokens-made"
    shutil.rmtree(out, ignore_errors=True)
    args = ["bundle", "token", "make", "--product", PRODUCT, "--serial", SERIAL, "--reason", "root keys lost",
            "--key", world.keys / "rel1.key", "--key", world.keys / "rel2.key", "--out", out]
    for action in allow:
        args += ["--allow", action]
    if trust_root is not None:
        args += ["--trust-root", trust_root]
    run_cli(*args, check=True)
    folder = stick / PRODUCT / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    made = sorted(out.iterdir())
    for path in made:
        shutil.move(str(path), folder / path.name)
    return next(p.name for p in made if p.name.endswith(".json"))[:-len(".json")]
