"""bundle make -> verify -> apply round trips on real trees with every kind of change."""

from __future__ import annotations

import gzip
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.apply import StagingError, apply_component
from agent.format import codec
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from agent.format.tree import tree_digest
from agent.payload import Payload
from agent.scan import as_content, scan_tree
from tests.sim.disks import tmpfs_mounted
from tests.sim.releases import put, write_release

RNG = random.Random(7)
BLOB = RNG.randbytes(300_000)
TEXT = "".join(f"line {i}: lorem ipsum dolor sit amet\n" for i in range(20_000))


def build_r1(directory: Path) -> Path:
    release = write_release(directory, {"platform": ("13.2.0", 6), "game/lucky-sevens": ("1.0", 2)})
    p = directory / "platform"
    put(p, "usr/bin/tool", BLOB, 0o755)
    put(p, "usr/bin/sudo", b"setuid program", 0o4755)
    put(p, "etc/config", TEXT)
    put(p, "etc/shifted", TEXT)
    put(p, "etc/appended", TEXT)
    put(p, "etc/truncated", TEXT)
    put(p, "etc/to-delete", "bye")
    put(p, "etc/to-rename", BLOB[:50_000])
    put(p, "var/empty-file", b"")
    put(p, "usr/share/doc/changelog.gz", gzip.compress(TEXT.encode(), 9, mtime=0))
    put(p, "usr/share/ünïcødé/naïve.txt", "unicode")
    os.symlink("tool", p / "usr/bin/tool-link")
    os.symlink("/etc/config", p / "etc/absolute-link")
    os.link(p / "usr/bin/tool", p / "usr/bin/tool-hardlink")
    (p / "srv/empty-dir").mkdir(parents=True)
    os.chmod(p / "srv", 0o750)
    os.chown(p / "etc/config", 1234, 5678)
    g = directory / "games/lucky-sevens"
    put(g, "reels.dat", RNG.randbytes(100_000))
    put(g, "rules.txt", TEXT[:5000])
    os.symlink("rules.txt", g / "rules-link")
    return release


def build_r2(r1: Path, directory: Path) -> Path:
    os.system(f"cp -a {r1}/. {directory}/")
    release = write_release(directory, {"platform": ("13.2.1", 7), "game/lucky-sevens": ("2.0", 3),
                                        "game/fortune": ("1.0", 1)})
    p = directory / "platform"
    tool = bytearray(BLOB)
    tool[1000:1010] = b"EDITEDEDIT"
    put(p, "usr/bin/tool", bytes(tool), 0o755)  # edited in place: the hard link is rewritten too
    os.unlink(p / "usr/bin/tool-hardlink")
    os.link(p / "usr/bin/tool", p / "usr/bin/tool-hardlink")
    put(p, "etc/config", TEXT.replace("line 500:", "line five hundred:"))
    put(p, "etc/shifted", "inserted at the start\n" * 300 + TEXT)
    put(p, "etc/appended", TEXT + "appended line\n" * 50)
    put(p, "etc/truncated", TEXT[: len(TEXT) // 2])
    os.unlink(p / "etc/to-delete")
    os.rename(p / "etc/to-rename", p / "etc/renamed")
    put(p, "usr/share/doc/changelog.gz", gzip.compress(("new entry\n" + TEXT).encode(), 9, mtime=0))
    os.chmod(p / "etc/truncated", 0o600)
    os.unlink(p / "usr/bin/tool-link")
    os.symlink("sudo", p / "usr/bin/tool-link")
    put(p, "new/dir/новый.txt", "new file, unicode path")
    g = directory / "games/lucky-sevens"
    reels = bytearray((directory / "games/lucky-sevens/reels.dat").read_bytes())
    reels[5000:5004] = b"\0\1\2\3"
    put(g, "reels.dat", bytes(reels))
    put(directory / "games/fortune", "wheel.dat", RNG.randbytes(20_000))
    return release


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    base = tmp_path_factory.mktemp("releases")
    r1 = build_r1(base / "r1")
    (base / "r2").mkdir()
    r2 = build_r2(base / "r1", base / "r2")
    return r1, r2


@pytest.fixture(scope="module")
def bundles(releases, trust, tmp_path_factory):
    from tests.sim.tools import run_cli
    r1, r2 = releases
    out = tmp_path_factory.mktemp("bundles")
    keys = ["--key", trust.key("rel1"), "--key", trust.key("rel2")]
    run_cli("bundle", "make", "--release", r1, *keys, "--out", out / "full-1", "--level", "3", check=True)
    run_cli("bundle", "make", "--release", r2, "--base", r1, *keys, "--out", out / "d12", "--level", "3", check=True)
    return out / "full-1", out / "d12"


def _expected(release_dir: Path, name: str) -> list:
    tree = release_dir / ("platform" if name == "platform" else f"games/{name.split('/')[1]}")
    entries = scan_tree(tree)
    return entries if name == "platform" else as_content(entries)


def test_full_and_delta_verify_with_the_device_engine(cli, releases, bundles, trust):
    r1, _ = releases
    full, delta = bundles
    result = cli("bundle", "verify", full, "--root", trust.root, "--apply", check=True)
    assert "platform: applied: every file matches the manifest" in result.stdout
    result = cli("bundle", "verify", delta, "--root", trust.root, "--base", f"platform={r1.parent / 'platform'}",
                 "--base", f"game/lucky-sevens={r1.parent / 'games/lucky-sevens'}", check=True)
    assert result.stdout.count("every file matches the manifest") == 3


@pytest.mark.parametrize("name", ["platform", "game/lucky-sevens", "game/fortune"])
def test_applied_delta_equals_the_new_release_exactly(releases, bundles, tmp_path, name):
    """Paths, types, modes, setuid bits, numeric owners, contents, link targets, hard links."""
    r1, r2 = releases
    _, delta = bundles
    manifest = Manifest.from_stored(manifest_path(delta).read_bytes())
    component = manifest.component(name)
    base = r1.parent / ("platform" if name == "platform" else f"games/{name.split('/')[1]}")
    with Payload(delta, manifest) as payload:
        apply_component(component, payload, tmp_path / "out", base=base if component.is_delta else None,
                        set_owner=True)
    applied = scan_tree(tmp_path / "out")
    if name != "platform":
        applied = as_content(applied)
    assert tree_digest(applied) == tree_digest(_expected(r2.parent, name)) == component.tree_digest
    if name == "platform":
        out = tmp_path / "out"
        assert (out / "usr/bin/sudo").stat().st_mode & 0o7777 == 0o4755
        assert (out / "etc/config").stat().st_uid == 1234
        assert os.readlink(out / "etc/absolute-link") == "/etc/config"
        assert (out / "usr/bin/tool").stat().st_ino == (out / "usr/bin/tool-hardlink").stat().st_ino
        assert (out / "srv").stat().st_mode & 0o777 == 0o750
        assert (out / "var/empty-file").stat().st_size == 0
        # Modification times are kept to the second.
        assert (out / "etc/config").stat().st_mtime == int((r2.parent / "platform/etc/config").stat().st_mtime)


def test_delta_carries_only_changes(cli, bundles):
    import json
    _, delta = bundles
    report = json.loads(cli("bundle", "inspect", delta, "--json", check=True).stdout)
    platform = next(c for c in report["components"] if c["name"] == "platform")
    assert platform["update"] == "delta" and platform["from"] == {"version": "13.2.0", "sequence": 6}
    assert platform["files"]["moved"]["files"] == 1  # etc/to-rename -> etc/renamed
    assert platform["removed"] == 2  # etc/to-delete, etc/to-rename
    assert platform["files"]["unchanged"]["files"] >= 2
    # Every edit is small: the delta is a tiny fraction of the changed bytes.
    changed = platform["files"]["changed"]
    assert changed["files"] >= 6 and changed["stored_bytes"] < changed["bytes"] / 20
    gz = next(i for i in platform["largest_changes"] if i["path"].endswith("changelog.gz")) \
        if any(i["path"].endswith("changelog.gz") for i in platform["largest_changes"]) else None
    assert gz is None or gz["stored_bytes"] < 2000  # the gzip recipe diffs content, not deflate bytes
    games = {c["name"]: c for c in report["components"]}
    assert games["game/fortune"]["update"] == "full"
    assert games["game/lucky-sevens"]["update"] == "delta"


def test_make_is_reproducible(cli, releases, trust, tmp_path):
    r1, r2 = releases
    outputs = []
    for name in ("a", "b"):
        cli("bundle", "make", "--release", r2, "--base", r1, "--key", trust.key("rel1"), "--out", tmp_path / name,
            "--level", "3", "--threads", "1" if name == "a" else "2", check=True)
        outputs.append({str(p.relative_to(tmp_path / name)): p.read_bytes()
                        for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert outputs[0] == outputs[1]


def test_cosigning_up_to_the_threshold(cli, releases, trust, tmp_path):
    r1, _ = releases
    cli("bundle", "make", "--release", r1, "--key", trust.key("rel1"), "--out", tmp_path / "b", "--level", "3",
        check=True)
    refused = cli("bundle", "verify", tmp_path / "b", "--root", trust.root)
    assert refused.returncode == 3
    assert "signed by 1 of 2 required release signers (signed: rel1; missing: rel2)" in refused.stderr
    again = cli("bundle", "sign", tmp_path / "b", "--key", trust.key("rel1"), "--root", trust.root, check=True)
    assert "signed by 1 of 2" in again.stdout  # the same signer twice still counts once
    stranger = cli("bundle", "sign", tmp_path / "b", "--key", trust.key("rel3"), "--root", trust.root, check=True)
    assert "signed by 1 of 2" in stranger.stdout  # a key the root does not list counts for nothing
    done = cli("bundle", "sign", tmp_path / "b", "--key", trust.key("rel2"), "--root", trust.root, check=True)
    assert "signed by 2 of 2" in done.stdout
    cli("bundle", "verify", tmp_path / "b", "--root", trust.root, check=True)


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_catches_one_flipped_byte_everywhere(cli, releases, trust, tmp_path):
    r1, _ = releases
    cli("bundle", "make", "--release", r1, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
        "--out", tmp_path / "orig", "--level", "3", "--volume-size", "64K", check=True)
    files = sorted(p.relative_to(tmp_path / "orig") for p in (tmp_path / "orig").rglob("*") if p.is_file())
    assert len([f for f in files if f.suffix == ".vol"]) >= 3
    cases = []
    for target in files:
        size = (tmp_path / "orig" / target).stat().st_size
        if target.suffix == ".vol":
            cases += [(target, 0, "does not match its hash"), (target, size // 2, "does not match its hash")]
        elif target.suffix == ".minisig":
            # Line 2 is the signature itself (line 1, the untrusted comment, is not signed by design).
            line2 = (tmp_path / "orig" / target).read_bytes().index(b"\n") + 20
            cases.append((target, line2, "signed by 1 of 2"))
        else:
            cases += [(target, 0, "signed by 0 of 2"), (target, size // 2, "signed by 0 of 2")]
    for number, (target, position, message) in enumerate(cases):
        copy = tmp_path / f"copy-{number}"
        shutil.copytree(tmp_path / "orig", copy)
        _flip(copy / target, position)
        result = cli("bundle", "verify", copy, "--root", trust.root)
        assert result.returncode == 3, (target, result.stdout)
        assert message in result.stderr or "signature" in result.stderr, (target, result.stderr)
        shutil.rmtree(copy)


def test_missing_and_swapped_volumes(cli, releases, trust, tmp_path):
    r1, _ = releases
    for name in ("a", "b"):
        cli("bundle", "make", "--release", r1, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
            "--out", tmp_path / name, "--level", "3", "--volume-size", "64K", check=True)
    volumes = sorted((tmp_path / "a/payload").iterdir())
    # Two full volumes: one is replaced by another of the same size below.
    full = [v for v in volumes if v.stat().st_size == 64 << 10]
    assert len(full) >= 2
    full[1].unlink()
    result = cli("bundle", "verify", tmp_path / "a", "--root", trust.root)
    assert result.returncode == 3 and "is missing" in result.stderr
    # Another volume of the same size under the expected name: its hash gives it away.
    shutil.copyfile(tmp_path / "b/payload" / full[0].name, full[1])
    result = cli("bundle", "verify", tmp_path / "a", "--root", trust.root)
    assert result.returncode == 3 and "does not match its hash" in result.stderr
    assert full[1].name in result.stderr


def test_files_with_the_longest_names_are_staged(trust, tmp_path):
    """Names of up to 255 bytes (the most a name may have), multibyte ones included."""
    from tests.sim.tools import run_cli
    release = write_release(tmp_path / "r", {"platform": ("1.0", 1)})
    names = ["ж" * 127 + "a", "ж" * 127 + "b", "x" * 254 + "c", "é" * 120]
    for number, name in enumerate(names):
        put(tmp_path / "r/platform", f"long/{name}", f"file {number}\n" * 1000)
    bundle = tmp_path / "full"
    run_cli("bundle", "make", "--release", release, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
            "--out", bundle, "--level", "1", check=True)
    manifest = Manifest.from_stored(manifest_path(bundle).read_bytes())
    with Payload(bundle, manifest) as payload:
        apply_component(manifest.component("platform"), payload, tmp_path / "out", base=None, set_owner=True)
    assert sorted(os.listdir(tmp_path / "out/long")) == sorted(names)
    assert (tmp_path / "out/long" / names[1]).read_text() == "file 1\n" * 1000


def _apply_onto_altered_base(r1: Path, delta: Path, tmp_path: Path, path: str, listing: bool) -> StagingError:
    base = tmp_path / "base"
    shutil.copytree(r1.parent / "platform", base, symlinks=True)
    files = {e.path: e.sha256 for e in scan_tree(base) if e.type == "file"}
    data = bytearray((base / path).read_bytes())
    data[len(data) // 3] ^= 0xFF
    (base / path).write_bytes(bytes(data))
    manifest = Manifest.from_stored(manifest_path(delta).read_bytes())
    with Payload(delta, manifest) as payload, pytest.raises(StagingError) as refused:
        apply_component(manifest.component("platform"), payload, tmp_path / "out", base=base, set_owner=True,
                        base_listing=(lambda: files) if listing else None)
    return refused.value


@pytest.mark.parametrize("path", ["etc/appended", "usr/share/doc/changelog.gz", "usr/bin/tool"])
def test_a_base_file_unlike_the_deltas_base_is_named(releases, bundles, tmp_path, path):
    """A patch region is not hashed before use (the rebuilt file's own SHA-256 is the check), so
    when a base file differs, the failure must still name it rather than blame the bundle: the
    base listing says which file differs."""
    r1, _ = releases
    _, delta = bundles
    manifest = Manifest.from_stored(manifest_path(delta).read_bytes())
    patched = [e for e in manifest.component("platform").entries if any(c.prefix for c in e.chunks)]
    assert {c.prefix.path for e in patched for c in e.chunks} >= {path}
    assert all(c.prefix.sha256 is None for e in patched for c in e.chunks)  # the listing says it, not the delta
    refused = _apply_onto_altered_base(r1, delta, tmp_path, path, listing=True)
    assert refused.message == f"base file {path!r} differs from the one this delta was made against"


def test_without_a_base_listing_the_base_files_patched_from_are_named(releases, bundles, tmp_path):
    r1, _ = releases
    _, delta = bundles
    refused = _apply_onto_altered_base(r1, delta, tmp_path, "etc/appended", listing=False)
    assert refused.message.startswith("'etc/appended' rebuilt from base file 'etc/appended' does not have its "
                                      "signed SHA-256: the base file differs")
    assert "technician" in refused.hint


def test_a_format_2_delta_for_machines_whose_agent_reads_nothing_newer(cli, releases, bundles, trust, tmp_path):
    """`bundle make --format 2`: the same delta, but for the format and each prefix's base-file
    SHA-256 (docs/FORMAT.md, "Format version"); it verifies and applies like the format-3 one."""
    r1, r2 = releases
    _, d12 = bundles
    cli("bundle", "make", "--release", r2, "--base", r1, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
        "--out", tmp_path / "d12-format-2", "--level", "3", "--format", "2", check=True)
    old, new = (json.loads(codec.decompress(stored, codec.declared_size(stored))) for stored in
                (manifest_path(tmp_path / "d12-format-2").read_bytes(), manifest_path(d12).read_bytes()))
    assert (old["format"], new["format"]) == (2, 3)
    bases = {"platform": r1.parent / "platform", "game/lucky-sevens": r1.parent / "games/lucky-sevens"}
    named = 0
    for component in old["components"]:
        files = {e.path: e.sha256 for e in scan_tree(bases[component["name"]])} if component["name"] in bases else {}
        for chunk in (c for e in component["entries"] for c in e.get("chunks", ())):
            if "prefix" in chunk:
                assert chunk["prefix"].pop("sha256") == files[chunk["prefix"]["path"]]
                named += 1
    assert named > 3 and {**old, "format": 3} == new
    result = cli("bundle", "verify", tmp_path / "d12-format-2", "--root", trust.root,
                 "--base", f"platform={bases['platform']}", "--base", f"game/lucky-sevens={bases['game/lucky-sevens']}",
                 check=True)
    assert result.stdout.count("every file matches the manifest") == 3


def test_bundle_make_writes_no_format_it_cannot(cli, releases, trust, tmp_path):
    r1, _ = releases
    result = cli("bundle", "make", "--release", r1, "--key", trust.key("rel1"), "--out", tmp_path / "b", "--format", "4")
    assert result.returncode == 2 and "--format" in result.stderr and not (tmp_path / "b").exists()


def test_verify_refuses_a_base_tree_with_a_filesystem_mounted_inside(cli, releases, bundles, trust, tmp_path):
    """As bundle make refuses one: a chroot's /proc left mounted would be read as the base's files."""
    r1, _ = releases
    _, delta = bundles
    base = tmp_path / "platform"
    subprocess.run(["cp", "-a", r1.parent / "platform", base], check=True)
    times = os.stat(base)
    with tmpfs_mounted(base / "proc"):
        result = cli("bundle", "verify", delta, "--root", trust.root, "--base", f"platform={base}")
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"{base}/proc: another filesystem is mounted here, inside the base tree {base}" in result.stderr
    (base / "proc").rmdir()
    os.utime(base, ns=(times.st_atime_ns, times.st_mtime_ns))
    cli("bundle", "verify", delta, "--root", trust.root, "--base", f"platform={base}", check=True)
