"""``bundle make``, ``verify`` and ``write`` when the release or the disk is awkward (issue 11, items 1
and 2): content that collides with a stored frame, a full or unwritable output, unreadable inputs,
symlink loops, partial outputs left by dead processes. Every failure is ``error: PATH: reason``
with a hint and exit 1 - never a traceback - and leaves no partial output.

Permission cases run the real command as ``nobody`` (``setpriv``): root reads everything.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from agent.format import codec
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from bundler import encoders
from tests.sim.device import STAGED, Cabinet, World
from tests.sim.releases import make_trust, put, write_release
from tests.sim.tools import BIN, run_cli
from tests.sim.disks import fill, loop_mounted

MiB = 1 << 20
TEXT = b"".join(b"reel %d stops on a cherry, pays %d credits\n" % (i, i % 97) for i in range(60_000))
_RNG = random.Random(4)
_WORDS = [bytes(_RNG.choice(b"abcdefghijklmnop") for _ in range(_RNG.randint(2, 9))) for _ in range(5000)]
# Word soup: its zstd frame is itself incompressible, so the frame's best encoding is raw.
SOUP = b" ".join(_RNG.choice(_WORDS) for _ in range(200_000))
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``bundle ARGS`` run by an unprivileged user, as a vendor engineer without rights would."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("running a command as another user needs root and setpriv (util-linux)")
    return subprocess.run([*NOBODY, str(BIN / "bundle"), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def assert_os_error(result: subprocess.CompletedProcess, path: object, reason: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert f"error: {path}: {reason}" in result.stderr, result.stderr
    assert "  hint: " in result.stderr, result.stderr


def leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if ".partial-" in name)


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Path:
    """A folder every user may reach (pytest's own are the owner's only), removed afterwards."""
    directory = tmp_path_factory.getbasetemp()
    for folder in [directory, *directory.parents]:
        if folder == Path(tempfile.gettempdir()) or folder == Path(folder.anchor):
            break
        folder.chmod(folder.stat().st_mode | 0o055)
    return directory


@pytest.fixture(scope="module")
def trust(tmp_path_factory, public):
    trust = make_trust(run_cli, tmp_path_factory.mktemp("trust"))
    subprocess.run(["chmod", "-R", "a+rX", str(trust.directory)], check=True)
    return trust


@pytest.fixture
def release(tmp_path, public) -> Path:
    """A small release readable by everyone (the permission cases take rights away from parts)."""
    path = write_release(tmp_path / "release", {"platform": ("1.0", 1)})
    put(tmp_path / "release/platform", "etc/motd", "welcome")
    put(tmp_path / "release/platform", "usr/share/reels.txt", TEXT)
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path)], check=True)
    return path


def make(trust, release: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    return run_cli("bundle", "make", "--release", release, "--key", trust.key("rel1"), "--out", out, "--level", "3",
                   *extra)


@pytest.fixture
def readable_key(trust, tmp_path) -> Path:
    """A copy of rel1's secret key that ``nobody`` may read (key files are created 0600)."""
    key = tmp_path / "keys/rel1.key"
    key.parent.mkdir()
    shutil.copy(trust.key("rel1"), key)
    key.chmod(0o644)
    key.parent.chmod(0o755)
    return key


# --- item 1: the same bytes as two encodings -----------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("world"))


@pytest.mark.parametrize("python", [[], ["-O"]], ids=["python", "python -O"])
def test_a_file_identical_to_a_stored_frame_is_bundled_and_installed(world, tmp_path, python):
    """A file next to its own zstd frame at the bundle's level: the frame is stored (zstd) for the
    first and is the best raw encoding of the second. Both used to become one object with two
    encodings: an AssertionError, and under ``python -O`` a bundle every device refused."""
    frame = codec.compress(SOUP, 3)  # what bundle make --level 3 stores for SOUP
    assert encoders.smallest(SOUP, 3) == ("zstd", frame) and encoders.smallest(frame, 3)[0] == "raw"
    name = f"r-frame{len(python)}"
    shutil.copytree(world.dir / "r2", world.dir / name, symlinks=True)
    write_release(world.dir / name, {"platform": ("13.3.0", 8), "game/lucky-sevens": ("2.0", 3),
                                     "game/fortune-wheel": ("1.0", 1)})
    put(world.dir / name / "platform", "usr/share/reels.txt", SOUP)
    put(world.dir / name / "platform", "usr/share/reels.txt.zst", frame)
    out = world.bundles / name
    keys = [arg for signer in ("rel1", "rel2") for arg in ("--key", str(world.keys / f"{signer}.key"))]
    made = subprocess.run([sys.executable, *python, "-c", "from bundler.cli import main; main()", "make",
                           "--release", str(world.release(name)), "--base", str(world.release("r2")), "--full",
                           "--out", str(out), "--level", "3", *keys], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    manifest = Manifest.from_stored(manifest_path(out).read_bytes())
    assert len({stored.id for stored in manifest.objects}) == len(manifest.objects)  # each id listed once
    verified = run_cli("bundle", "verify", out, "--root", world.root, "--apply")
    assert verified.returncode == 0, verified.stdout + verified.stderr

    cabinet = Cabinet(world, tmp_path / "device")
    cabinet.provision()
    installed = cabinet.agent("install", out)
    assert installed.returncode == STAGED, installed.stdout + installed.stderr
    staged = cabinet.environments_dir / "env-2" / cabinet.config.layout.component_path("platform")
    assert (staged / "usr/share/reels.txt").read_bytes() == SOUP
    assert (staged / "usr/share/reels.txt.zst").read_bytes() == frame


# --- item 2: every OSError is a message, nothing is left behind -----------------------------------


def test_a_full_disk_is_an_error_naming_the_file_and_leaves_nothing(trust, release, tmp_path):
    with loop_mounted("ext4", 16 * MiB, tmp_path) as disk:
        put(release.parent / "platform", "usr/share/noise.bin", os.urandom(12 * MiB))  # stored raw: 12 MiB
        fill(disk, leave=4 * MiB)
        result = make(trust, release, disk.path / "bundle")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert f"error: {disk.path}/.bundle.partial-" in result.stderr and "No space left on device" in result.stderr
        assert "hint: free space on that filesystem" in result.stderr, result.stderr
        assert leftovers(disk.path) == [] and not (disk.path / "bundle").exists()


def test_an_out_whose_parent_is_not_writable(readable_key, release, tmp_path):
    parent = tmp_path / "published"
    parent.mkdir(mode=0o755)
    result = as_nobody("make", "--release", release, "--key", readable_key, "--out", parent / "b", "--level", "3")
    assert_os_error(result, parent, "Permission denied")
    assert os.listdir(parent) == []


@pytest.mark.parametrize("what", ["file", "folder"])
def test_an_unreadable_part_of_the_release_tree(readable_key, release, tmp_path, what):
    unreadable = release.parent / "platform" / ("usr/share/reels.txt" if what == "file" else "etc")
    unreadable.chmod(0)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    result = as_nobody("make", "--release", release, "--key", readable_key, "--out", out / "b", "--level", "3")
    assert_os_error(result, unreadable, "Permission denied")
    assert os.listdir(out) == []


def test_a_component_path_that_is_a_symlink_loop(trust, release, tmp_path):
    os.symlink("loop-b", tmp_path / "loop-a")
    os.symlink("loop-a", tmp_path / "loop-b")
    text = release.read_text().replace('path = "platform"', 'path = "../loop-a"')
    release.write_text(text)
    result = make(trust, release, tmp_path / "b")
    assert_os_error(result, release.parent / "../loop-a", "Too many levels of symbolic links")
    assert leftovers(tmp_path) == []


@pytest.fixture
def bundle(trust, release, tmp_path) -> Path:
    made = make(trust, release, tmp_path / "b", "--key", trust.key("rel2"))
    assert made.returncode == 0, made.stderr
    subprocess.run(["chmod", "-R", "a+rX", str(tmp_path / "b"), str(trust.root.parent)], check=True)
    trust.root.parent.chmod(0o755)
    return tmp_path / "b"


def test_verify_and_write_with_an_unreadable_volume(trust, bundle, tmp_path):
    volume = next((bundle / "payload").iterdir())
    volume.chmod(0)
    verified = as_nobody("verify", bundle, "--root", trust.root)
    assert_os_error(verified, volume, "Permission denied")
    stick = tmp_path / "stick"
    stick.mkdir()
    stick.chmod(0o777)
    written = as_nobody("write", stick, bundle, "--root", trust.root)
    assert_os_error(written, volume, "Permission denied")
    assert os.listdir(stick) == []


def test_partial_outputs_of_dead_processes_are_removed_by_the_next_run(trust, release, tmp_path):
    out = tmp_path / "bundles"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # its id is free: nothing of it can still be writing
    stale = out / f".old.partial-{dead.pid}"
    (stale / "payload").mkdir(parents=True)
    (stale / "payload/.current").write_bytes(b"half a volume")
    running = out / f".other.partial-{os.getpid()}"  # a live process's (this one's): not ours to remove
    running.mkdir()
    assert make(trust, release, out / "new").returncode == 0
    assert not stale.exists() and running.is_dir()
    assert sorted(os.listdir(out)) == [running.name, "new"]


@pytest.mark.parametrize("inside", ["release", "base"])
def test_an_out_inside_a_release_or_base_tree_is_refused(trust, release, tmp_path, inside):
    """The partial folder would be scanned with the tree: carried to every device, or (in a base)
    making the delta's base a tree nobody has."""
    out = release.parent / "platform/bundles/b1"
    extra = ["--base", release] if inside == "base" else []
    if inside == "base":
        new = write_release(tmp_path / "new", {"platform": ("2.0", 2)})
        put(tmp_path / "new/platform", "etc/motd", "welcome back")
        result = make(trust, new, out, *extra)
    else:
        result = make(trust, release, out)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"--out {out} is inside the tree of component platform" in result.stderr, result.stderr
    assert not out.parent.exists() or leftovers(out.parent) == []


def test_a_file_rewritten_while_the_bundle_is_made_is_refused(trust, release, tmp_path, monkeypatch):
    """Hashed when the tree is scanned, read again to be encoded: a file rewritten in between (at
    the same size: a build still writing) would give a signed bundle every device refuses."""
    from bundler import make
    from bundler.cli.passphrase import load_secret_key
    from bundler.release import load_release
    from bundler.tree_stamps import TreeChanged
    planned = make._plan_component

    def planned_then_rewritten(*args, **kwargs):
        plan = planned(*args, **kwargs)
        (release.parent / "platform/etc/motd").write_text("WELCOME")
        return plan

    monkeypatch.setattr(make, "_plan_component", planned_then_rewritten)
    with pytest.raises(TreeChanged, match="etc/motd changed while the bundle was being made"):
        make.make_bundle(load_release(release), None, [load_secret_key(trust.key("rel1"), None)], tmp_path / "b")
    assert not (tmp_path / "b").exists() and leftovers(tmp_path) == []


def test_a_tree_changed_in_any_way_is_named(tmp_path):
    """The stamps keep 8 bytes per entry, not its path: a changed or added entry is still named,
    a removed one by its folder, and a new empty folder (folders are not stamped) is no change."""
    from bundler.tree_stamps import TreeChanged, check_unchanged, stamps
    tree = tmp_path / "tree"
    put(tree, "etc/motd", "welcome")
    put(tree, "etc/issue", "bench")
    put(tree, "top", "t")
    os.symlink("etc", tree / "link")
    cases = [(lambda: (tree / "etc/motd").write_text("WELCOME"), r"etc/motd changed while the bundle was being made$"),
             (lambda: put(tree, "etc/added", "new"), r"etc/added changed while"),
             (lambda: (tree / "etc/added").unlink(), r"an entry of etc/ was removed while the bundle was being made$"),
             (lambda: (tree / "top").unlink(), r"an entry of the top folder was removed"),
             (lambda: (os.unlink(tree / "link"), os.symlink("etc/", tree / "link")), r"link changed while"),
             (lambda: shutil.rmtree(tree / "etc"), r"an entry of etc/ was removed while the bundle was being made "
                                                   r"\(1 more\)$")]
    for change, message in cases:
        before = stamps(tree)
        check_unchanged(tree, before)
        change()
        with pytest.raises(TreeChanged, match=message):
            check_unchanged(tree, before)
    before = stamps(tree)
    (tree / "empty").mkdir()
    check_unchanged(tree, before)


def test_a_delta_without_the_bundlers_extras_says_what_to_install(trust, release, tmp_path):
    """A device's install lacks pyfastcdc and bsdiff4 (pyproject's bundler extra): making a delta
    there is refused with what to install, and leaves nothing."""
    second = write_release(tmp_path / "second", {"platform": ("2.0", 2)})
    put(tmp_path / "second/platform", "etc/motd", "welcome back")
    put(tmp_path / "second/platform", "usr/share/reels.txt", TEXT + b"one more reel\n")
    blocked = tmp_path / "blocked"
    put(blocked, "pyfastcdc/__init__.py", "raise ImportError('not installed')\n")
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(blocked)}
    result = subprocess.run([str(BIN / "bundle"), "make", "--release", str(second), "--base", str(release),
                             "--key", str(trust.key("rel1")), "--out", str(tmp_path / "delta")],
                            capture_output=True, text=True, env=environment, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "needs the Python package pyfastcdc" in result.stderr
    assert "pip install 'offline-bundle[bundler]'" in result.stderr
    assert not (tmp_path / "delta").exists() and not list(tmp_path.glob(".delta*"))
