"""A localized change in a large incompressible file costs about its own size (issue 14).

Game assets (textures, audio, packed archives) are the bulk of a release and do not compress: a
delta that drags a window of unchanged bytes along with a change is as large as that window.
These bundles are made at the default level, as vendors make them, and applied to the base.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.sim.releases import write_release

MiB = 1 << 20
BIG = 200 * MiB


def _bundle_bytes(bundle: Path) -> int:
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def old_asset(tmp_path_factory) -> tuple[Path, bytes]:
    base = tmp_path_factory.mktemp("localized")
    release = write_release(base / "r1", {"game/reels": ("1", 1)})
    data = random.Random(14).randbytes(BIG)
    (base / "r1/games/reels/reels.pak").write_bytes(data)
    (base / "r1/games/reels/intro.pak").write_bytes(data[:8 * MiB])
    return release, data


def _make_and_apply(cli, trust, old_release: Path, tmp_path: Path, files: dict[str, bytes]) -> int:
    release = write_release(tmp_path / "r2", {"game/reels": ("2", 2)})
    for name, data in files.items():
        (tmp_path / "r2/games/reels" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "r2/games/reels" / name).write_bytes(data)
    bundle = tmp_path / "delta"
    cli("bundle", "make", "--release", release, "--base", old_release, "--key", trust.key("rel1"),
        "--key", trust.key("rel2"), "--out", bundle)
    result = cli("bundle", "verify", bundle, "--root", trust.root, "--base",
                 f"game/reels={old_release.parent / 'games/reels'}", "--work-dir", tmp_path)
    assert "every file matches the manifest" in result.stdout
    return _bundle_bytes(bundle)


def test_two_mib_rewritten_inside_a_200_mib_file_costs_under_2_5_mib(cli, trust, old_asset, tmp_path):
    old_release, old = old_asset
    new = bytearray(old)
    new[99 * MiB:101 * MiB] = random.Random(1).randbytes(2 * MiB)
    size = _make_and_apply(cli, trust, old_release, tmp_path, {"reels.pak": bytes(new), "intro.pak": old[:8 * MiB]})
    assert size < 2.5 * MiB, f"{size / MiB:.2f} MiB"


def test_an_insertion_and_a_cut_shift_nothing_else_into_the_delta(cli, trust, old_asset, tmp_path):
    old_release, old = old_asset
    inserted = random.Random(2).randbytes(MiB)
    # 1 MiB inserted at 30 MiB, 5 MiB cut at 150 MiB: every byte after them moves.
    new = old[:30 * MiB] + inserted + old[30 * MiB:150 * MiB] + old[155 * MiB:]
    size = _make_and_apply(cli, trust, old_release, tmp_path, {"reels.pak": new, "intro.pak": old[:8 * MiB]})
    assert size < 1.5 * MiB, f"{size / MiB:.2f} MiB"


def test_an_added_file_made_of_old_content_under_another_name_costs_its_new_bytes(cli, trust, old_asset, tmp_path):
    old_release, old = old_asset
    # A new archive holding 24 MiB from the middle of an old one, with 1 MiB of its own.
    added = old[120 * MiB:132 * MiB] + random.Random(3).randbytes(MiB) + old[60 * MiB:72 * MiB]
    size = _make_and_apply(cli, trust, old_release, tmp_path,
                           {"reels.pak": old, "intro.pak": old[:8 * MiB], "bonus/round.bin": added})
    assert size < 1.5 * MiB, f"{size / MiB:.2f} MiB"
