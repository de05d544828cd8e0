"""The components an update leaves alone must reach the new environment as they were.

agent/staging.py checks each clone against the digest recorded when the component was installed,
and reads the running tree only when that does not match (one scan of a whole platform instead of
two in the usual case)."""

from __future__ import annotations

import os
import shutil

import pytest

from agent import staging
from agent.apply import StagingError
from agent.format.tree import tree_digest
from agent.layout import Layout
from agent.scan import scan_tree
from tests.sim.disks import tmpfs_mounted
from tests.sim.tools import make_unix_socket


@pytest.fixture
def environments(tmp_path):
    running = tmp_path / "running"
    (running / "platform" / "bin").mkdir(parents=True)
    (running / "platform" / "bin" / "game-server").write_bytes(b"\x7fELF server")
    (running / "platform" / "motd").write_text("welcome\n")
    (running / "games").mkdir()
    installed = {"platform": tree_digest(scan_tree(running / "platform"))}
    new = tmp_path / "new"
    shutil.copytree(running, new, symlinks=True)
    return running, new, installed, tmp_path / "chain"


def check(running, new, installed, chain):
    staging.stage(Layout(), {}, {}, new, running, installed, chain)


def test_a_faithful_clone_passes_with_one_scan(environments, monkeypatch):
    scanned = []
    real_scan = staging.scan_tree
    monkeypatch.setattr(staging, "scan_tree", lambda tree, **kw: scanned.append(tree) or real_scan(tree, **kw))
    check(*environments)
    assert len(scanned) == 1


def test_a_clone_that_differs_from_the_running_tree_is_refused(environments):
    running, new, installed, chain = environments
    (new / "platform" / "bin" / "game-server").write_bytes(b"\x7fELF serveR")
    with pytest.raises(StagingError, match="clone of platform differs"):
        check(running, new, installed, chain)


def test_a_clone_missing_a_file_is_refused(environments):
    running, new, installed, chain = environments
    (new / "platform" / "motd").unlink()
    with pytest.raises(StagingError, match="clone of platform differs"):
        check(running, new, installed, chain)


def test_a_running_tree_that_drifted_since_install_still_lets_a_faithful_clone_through(environments):
    running, new, installed, chain = environments
    for tree in (running, new):
        (tree / "platform" / "motd").write_text("edited by the vendor's own tool\n")
    check(running, new, installed, chain)


def test_what_no_component_carries_never_blocks_the_update_of_another(environments):
    """A program made a FIFO, a socket, a name and a link target that are not UTF-8 in a
    component the update leaves alone: the clone has them as the running tree does, and the check
    of the clone leaves them out instead of refusing the update of something else."""
    running, new, installed, chain = environments
    for tree in (running, new):
        os.mkfifo(tree / "platform" / "pipe")
        make_unix_socket(tree / "platform" / "control.sock")
        (tree / "platform" / os.fsdecode(b"caf\xe9")).write_text("a Latin-1 name")
        os.symlink(os.fsdecode(b"caf\xe9"), tree / "platform" / "latin-1-link")
    check(running, new, installed, chain)
    (new / "platform" / "motd").unlink()
    with pytest.raises(StagingError, match="clone of platform differs"):  # still compared, all the rest
        check(running, new, installed, chain)


# --- filesystems mounted inside the running environment ---------------------------------------
# On bectl the running environment is the live "/": devfs, /tmp, log datasets and a stick are
# mounted inside it, and a ZFS clone holds none of them (the bectl stand-in's clone is `cp -ax`).


def test_filesystems_mounted_in_the_running_tree_alone_are_not_compared(environments):
    running, new, installed, chain = environments
    for tree in (running, new):
        (tree / "platform" / "motd").write_text("edited by the vendor's own tool\n")  # the check reads both
        (tree / "platform" / "tmp").mkdir()
    with tmpfs_mounted(running / "platform" / "tmp"):
        (running / "platform" / "tmp" / "session").write_text("a program's temporary file\n")
        (running / "platform" / "tmp" / "cache").mkdir()
        scanned = []
        real_scan = staging.scan_tree
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(staging, "scan_tree", lambda tree, **kw: scanned.append(kw) or real_scan(tree, **kw))
            check(running, new, installed, chain)
        # Read once more without the mount, never entered in the running tree.
        assert [kw["exclude"] for kw in scanned] == [(), (), ("tmp",)] and scanned[1]["enter"] == set()
        (new / "platform" / "motd").unlink()  # the rest is still compared
        with pytest.raises(StagingError, match="clone of platform differs"):
            check(running, new, installed, chain)


def test_a_filesystem_mounted_in_both_trees_is_compared(environments):
    """A filesystem the clone has too (a deep boot environment's child dataset, mounted by
    `bectl mount`) is part of the environment: read on both sides, a difference refused."""
    running, new, installed, chain = environments
    for tree in (running, new):
        (tree / "platform" / "motd").write_text("edited by the vendor's own tool\n")
    with tmpfs_mounted(running / "platform" / "usr"), tmpfs_mounted(new / "platform" / "usr"):
        for tree in (running, new):
            (tree / "platform" / "usr" / "lib").mkdir()
            (tree / "platform" / "usr" / "lib" / "libc.so").write_bytes(b"\x7fELF libc")
        check(running, new, installed, chain)
        (new / "platform" / "usr" / "lib" / "libc.so").write_bytes(b"\x7fELF libC")
        with pytest.raises(StagingError, match="clone of platform differs"):
            check(running, new, installed, chain)
