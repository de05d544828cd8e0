"""Building release trees and release.toml files for tests, and a trust setup made with the CLI."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path


def write_release(directory: Path, components: dict[str, tuple[str, int]], *, product: str = "demo-cabinet",
                  hardware: tuple[str, ...] = ("cab-a", "cab-b")) -> Path:
    """release.toml in ``directory``; each component NAME maps to (version, sequence) and its tree
    lives at ``directory/platform`` or ``directory/games/<id>``."""
    lines = [f'product = "{product}"', "hardware = [" + ", ".join(f'"{h}"' for h in hardware) + "]"]
    for name, (version, sequence) in components.items():
        tree = "platform" if name == "platform" else f"games/{name.split('/', 1)[1]}"
        (directory / tree).mkdir(parents=True, exist_ok=True)
        lines += [f'[components."{name}"]', f'path = "{tree}"', f'version = "{version}"', f"sequence = {sequence}"]
    path = directory / "release.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def put(root: Path, relative: str, data: bytes | str = b"", mode: int | None = None) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mode is not None:
        os.chmod(path, mode)
    return path


@dataclass
class Trust:
    """Keys rel1, rel2 (release signers, threshold 2) and a signed root.json, made with the CLI."""

    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root.json"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"


def make_trust(cli, directory: Path, threshold: int = 2) -> Trust:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("root1", "rel1", "rel2", "rel3"):
        cli("bundle", "keys", "new", name, "--dir", directory, "--no-passphrase", check=True)
    cli("bundle", "root", "new", "--out", directory / "root.json", "--root-key", directory / "root1.pub",
        "--signer", directory / "rel1.pub", "--signer", directory / "rel2.pub", "--threshold", str(threshold),
        check=True)
    cli("bundle", "root", "sign", directory / "root.json", "--key", directory / "root1.key", check=True)
    return Trust(directory)


def word_soup_release(directory: Path, cli, *, file_bytes: int, seed: int) -> tuple[Path, Path]:
    """A platform of two files of word soup (compressible, not trivially): slow to bundle at level
    19, for tests that watch a long ``bundle make``. Returns release.toml and a signing key."""
    trust = make_trust(cli, directory / "trust")
    release = write_release(directory / "release", {"platform": ("1.0", 1)})
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(20_000)]
    for number in range(2):
        soup = b" ".join(rng.choice(words) for _ in range(file_bytes // 6 + 1))
        put(release.parent / "platform", f"usr/share/assets/pack{number}.dat", soup[:file_bytes])
    return release, trust.key("rel1")
