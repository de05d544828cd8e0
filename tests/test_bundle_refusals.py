"""Every kind of input `bundle make` must refuse, each with a clear message and no output left."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from tests.sim.disks import tmpfs_mounted
from tests.sim.releases import put, write_release


def _release(tmp_path: Path, game: bool = False) -> Path:
    components = {"platform": ("1.0", 1)}
    if game:
        components["game/lucky-sevens"] = ("1.0", 1)
    release = write_release(tmp_path / "r", components)
    put(tmp_path / "r/platform", "bin/tool", "tool")
    if game:
        put(tmp_path / "r/games/lucky-sevens", "reels.dat", "reels")
    return release


def _make(cli, trust, release: Path, out: Path, *extra, check: bool = False):
    return cli("bundle", "make", "--release", release, "--key", trust.key("rel1"), "--out", out, "--level", "3",
               *extra, check=check)


def _game(tmp_path: Path) -> Path:
    return tmp_path / "r/games/lucky-sevens"


REFUSALS = {
    "fifo": (lambda t: os.mkfifo(t / "r/platform/bin/pipe"), False, "'bin/pipe' is a FIFO"),
    "socket": (lambda t: __import__("socket").socket(1).bind(str(t / "r/platform/sock")), False, "'sock' is a socket"),
    "device node": (lambda t: os.mknod(t / "r/platform/null", 0o600 | 0o020000, os.makedev(1, 3)), False,
                    "'null' is a device node"),
    "non-UTF-8 name": (lambda t: open(os.path.join(os.fsencode(t / "r/platform"), b"bad\xff"), "w").close(), False,
                       "is not valid UTF-8"),
    "non-UTF-8 link target": (lambda t: os.symlink(b"caf\xe9", os.path.join(os.fsencode(t / "r/platform"), b"link")),
                              False, "'link' is a symlink whose target b'caf\\xe9' is not valid UTF-8"),
    "setuid in a game": (lambda t: os.chmod(put(_game(t), "run", "x"), 0o4755), True, "has a setuid/setgid bit"),
    "world-writable file in a game": (lambda t: os.chmod(put(_game(t), "run", "x"), 0o666), True,
                                      "'run' is writable by every user (mode 0666)"),
    "world-writable folder in a game": (lambda t: os.chmod(_game(t), 0o777), True, "'.' is writable by every user"),
    "absolute symlink in a game": (lambda t: os.symlink("/etc/shadow", _game(t) / "link"), True, "is absolute"),
    "symlink leaving a game": (lambda t: os.symlink("../../../etc", _game(t) / "up"), True,
                               "resolves outside its component"),
    "symlink chain leaving a game": (lambda t: (os.makedirs(_game(t) / "a/b"), os.symlink("../..", _game(t) / "a/b/s"),
                                               os.symlink("b/s/../x", _game(t) / "a/e")), True,
                                     "resolves outside its component"),
    "symlink loop in a game": (lambda t: (os.symlink("l2", _game(t) / "l1"), os.symlink("l1", _game(t) / "l2"),
                                          os.symlink("l1/x", _game(t) / "via")), True, "symlink loop"),
    "case collision in a game": (lambda t: (put(_game(t), "Reels.dat", "x")), True, "case folding"),
    "unicode normalisation collision": (lambda t: (put(t / "r/platform", "caf\u00e9", "a"),
                                                   put(t / "r/platform", "cafe\u0301", "b")), False,
                                        "Unicode normalisation"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_make_refuses(cli, trust, tmp_path, case):
    setup, game, message = REFUSALS[case]
    release = _release(tmp_path, game)
    setup(tmp_path)
    result = _make(cli, trust, release, tmp_path / "out")
    assert result.returncode == 3, result.stdout + result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # no partial output left


def test_game_ownership_is_normalised_not_refused(cli, trust, tmp_path):
    release = _release(tmp_path, game=True)
    os.chown(_game(tmp_path) / "reels.dat", 1000, 1000)
    _make(cli, trust, release, tmp_path / "out", check=True)
    manifest = Manifest.from_stored(manifest_path(tmp_path / "out").read_bytes())
    owners = {(e.uid, e.gid) for e in manifest.component("game/lucky-sevens").entries if e.uid is not None}
    assert owners == {(0, 0)}


def test_unchanged_sequence_with_changed_tree(cli, trust, tmp_path):
    base = _release(tmp_path)
    shutil.copytree(tmp_path / "r", tmp_path / "r2")
    put(tmp_path / "r2/platform", "bin/tool", "changed")
    result = cli("bundle", "make", "--release", tmp_path / "r2/release.toml", "--base", base,
                 "--key", trust.key("rel1"), "--out", tmp_path / "out")
    assert result.returncode == 3 and "changed but its sequence is still 1" in result.stderr
    assert "raise the sequence" in result.stderr


def test_nothing_changed(cli, trust, tmp_path):
    base = _release(tmp_path)
    result = cli("bundle", "make", "--release", base, "--base", base, "--key", trust.key("rel1"),
                 "--out", tmp_path / "out")
    assert result.returncode == 3 and "no component changed" in result.stderr


def test_downgrade_needs_explicit_permission(cli, trust, tmp_path):
    base = _release(tmp_path)
    shutil.copytree(tmp_path / "r", tmp_path / "old")
    write_release(tmp_path / "old", {"platform": ("0.9", 0)})
    args = ["bundle", "make", "--release", tmp_path / "old/release.toml", "--base", base, "--key", trust.key("rel1"),
            "--level", "3"]
    result = cli(*args, "--out", tmp_path / "out")
    assert result.returncode == 3 and "--allow-downgrade platform=1" in result.stderr
    cli(*args, "--out", tmp_path / "out", "--allow-downgrade", "platform=1", check=True)


def test_output_is_never_overwritten(cli, trust, tmp_path):
    release = _release(tmp_path)
    (tmp_path / "out").mkdir()
    result = _make(cli, trust, release, tmp_path / "out")
    assert result.returncode == 1 and "already exists" in result.stderr


def test_a_filesystem_mounted_inside_a_tree_is_refused_before_it_is_read(cli, trust, tmp_path):
    """A chroot's /proc left mounted after the release was built: read as files, it never ends.
    A component's own folder may be a mount point."""
    release = _release(tmp_path, game=True)
    with tmpfs_mounted(_game(tmp_path)):
        put(_game(tmp_path), "reels.dat", "reels")
        proc = tmp_path / "r/platform/proc"
        proc.mkdir()
        mounted = subprocess.run(["mount", "-t", "proc", "proc", proc], capture_output=True, text=True)
        assert mounted.returncode == 0, mounted.stderr
        try:
            result = _make(cli, trust, release, tmp_path / "out")
        finally:
            subprocess.run(["umount", proc], check=True)
        assert result.returncode == 3, result.stdout + result.stderr
        assert f"{proc}: another filesystem is mounted here, inside the release tree of component platform" \
            in result.stderr
        assert "hint: unmount it (a chroot's /proc, /sys or /dev?)" in result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
        _make(cli, trust, release, tmp_path / "out", check=True)


@pytest.mark.parametrize("text, message", [
    ("product = 'x'\n", "'hardware' must list"),
    ("product = 'x'\nhardware = ['a']\n", "no [components.NAME] tables"),
    ("product = 'x'\nhardware = ['a']\n[components.kernel]\npath='platform'\nversion='1'\nsequence=1\n",
     "names are 'platform' or 'game/<id>'"),
    ("product = 'x'\nhardware = ['a']\n[components.platform]\npath='platform'\nversion='1'\nsequence='1'\n",
     "'sequence' must be a non-negative integer"),
    ("product = 'x'\nhardware = ['a']\n[components.platform]\npath='missing'\nversion='1'\nsequence=1\n",
     "is not a directory"),
    ("product = 'x'\nhardware = ['a']\n[components.\"game/g\"]\npath='platform'\nversion='1'\nsequence=1\n"
     "policy='system'\n", "policy must be 'content'"),
    ("product = [\n", "not valid TOML"),
    ("product = 'cab:1'\nhardware = ['a']\n", "cannot be a folder name on a FAT stick"),
])
def test_bad_release_descriptions(cli, trust, tmp_path, text, message):
    (tmp_path / "platform").mkdir()
    (tmp_path / "release.toml").write_text(text)
    result = _make(cli, trust, tmp_path / "release.toml", tmp_path / "out")
    assert result.returncode == 3 and message in result.stderr and "release.toml" in result.stderr


def test_volume_size_over_the_fat32_limit(cli, trust, tmp_path):
    result = _make(cli, trust, _release(tmp_path), tmp_path / "out", "--volume-size", "4G")
    assert result.returncode == 2 and "FAT32" in result.stderr
