"""`bundle verify` and `bundle inspect` of a bundle folder and of a whole stick, with the bundle ID
the agent prints, and a file rewritten at an existing path reported as changed, not added."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from agent.format.stick import bundle_id
from tests.sim.releases import make_trust, put, write_release
from tests.sim.tools import run_cli

KIB = 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """r1 -> r2: data.bin rewritten whole with new random bytes (no patch helps, so it is stored
    whole), notes.txt edited, new.bin added, old.txt removed. Bundles full-1 and d12; a stick with both."""
    d = tmp_path_factory.mktemp("world")
    make_trust(run_cli, d / "keys")
    for name, sequence, files in [
        ("r1", 1, {"data.bin": os.urandom(96 * KIB), "notes.txt": b"line\n" * 4000, "old.txt": b"old\n",
                   "same.txt": b"kept\n"}),
        ("r2", 2, {"data.bin": os.urandom(96 * KIB), "notes.txt": b"line\n" * 3999 + b"edit\n",
                   "new.bin": os.urandom(32 * KIB), "same.txt": b"kept\n"}),
    ]:
        write_release(d / name, {"platform": (f"{sequence}.0", sequence)})
        for path, data in files.items():
            put(d / name, f"platform/{path}", data)
    keys = ("--key", d / "keys/rel1.key", "--key", d / "keys/rel2.key", "--level", "3")
    run_cli("bundle", "make", "--release", d / "r1/release.toml", *keys, "--out", d / "full-1", check=True)
    run_cli("bundle", "make", "--release", d / "r2/release.toml", "--base", d / "r1/release.toml", *keys,
            "--out", d / "d12", check=True)
    (d / "stick").mkdir()
    run_cli("bundle", "write", d / "stick", d / "full-1", d / "d12", "--root", d / "keys/root.json", check=True)
    return d


def _id(bundle: Path) -> str:
    return bundle_id((bundle / "manifest.json.zst").read_bytes())


def _platform(report: dict) -> dict:
    [component] = report["components"]
    return component


def _kinds(component: dict) -> dict:
    return {kind: numbers["files"] for kind, numbers in component["files"].items()}


def test_inspect_shows_the_bundle_id_the_agent_prints(world, cli):
    result = cli("bundle", "inspect", world / "d12", check=True)
    assert result.stdout.splitlines()[0] == f"bundle {_id(world / 'd12')}"
    report = json.loads(cli("bundle", "inspect", world / "d12", "--json", check=True).stdout)
    assert report["bundle_id"] == _id(world / "d12")
    # the same ID names the bundle's folder on the stick, which is what the agent prints
    assert (world / "stick/demo-cabinet/bundles" / report["bundle_id"]).is_dir()


def test_a_file_rewritten_whole_counts_as_changed_when_make_knows_the_base(world, cli, tmp_path):
    report = json.loads(cli("bundle", "make", "--release", world / "r2/release.toml", "--base",
                            world / "r1/release.toml", "--key", world / "keys/rel1.key", "--key",
                            world / "keys/rel2.key", "--level", "3", "--out", tmp_path / "again", "--json",
                            check=True).stdout)
    component = _platform(report)
    assert _kinds(component) == {"unchanged": 1, "moved": 0, "changed": 2, "added": 1}
    assert {c["path"]: c["kind"] for c in component["largest_changes"]}["data.bin"] == "changed"
    assert report["bundle_id"] == _id(tmp_path / "again")


def test_inspect_with_the_base_tree_tells_changed_from_added(world, cli):
    report = json.loads(cli("bundle", "inspect", world / "d12", "--base", f"platform={world / 'r1/platform'}",
                            "--json", check=True).stdout)
    component = _platform(report)
    assert _kinds(component) == {"unchanged": 1, "moved": 0, "changed": 2, "added": 1}
    assert component["base_listed"] is True
    kinds = {c["path"]: c["kind"] for c in component["largest_changes"]}
    assert kinds["data.bin"] == "changed" and kinds["new.bin"] == "added"


def test_inspect_without_the_base_says_what_it_cannot_know(world, cli):
    """The manifest names no base path for a file stored whole: inspect says so instead of guessing."""
    result = cli("bundle", "inspect", world / "d12", check=True)
    component = _platform(json.loads(cli("bundle", "inspect", world / "d12", "--json", check=True).stdout))
    assert component["base_listed"] is False
    assert {c["path"]: c["kind"] for c in component["largest_changes"]}["notes.txt"] == "changed"  # patched
    assert "give --base to tell them apart" in result.stdout


def test_full_bundle_with_base_tree(world, cli):
    report = json.loads(cli("bundle", "inspect", world / "full-1", "--base", f"platform={world / 'r1/platform'}",
                            "--json", check=True).stdout)
    assert _kinds(_platform(report))["added"] == 0


def test_inspect_a_stick_lists_every_bundle(world, cli):
    report = json.loads(cli("bundle", "inspect", world / "stick", "--json", check=True).stdout)
    ids = sorted(b["bundle_id"] for b in report["bundles"])
    assert ids == sorted([_id(world / "full-1"), _id(world / "d12")])
    assert report["ok"] is True and report["incomplete"] == []
    text = cli("bundle", "inspect", world / "stick", "--root", world / "keys/root.json", check=True).stdout
    assert f"bundle {_id(world / 'full-1')}" in text and f"bundle {_id(world / 'd12')}" in text
    assert text.count("signers: 2 of 2 required") == 2


def test_verify_a_stick_checks_every_bundle(world, cli):
    result = cli("bundle", "verify", world / "stick", "--root", world / "keys/root.json", check=True)
    for name in ("full-1", "d12"):
        assert f"valid bundle {_id(world / name)} for demo-cabinet" in result.stdout
    report = json.loads(cli("bundle", "verify", world / "stick", "--root", world / "keys/root.json",
                            "--base", f"platform={world / 'r1/platform'}", "--json", check=True).stdout)
    outcome = {b["bundle_id"]: b["components"]["platform"] for b in report["bundles"]}
    assert outcome[_id(world / "d12")].startswith("applied onto")  # the delta whose base was given
    assert outcome[_id(world / "full-1")].startswith("applied")
    # On a stick, a tree that is not a delta's base is reported for that bundle, not fatal for all.
    report = json.loads(cli("bundle", "verify", world / "stick", "--root", world / "keys/root.json",
                            "--base", f"platform={world / 'r2/platform'}", "--json", check=True).stdout)
    outcome = {b["bundle_id"]: b["components"]["platform"] for b in report["bundles"]}
    assert "is not the base of this delta" in outcome[_id(world / "d12")]


def test_verify_of_a_bundle_folder_names_its_id(world, cli):
    result = cli("bundle", "verify", world / "d12", "--root", world / "keys/root.json", check=True)
    assert f"valid bundle {_id(world / 'd12')} for demo-cabinet" in result.stdout


def test_a_damaged_bundle_on_a_stick_does_not_hide_the_others(world, cli, tmp_path):
    stick = tmp_path / "stick"
    shutil.copytree(world / "stick", stick)
    damaged = stick / "demo-cabinet/bundles" / _id(world / "d12")
    volume = next((damaged / "payload").iterdir())
    data = bytearray(volume.read_bytes())
    data[len(data) // 2] ^= 1
    volume.write_bytes(bytes(data))
    result = cli("bundle", "verify", stick, "--root", world / "keys/root.json")
    assert result.returncode == 3, result.stderr
    assert f"valid bundle {_id(world / 'full-1')}" in result.stdout
    assert f"refused: {damaged}" in result.stderr and "Traceback" not in result.stderr
    assert f"1 of 2 bundles on the stick could not be used ({damaged.name}: " in result.stderr
    report = json.loads(cli("bundle", "verify", stick, "--root", world / "keys/root.json", "--json").stdout)
    assert report["ok"] is False and report["exit"] == 3 and damaged.name in report["error"]
    # an interrupted write (no COMPLETE marker) is reported as incomplete, as devices ignore it
    (damaged / "COMPLETE").unlink()
    result = cli("bundle", "inspect", stick)
    assert result.returncode == 0 and f"incomplete (devices ignore it): {damaged}" in result.stdout


def test_neither_bundle_nor_stick(cli, tmp_path):
    result = cli("bundle", "inspect", tmp_path)
    assert result.returncode == 1 and "no bundle here" in result.stderr and "Traceback" not in result.stderr


def test_verify_a_stick_follows_the_sticks_own_root_rotation(world, cli, tmp_path):
    """As a device does: a bundle signed under root version 2 verifies from version 1 when the stick
    carries version 2 (and not from version 1 alone, as a bundle folder)."""
    keys = world / "keys"
    cli("bundle", "root", "rotate", "--from", keys / "root.json", "--out", tmp_path / "root-2.json",
        "--remove-signer", "rel2", "--add-signer", keys / "rel3.pub", check=True)
    cli("bundle", "root", "sign", tmp_path / "root-2.json", "--key", keys / "root1.key", check=True)
    cli("bundle", "make", "--release", world / "r1/release.toml", "--key", keys / "rel1.key", "--key",
        keys / "rel3.key", "--level", "3", "--out", tmp_path / "new-signers", check=True)
    refused = cli("bundle", "verify", tmp_path / "new-signers", "--root", keys / "root.json")
    assert refused.returncode == 3 and "missing: rel2" in refused.stderr
    (tmp_path / "stick").mkdir()
    cli("bundle", "write", tmp_path / "stick", tmp_path / "new-signers", "--root", keys / "root.json",
        "--root", tmp_path / "root-2.json", check=True)
    result = cli("bundle", "verify", tmp_path / "stick", "--root", keys / "root.json")
    assert result.returncode == 0, result.stderr
    assert f"valid bundle {_id(tmp_path / 'new-signers')}" in result.stdout and "rel3" in result.stdout
