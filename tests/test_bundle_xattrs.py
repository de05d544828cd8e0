"""`bundle make` and extended attributes, which bundles do not carry (bundler/xattrs.py): refused
by name, or left out with --drop-xattrs and each path named. Real attributes on the test's own
filesystem: a POSIX ACL as systemd-tmpfiles puts on /var/log/journal, a file capability as on
ping, a user attribute, and a trusted one on a symlink itself."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from tests.sim.releases import put, write_release

ACL_UNDEFINED_ID = 0xFFFFFFFF
# The kernel's POSIX ACL value (version 2; tag, permissions, id): owner rwx, group r-x, group 4
# (adm) r-x, mask r-x, others r-x. What `setfacl -m g:adm:rx` leaves.
JOURNAL_ACL = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perms, uid) for tag, perms, uid in (
    (0x01, 7, ACL_UNDEFINED_ID), (0x04, 5, ACL_UNDEFINED_ID), (0x08, 5, 4), (0x10, 5, ACL_UNDEFINED_ID),
    (0x20, 5, ACL_UNDEFINED_ID)))
# security.capability, revision 2, effective: cap_net_raw (13) permitted, as `setcap cap_net_raw+ep`.
NET_RAW_CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)


def _releases(tmp_path: Path) -> tuple[Path, Path]:
    """Release 1 (platform, a game) and release 2, whose platform changed and has attributes on
    three paths, and whose game has one but did not change (same sequence)."""
    old = write_release(tmp_path / "r1", {"platform": ("1.0", 1), "game/lucky-sevens": ("1.0", 1)})
    put(tmp_path / "r1/platform", "bin/ping", b"ping 1", 0o755)
    put(tmp_path / "r1/games/lucky-sevens", "reels.dat", "reels")
    shutil.copytree(tmp_path / "r1", tmp_path / "r2")
    new = write_release(tmp_path / "r2", {"platform": ("2.0", 2), "game/lucky-sevens": ("1.0", 1)})
    platform = tmp_path / "r2/platform"
    put(platform, "bin/ping", b"ping 2", 0o755)
    os.setxattr(platform / "bin/ping", "security.capability", NET_RAW_CAPABILITY)
    os.link(platform / "bin/ping", platform / "bin/ping6")  # the same inode: named once
    os.symlink("ping", platform / "bin/ping4")  # its target's attributes are not its own
    os.symlink("../etc", platform / "bin/etc")
    os.setxattr(platform / "bin/etc", "trusted.origin", b"build", follow_symlinks=False)
    (platform / "var/log/journal").mkdir(parents=True)
    for name in ("system.posix_acl_access", "system.posix_acl_default"):
        os.setxattr(platform / "var/log/journal", name, JOURNAL_ACL)
    os.setxattr(tmp_path / "r2/games/lucky-sevens/reels.dat", "user.origin", b"studio")
    return old, new


def _make(cli, trust, old: Path, new: Path, out: Path, *extra):
    return cli("bundle", "make", "--release", new, "--base", old, "--key", trust.key("rel1"), "--key",
               trust.key("rel2"), "--out", out, "--level", "3", *extra)


def test_extended_attributes_are_refused_by_name(cli, trust, tmp_path):
    old, new = _releases(tmp_path)
    result = _make(cli, trust, old, new, tmp_path / "out")
    assert result.returncode == 3, result.stdout + result.stderr
    assert (f"refused: {tmp_path}/r2/platform: 'bin/etc' of component platform has extended attributes "
            "(trusted.origin), and so do 2 more paths; bundles do not carry them, so devices would install it "
            "without them") in result.stderr
    assert "or make the bundle with --drop-xattrs if the machines do without them" in result.stderr
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_drop_xattrs_makes_the_bundle_and_names_each_path(cli, trust, tmp_path):
    old, new = _releases(tmp_path)
    result = _make(cli, trust, old, new, tmp_path / "out", "--drop-xattrs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
        f"warning: {path!r} of component platform is carried without its extended attributes (--drop-xattrs)"
        for path in ("bin/etc", "bin/ping", "var/log/journal")]  # not the unchanged game's
    manifest = Manifest.from_stored(manifest_path(tmp_path / "out").read_bytes())
    assert [c.name for c in manifest.components] == ["platform"]
    assert {"bin/ping", "bin/ping6", "bin/ping4", "bin/etc", "var/log/journal"} <= {
        e.path for e in manifest.component("platform").entries}
    verified = cli("bundle", "verify", tmp_path / "out", "--root", trust.root, "--base",
                   f"platform={tmp_path}/r1/platform", "--apply")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_full_bundle_checks_every_component(cli, trust, tmp_path):
    _, new = _releases(tmp_path)
    result = cli("bundle", "make", "--release", new, "--key", trust.key("rel1"), "--out", tmp_path / "out",
                 "--level", "3", "--drop-xattrs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("warning: 'reels.dat' of component game/lucky-sevens is carried without its extended attributes "
            "(--drop-xattrs)") in result.stderr.splitlines()
