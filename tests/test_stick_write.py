"""``bundle write`` as an operator runs it: real bundles, real files, real processes (docs/STICK.md).

Two things are done in-process because a real stick cannot be made to misbehave on cue: a byte
flipped on the stick between the copy and the read-back, and a FAT32 size limit small enough to
hit without writing 4 GiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.sim.disks import tmpfs_mounted
from tests.sim.tools import debian_tools
from click.testing import CliRunner

from agent import medium
from agent.format import bundle_dir, stick
from bundler import stick_space, stick_write
from bundler.cli import main
from tests.sim.tools import run_cli

PRODUCT = "demo-cabinet"


def release(root: Path, name: str, files: dict[str, bytes], version: int, product: str = PRODUCT) -> Path:
    tree = root / name / "platform"
    tree.mkdir(parents=True)
    for path, data in files.items():
        (tree / path).write_bytes(data)
    toml = root / name / "release.toml"
    toml.write_text(f'product = "{product}"\nhardware = ["cab-a"]\n[components.platform]\npath = "platform"\n'
                    f'version = "{version}"\nsequence = {version}\n')
    return toml


@dataclass
class World:
    keys: Path
    bundles: Path

    @property
    def root1(self) -> Path:
        return self.keys / "root.json"

    @property
    def root2(self) -> Path:
        return self.keys / "root-2.json"

    def bundle(self, name: str) -> Path:
        return self.bundles / name


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """root.json (rel1 + rel2, 2 of 2) and its rotation root-2.json (adds rel3); bundles:
    full-1, d12 (delta from 1), weak (full-1 signed by rel1 only), big (3 MiB of noise), other (another product)."""
    base = tmp_path_factory.mktemp("world")
    keys, releases, bundles = base / "keys", base / "releases", base / "bundles"
    for name in ("root1", "rel1", "rel2", "rel3"):
        run_cli("bundle", "keys", "new", name, "--dir", keys, "--no-passphrase", check=True)
    run_cli("bundle", "root", "new", "--out", keys / "root.json", "--root-key", keys / "root1.pub",
            "--signer", keys / "rel1.pub", "--signer", keys / "rel2.pub", "--threshold", "2", check=True)
    run_cli("bundle", "root", "sign", keys / "root.json", "--key", keys / "root1.key", check=True)
    run_cli("bundle", "root", "rotate", "--from", keys / "root.json", "--out", keys / "root-2.json",
            "--add-signer", keys / "rel3.pub", check=True)
    run_cli("bundle", "root", "sign", keys / "root-2.json", "--key", keys / "root1.key", check=True)
    r1 = release(releases, "r1", {"a": b"one\n", "config": b"x" * 5000}, 1)
    r2 = release(releases, "r2", {"a": b"two\n", "b": b"bee\n", "config": b"x" * 4000 + b"y" * 1000}, 2)
    big = release(releases, "big", {"noise": os.urandom(3 << 20)}, 1)
    other = release(releases, "other", {"a": b"other\n"}, 1, product="other-cabinet")
    both = ("--key", keys / "rel1.key", "--key", keys / "rel2.key", "--level", "3")
    for name, args in [("full-1", ("--release", r1, *both)), ("d12", ("--release", r2, "--base", r1, *both)),
                       ("weak", ("--release", r1, "--key", keys / "rel1.key")),
                       ("big", ("--release", big, *both)), ("other", ("--release", other, *both))]:
        run_cli("bundle", "make", *args, "--out", bundles / name, check=True)
    return World(keys, bundles)


def manifest_id(bundle: Path) -> str:
    return hashlib.sha256(bundle_dir.manifest_path(bundle).read_bytes()).hexdigest()[:16]


def files_under(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def snapshot(directory: Path) -> dict[str, object]:
    """Every entry under ``directory``: folders by name, files by content, without following links."""
    found = {}
    for parent, folders, names in os.walk(directory):
        for name in folders:
            found[os.path.relpath(os.path.join(parent, name), directory)] = "folder"
        for name in names:
            with open(os.path.join(parent, name), "rb") as handle:
                found[os.path.relpath(os.path.join(parent, name), directory)] = handle.read()
    return found


def write(cli, stick_dir: Path, *bundles: Path, roots: tuple[Path, ...]):
    args = [a for r in roots for a in ("--root", r)]
    return cli("bundle", "write", stick_dir, *bundles, *args, "--json")


def test_layout_of_one_bundle_and_one_root(cli, world, tmp_path):
    source = world.bundle("full-1")
    result = write(cli, tmp_path, source, roots=(world.root1,))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    bundle_id = manifest_id(source)
    assert [b["status"] for b in report["bundles"]] == ["written"] and report["bundles"][0]["id"] == bundle_id
    assert report["verified"] is True

    product = tmp_path / PRODUCT
    folder = product / "bundles" / bundle_id
    root_signatures = [p.name.replace("root.json", "root-1.json") for p in world.keys.glob("root.json.*.minisig")]
    expected = {"trust/root-1.json", *(f"trust/{n}" for n in root_signatures),
                *(f"bundles/{bundle_id}/{name}" for name in files_under(source)), f"bundles/{bundle_id}/COMPLETE"}
    assert set(files_under(product)) == expected
    assert sorted(os.listdir(tmp_path)) == [PRODUCT]
    # The bundle folder is the bundle, byte for byte, plus the marker naming its manifest.
    assert {k: v for k, v in files_under(folder).items() if k != "COMPLETE"} == files_under(source)
    manifest_sha256 = hashlib.sha256(bundle_dir.manifest_path(source).read_bytes()).hexdigest()
    assert (folder / "COMPLETE").read_bytes() == manifest_sha256.encode() + b"\n"
    assert (product / "trust/root-1.json").read_bytes() == world.root1.read_bytes()
    # The copy on the stick verifies with the trust root on the stick.
    cli("bundle", "verify", folder, "--root", product / "trust/root-1.json", check=True)
    assert medium.complete_bundles(tmp_path, PRODUCT) == [medium.StickBundle(bundle_id, folder, manifest_sha256)]
    assert [r.version for r in medium.root_files(tmp_path, PRODUCT)] == [1]


def test_two_bundles_for_different_bases_and_a_rotated_root_share_a_stick(cli, world, tmp_path):
    full, delta = world.bundle("full-1"), world.bundle("d12")
    result = write(cli, tmp_path, full, delta, roots=(world.root2, world.root1))  # any order
    assert result.returncode == 0, result.stderr
    trust = tmp_path / PRODUCT / "trust"
    assert (trust / "root-1.json").read_bytes() == world.root1.read_bytes()
    assert (trust / "root-2.json").read_bytes() == world.root2.read_bytes()
    for path in world.keys.glob("root-2.json.*.minisig"):
        assert (trust / path.name).read_bytes() == path.read_bytes()
    assert [r.version for r in medium.root_files(tmp_path, PRODUCT)] == [1, 2]
    assert {b.id for b in medium.complete_bundles(tmp_path, PRODUCT)} == {manifest_id(full), manifest_id(delta)}
    verified = cli("bundle", "verify", tmp_path / PRODUCT / "bundles" / manifest_id(delta),
                   "--root", trust / "root-1.json", "--root", trust / "root-2.json", "--json", check=True)
    assert json.loads(verified.stdout)["valid"] is True
    text = cli("bundle", "write", tmp_path, full, delta, "--root", world.root1, "--root", world.root2, check=True)
    assert "every byte read back and verified" in text.stdout and "platform 1 -> 2" in text.stdout


def test_running_again_keeps_verified_copies_and_replaces_damaged_ones(cli, world, tmp_path):
    full, delta = world.bundle("full-1"), world.bundle("d12")
    write(cli, tmp_path, full, delta, roots=(world.root1,))
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")}
    again = write(cli, tmp_path, full, delta, roots=(world.root1,))
    assert again.returncode == 0, again.stderr
    assert [b["status"] for b in json.loads(again.stdout)["bundles"]] == ["kept", "kept"]
    assert [r["status"] for r in json.loads(again.stdout)["roots"]] == ["kept"]
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")} == before

    # "Kept" is not taken on trust: a copy that rotted on the stick is found and written again.
    volume = next((tmp_path / PRODUCT / "bundles" / manifest_id(delta) / "payload").iterdir())
    good = volume.read_bytes()
    volume.write_bytes(bytes([good[0] ^ 1]) + good[1:])
    repaired = write(cli, tmp_path, full, delta, roots=(world.root1,))
    assert repaired.returncode == 0, repaired.stderr
    assert [b["status"] for b in json.loads(repaired.stdout)["bundles"]] == ["kept", "replaced-damaged"]
    assert volume.read_bytes() == good


def test_a_late_co_signature_is_added_to_a_kept_copy(cli, world, tmp_path):
    source = tmp_path / "bundle"
    shutil.copytree(world.bundle("full-1"), source)
    stick_dir = tmp_path / "stick"
    stick_dir.mkdir()
    write(cli, stick_dir, source, roots=(world.root1, world.root2))
    cli("bundle", "sign", source, "--key", world.keys / "rel3.key", check=True)
    result = write(cli, stick_dir, source, roots=(world.root1, world.root2))
    assert [b["status"] for b in json.loads(result.stdout)["bundles"]] == ["kept"]
    folder = stick_dir / PRODUCT / "bundles" / manifest_id(source)
    assert {k: v for k, v in files_under(folder).items() if k != "COMPLETE"} == files_under(source)
    assert len(medium.complete_bundles(stick_dir, PRODUCT)) == 1


def test_an_incomplete_bundle_folder_is_ignored_then_replaced(cli, world, tmp_path):
    full, delta = world.bundle("full-1"), world.bundle("d12")
    write(cli, tmp_path, full, delta, roots=(world.root1,))
    folder = tmp_path / PRODUCT / "bundles" / manifest_id(full)
    # What a stick pulled mid-write looks like: no marker, a short volume, a temporary file.
    (folder / "COMPLETE").unlink()
    volume = next((folder / "payload").iterdir())
    volume.write_bytes(volume.read_bytes()[:1])
    (folder / "payload" / f".{volume.name}.tmp-99").write_bytes(b"partial")
    assert [b.id for b in medium.complete_bundles(tmp_path, PRODUCT)] == [manifest_id(delta)]

    result = write(cli, tmp_path, full, delta, roots=(world.root1,))
    assert result.returncode == 0, result.stderr
    assert [b["status"] for b in json.loads(result.stdout)["bundles"]] == ["replaced-incomplete", "kept"]
    assert {k: v for k, v in files_under(folder).items() if k != "COMPLETE"} == files_under(full)
    assert len(medium.complete_bundles(tmp_path, PRODUCT)) == 2


@pytest.mark.parametrize("name", ["._manifest.json.zst", "._root-1.json", "System Volume Information",
                                  "SYSTEM VOLUME INFORMATION", "$RECYCLE.BIN", ".DS_Store", ".Trashes",
                                  ".Spotlight-V100", ".fseventsd", ".Trash-1000", "._0123456789abcdef"])
def test_junk_names(name):
    assert stick.is_junk(name)


@pytest.mark.parametrize("name", ["manifest.json.zst", "root-1.json", "COMPLETE", "0123456789abcdef", "payload"])
def test_layout_names_are_not_junk(name):
    assert not stick.is_junk(name)


def test_junk_other_systems_leave_is_ignored(cli, world, tmp_path):
    full = world.bundle("full-1")
    write(cli, tmp_path, full, roots=(world.root1, world.root2))
    product = tmp_path / PRODUCT
    folder = product / "bundles" / manifest_id(full)
    listed = (medium.root_files(tmp_path, PRODUCT), medium.complete_bundles(tmp_path, PRODUCT))
    # What macOS and Windows leave behind on a FAT stick.
    (tmp_path / "System Volume Information").mkdir()
    (tmp_path / "System Volume Information" / "IndexerVolumeGuid").write_bytes(b"{guid}")
    (product / "bundles" / "System Volume Information").mkdir()
    (product / "bundles" / f"._{manifest_id(full)}").write_bytes(b"\0\5\26\7")
    (folder / f"._{bundle_dir.MANIFEST}").write_bytes(b"\0\5\26\7")
    (folder / "._COMPLETE").write_bytes(b"\0\5\26\7")
    (product / "trust" / "._root-1.json").write_bytes(b"\0\5\26\7")
    (product / "trust" / ".DS_Store").write_bytes(b"Bud1")
    (tmp_path / ".Trashes").mkdir()
    assert (medium.root_files(tmp_path, PRODUCT), medium.complete_bundles(tmp_path, PRODUCT)) == listed

    again = write(cli, tmp_path, full, roots=(world.root1, world.root2))
    assert again.returncode == 0, again.stderr
    assert [b["status"] for b in json.loads(again.stdout)["bundles"]] == ["kept"]
    assert (folder / f"._{bundle_dir.MANIFEST}").exists()  # other systems' files are left alone
    cli("bundle", "verify", folder, "--root", world.root1, check=True)


def test_the_listing_follows_no_symlink(world, tmp_path):
    real = tmp_path / "elsewhere"
    real.mkdir()
    (real / "root-1.json").write_bytes(world.root1.read_bytes())
    product = tmp_path / "stick" / PRODUCT
    product.mkdir(parents=True)
    (product / "trust").symlink_to(real)
    with pytest.raises(stick.StickLayoutError):
        medium.root_files(tmp_path / "stick", PRODUCT)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs: a stick that is too small for the 3 MiB bundle."""
    with tmpfs_mounted(tmp_path / "stick", "-o", "size=1m") as mount_point:
        yield mount_point


def test_a_stick_short_of_space_is_refused_before_anything_is_written(cli, world, small_tmpfs):
    (small_tmpfs / "notes.txt").write_text("the operator's own file\n")
    before = snapshot(small_tmpfs)
    result = write(cli, small_tmpfs, world.bundle("full-1"), world.bundle("big"), roots=(world.root1,))
    assert result.returncode == 3, result.stderr
    assert "free" in result.stderr and "need" in result.stderr and "hint:" in result.stderr
    assert snapshot(small_tmpfs) == before
    # The small bundle alone fits.
    fits = write(cli, small_tmpfs, world.bundle("full-1"), roots=(world.root1,))
    assert fits.returncode == 0, fits.stderr


def test_a_read_only_stick_is_refused_before_anything_is_written(cli, world, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", small_tmpfs], check=True)
    result = write(cli, small_tmpfs, world.bundle("full-1"), roots=(world.root1,))
    assert result.returncode == 3 and "read-only" in result.stderr and "write-protect" in result.stderr


@pytest.mark.parametrize("victim", [".vol", bundle_dir.MANIFEST])
def test_read_back_catches_a_corrupted_copy(world, tmp_path, monkeypatch, victim):
    """The stick returns other bytes than were written (the fwup PR #138 case): no COMPLETE."""
    real_put = stick_write.put

    def put_then_corrupt(target: Path, file, advance):
        real_put(target, file, advance)
        if target.name.endswith(victim):
            data = bytearray(target.read_bytes())
            data[len(data) // 2] ^= 0x40
            target.write_bytes(bytes(data))

    monkeypatch.setattr(stick_write, "put", put_then_corrupt)
    full = world.bundle("full-1")
    result = CliRunner().invoke(main, ["write", str(tmp_path), str(full), "--root", str(world.root1)])
    assert result.exit_code == 1, result.output
    corrupted = next(p for p in (tmp_path / PRODUCT / "bundles").rglob("*") if p.name.endswith(victim))
    assert f"error: {corrupted}: reads back different from what was written" in result.stderr
    assert "hint:" in result.stderr
    assert not list(tmp_path.rglob("COMPLETE")) and medium.complete_bundles(tmp_path, PRODUCT) == []

    monkeypatch.setattr(stick_write, "put", real_put)  # a healthy stick: the next write repairs it
    result = CliRunner().invoke(main, ["write", str(tmp_path), str(full), "--root", str(world.root1), "--json"])
    assert result.exit_code == 0, result.output
    assert [b["status"] for b in json.loads(result.stdout)["bundles"]] == ["replaced-incomplete"]


def test_a_bundle_below_the_signer_threshold_is_refused_before_anything_is_written(cli, world, tmp_path):
    (tmp_path / "notes.txt").write_text("kept\n")
    result = write(cli, tmp_path, world.bundle("full-1"), world.bundle("weak"), roots=(world.root1,))
    assert result.returncode == 3
    assert "signed by 1 of 2 required release signers" in result.stderr
    assert str(world.bundle("weak")) in result.stderr
    assert snapshot(tmp_path) == {"notes.txt": b"kept\n"}


def test_bundles_for_two_products_are_refused(cli, world, tmp_path):
    result = write(cli, tmp_path, world.bundle("full-1"), world.bundle("other"), roots=(world.root1,))
    assert result.returncode == 3 and "different products" in result.stderr
    assert snapshot(tmp_path) == {}


def test_a_different_root_with_the_same_version_is_refused(cli, world, tmp_path):
    keys = tmp_path / "keys"
    cli("bundle", "keys", "new", "other", "--dir", keys, "--no-passphrase", check=True)
    cli("bundle", "root", "new", "--out", keys / "root.json", "--root-key", keys / "other.pub",
        "--signer", keys / "other.pub", check=True)
    stick_dir = tmp_path / "stick"
    (stick_dir / PRODUCT / "trust").mkdir(parents=True)
    (stick_dir / PRODUCT / "trust" / "root-1.json").write_bytes((keys / "root.json").read_bytes())
    before = snapshot(stick_dir)
    result = write(cli, stick_dir, world.bundle("full-1"), roots=(world.root1,))
    assert result.returncode == 3 and "a different trust root with version 1" in result.stderr
    assert snapshot(stick_dir) == before


def fill_bundles_folder(stick_dir: Path, count: int) -> None:
    """``count`` entries a device counts as bundle folders (complete or not, folders or not: a
    forged or interrupted copy counts as much as a bundle), beside junk that no one counts."""
    bundles = stick_dir / PRODUCT / "bundles"
    bundles.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        name = bundles / f"{number:016x}"
        if number % 2:
            name.mkdir()
        else:
            name.write_bytes(b"not a bundle\n")
    for junk in ("System Volume Information", "._0123456789abcdef", ".DS_Store"):
        (bundles / junk).mkdir()


def test_a_stick_devices_would_refuse_for_its_bundle_count_is_not_written(cli, world, tmp_path):
    """Devices refuse a stick with more than stick.MAX_BUNDLE_FOLDERS bundle folders for one
    product: `bundle write` stops before going past it, and says what to do."""
    assert stick.MAX_BUNDLE_FOLDERS == 64
    full, delta = world.bundle("full-1"), world.bundle("d12")
    fill_bundles_folder(tmp_path, stick.MAX_BUNDLE_FOLDERS - 1)
    before = snapshot(tmp_path)
    result = write(cli, tmp_path, full, delta, roots=(world.root1,))
    assert result.returncode == 3, result.stderr
    assert (f"the stick would hold 65 bundles for {PRODUCT} (63 already there, 2 new); devices refuse a stick "
            "with more than 64 bundles per product") in result.stderr
    assert "hint: write fewer bundles to this stick, or remove" in result.stderr
    assert snapshot(tmp_path) == before  # nothing written, not even the trust root

    # One bundle fits: the stick then holds 64, which devices still examine.
    result = write(cli, tmp_path, full, roots=(world.root1,))
    assert result.returncode == 0, result.stderr
    assert [b["status"] for b in json.loads(result.stdout)["bundles"]] == ["written"]
    assert [b.id for b in medium.complete_bundles(tmp_path, PRODUCT)] == [manifest_id(full)]  # as a device reads it
    # Writing the same bundle again adds none, even when its copy must be replaced.
    (tmp_path / PRODUCT / "bundles" / manifest_id(full) / "COMPLETE").unlink()
    again = write(cli, tmp_path, full, roots=(world.root1,))
    assert again.returncode == 0, again.stderr
    assert [b["status"] for b in json.loads(again.stdout)["bundles"]] == ["replaced-incomplete"]
    refused = write(cli, tmp_path, full, delta, roots=(world.root1,))
    assert refused.returncode == 3 and "(64 already there, 1 new)" in refused.stderr


def test_a_file_over_the_fat32_limit_is_refused_before_anything_is_written(world, tmp_path):
    big = world.bundle("big")
    volume = next((big / "payload").iterdir())
    with pytest.raises(stick_space.FileTooLarge) as refused:
        stick_write.write_stick(tmp_path, [big], [world.root1], max_file_bytes=1 << 20)
    assert refused.value.where == str(volume) and refused.value.exit_code == 3
    assert "--volume-size" in refused.value.hint
    assert snapshot(tmp_path) == {}
    assert stick.MAX_FILE_BYTES == (4 << 30) - 1


@pytest.fixture
def fat32_stick(tmp_path):
    """A real FAT32 filesystem (mkfs.vfat), mounted read-write with FUSE (fusefat)."""
    if os.geteuid() != 0 or not os.path.exists("/dev/fuse"):
        pytest.skip("needs root and /dev/fuse")
    debian_tools("dosfstools", "mkfs.vfat", "fsck.vfat")
    debian_tools("fusefat", "fusefat", "fusermount")
    image, mount_point = tmp_path / "fat.img", tmp_path / "fat"
    mount_point.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["mkfs.vfat", "-F", "32", image], check=True, capture_output=True)

    daemons: list[subprocess.Popen] = []

    def mount(mode: str) -> None:
        # In the foreground, so that unmounting can wait for the daemon to have written the image
        # back: fusermount -u returns before fusefat has (fsck.vfat then saw a half-closed image).
        daemon = subprocess.Popen(["fusefat", "-f", "-o", mode, image, mount_point], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        daemons.append(daemon)
        deadline = time.monotonic() + 10
        while not os.path.ismount(mount_point):
            assert daemon.poll() is None and time.monotonic() < deadline, "fusefat did not mount the image"
            time.sleep(0.05)

    def unmount() -> None:
        subprocess.run(["fusermount", "-u", mount_point], check=True)
        daemons.pop().wait(timeout=30)

    mount("rw+")
    try:
        yield image, mount_point, mount, unmount
    finally:
        if daemons:
            subprocess.run(["fusermount", "-u", mount_point], capture_output=True)
            daemons.pop().wait(timeout=30)


def test_on_a_real_fat32_filesystem(cli, world, fat32_stick):
    image, mount_point, mount, unmount = fat32_stick
    result = write(cli, mount_point, world.bundle("full-1"), world.bundle("d12"), roots=(world.root1, world.root2))
    assert result.returncode == 0, result.stderr  # nothing tried to chmod or chown
    unmount()
    assert subprocess.run(["fsck.vfat", "-n", image], capture_output=True).returncode == 0
    mount("ro")
    trust = mount_point / PRODUCT / "trust"
    for name in ("full-1", "d12"):
        cli("bundle", "verify", mount_point / PRODUCT / "bundles" / manifest_id(world.bundle(name)),
            "--root", trust / "root-1.json", "--root", trust / "root-2.json", check=True)
    assert len(medium.complete_bundles(mount_point, PRODUCT)) == 2
    # Mounted read-only with everything in place: verified, nothing to write, so not refused.
    again = write(cli, mount_point, world.bundle("full-1"), world.bundle("d12"), roots=(world.root1, world.root2))
    assert again.returncode == 0, again.stderr
    assert [b["status"] for b in json.loads(again.stdout)["bundles"]] == ["kept", "kept"]


def test_a_key_ceremony_makes_its_keys_on_a_fat32_stick(fat32_stick, tmp_path):
    """docs/TRUST.md's ceremony writes each holder's key to their own USB stick: FAT has neither
    hard links nor Unix modes, and a key must still never be overwritten."""
    _, mount_point, _, _ = fat32_stick
    made = run_cli("bundle", "keys", "new", "root-alice", "--dir", mount_point, "--no-passphrase")
    assert made.returncode == 0, made.stderr
    assert sorted(os.listdir(mount_point)) == ["root-alice.key", "root-alice.pub"]
    key = (mount_point / "root-alice.key").read_bytes()
    again = run_cli("bundle", "keys", "new", "root-alice", "--dir", mount_point, "--no-passphrase")
    assert again.returncode == 1 and "already exists" in again.stderr, again.stderr
    assert (mount_point / "root-alice.key").read_bytes() == key
    (tmp_path / "doc").write_bytes(b"signed with a key from a stick\n")
    signed = run_cli("bundle", "keys", "sign", tmp_path / "doc", "--key", mount_point / "root-alice.key")
    assert signed.returncode == 0, signed.stderr
    checked = run_cli("bundle", "keys", "verify", tmp_path / "doc", "--pub", mount_point / "root-alice.pub")
    assert checked.returncode == 0, checked.stderr


def test_a_stick_devices_would_refuse_as_a_whole_is_not_reported_verified(cli, world, tmp_path):
    """The write ends by reading the product's folder as a device does: the stick's own trust
    roots count (one that retired a signer, left by an earlier write), not only those given."""
    rotated = tmp_path / "keys/root-2.json"
    rotated.parent.mkdir()
    cli("bundle", "root", "rotate", "--from", world.root1, "--out", rotated, "--remove-signer", "rel1",
        "--add-signer", world.keys / "rel3.pub", check=True)
    cli("bundle", "root", "sign", rotated, "--key", world.keys / "root1.key", check=True)
    retired = tmp_path / "retired"
    trust = retired / PRODUCT / "trust"
    trust.mkdir(parents=True)
    for path in rotated.parent.iterdir():
        shutil.copy(path, trust / path.name)
    result = write(cli, retired, world.bundle("full-1"), roots=(world.root1,))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "a device would refuse this bundle" in result.stderr and "revoked: rel1" in result.stderr, result.stderr


def test_a_kept_copy_with_a_stray_signature_file_is_written_again(cli, world, tmp_path):
    """A device reads every signature file in a bundle's folder: one the bundle does not have (half
    a hand copy) would make it refuse the copy, so the copy counts as damaged."""
    assert write(cli, tmp_path, world.bundle("full-1"), roots=(world.root1,)).returncode == 0
    folder = tmp_path / PRODUCT / "bundles" / manifest_id(world.bundle("full-1"))
    (folder / f"{bundle_dir.MANIFEST}.minisig").write_text("untrusted comment: half a copy\n")
    result = write(cli, tmp_path, world.bundle("full-1"), roots=(world.root1,))
    assert result.returncode == 0, result.stderr
    assert [b["status"] for b in json.loads(result.stdout)["bundles"]] == ["replaced-damaged"]
    assert not (folder / f"{bundle_dir.MANIFEST}.minisig").exists()


def test_what_an_incomplete_copy_frees_is_free_before_the_first_bundle_is_written(cli, world, small_tmpfs, tmp_path):
    """The space check counts what replacing an incomplete copy frees: it must be freed before
    another bundle takes the space, or a write that passed the check runs out of it."""
    noise = release(tmp_path / "releases", "noise", {"noise": os.urandom(300 << 10)}, 1)
    cli("bundle", "make", "--release", noise, "--key", world.keys / "rel1.key", "--key", world.keys / "rel2.key",
        "--level", "3", "--out", tmp_path / "noise", check=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    payload = small_tmpfs / PRODUCT / "bundles" / manifest_id(world.bundle("full-1")) / "payload"
    payload.mkdir(parents=True)
    (payload / f".volume.vol.tmp-{dead.pid}").write_bytes(bytes(800 << 10))  # a write killed mid-copy
    result = write(cli, small_tmpfs, tmp_path / "noise", world.bundle("full-1"), roots=(world.root1,))
    assert result.returncode == 0, result.stderr
    assert [b["status"] for b in json.loads(result.stdout)["bundles"]] == ["written", "replaced-incomplete"]
