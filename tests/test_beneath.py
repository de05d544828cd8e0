"""Every operation of agent/beneath.py stays beneath its root and follows no symlink - through
openat2(2) on Linux and through the descriptor walk used elsewhere, with the same results."""

from __future__ import annotations

import os

import pytest

from agent import beneath
from agent.beneath import Beneath, EscapingPath, NotRegularFile


@pytest.fixture(params=["openat2", "walk"])
def resolver(request, monkeypatch):
    """Both ways of resolving a directory beneath another: the kernel's, and the portable walk."""
    if request.param == "walk":
        monkeypatch.setattr(beneath.OPENAT2, "usable", False)
    elif not beneath.OPENAT2.usable:
        pytest.skip("this kernel has no openat2")  # Linux >= 5.6; the walk is tested either way
    return request.param


@pytest.fixture
def tree(tmp_path):
    """root/a/b/file, root/link -> outside (a folder beside the root), root/a/up -> .., and a
    folder outside the root that a write through a link would reach."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a/b").mkdir(parents=True)
    (root / "a/b/file").write_bytes(b"inside")
    outside.mkdir()
    (outside / "victim").write_bytes(b"outside")
    (root / "link").symlink_to(outside)
    (root / "a/up").symlink_to("..")
    (root / "abs").symlink_to(outside.resolve())
    return root, outside


WRITES = [
    ("mkdir", lambda t, p: t.mkdir(f"{p}/new")),
    ("create", lambda t, p: os.close(t.create(f"{p}/new"))),
    ("symlink", lambda t, p: t.symlink("x", f"{p}/new")),
    ("link", lambda t, p: t.link("a/b/file", f"{p}/new")),
    ("create-replacing", lambda t, p: os.close(t.create(f"{p}/victim", replacing=True))),
    ("remove", lambda t, p: t.remove(f"{p}/victim")),
    ("set_metadata", lambda t, p: t.set_metadata(f"{p}/victim", mode=0o777, owner=None, mtime=0)),
    ("directory", lambda t, p: t.directory(f"{p}/deeper", create=True)),
    ("open", lambda t, p: os.close(t.open(f"{p}/victim"))),
]


@pytest.mark.parametrize("via", ["link", "abs", "a/up/link"])
@pytest.mark.parametrize("name, write", WRITES, ids=[w[0] for w in WRITES])
def test_nothing_is_done_through_a_symlink(resolver, tree, via, name, write):
    root, outside = tree
    before = sorted((p.name, p.stat().st_mode, p.read_bytes() if p.is_file() else b"") for p in outside.iterdir())
    with Beneath.open_root(root) as handle:
        with pytest.raises(EscapingPath, match="is not a plain directory"):
            write(handle, via)
    after = sorted((p.name, p.stat().st_mode, p.read_bytes() if p.is_file() else b"") for p in outside.iterdir())
    assert after == before and (root / "a/b/file").read_bytes() == b"inside"


def test_the_last_name_is_never_followed(resolver, tree):
    root, outside = tree
    with Beneath.open_root(root) as handle:
        with pytest.raises(EscapingPath, match="'link' is a symlink"):
            handle.open("link")
        handle.set_metadata("link", mode=0o700, owner=None, mtime=7)  # the link's own time, not the target's
        assert os.lstat(root / "link").st_mtime == 7 and os.stat(outside).st_mtime != 7
        os.close(handle.create("abs", replacing=True))  # a file in place of the link, none through it
        handle.remove("link")  # removes the link, not what it points to
    assert not os.path.lexists(root / "link") and (outside / "victim").read_bytes() == b"outside"
    assert (root / "abs").is_file() and not (root / "abs").is_symlink()


def test_operations_beneath_work(resolver, tree):
    root, _ = tree
    with Beneath.open_root(root) as handle:
        with handle.directory("x/y/z", create=True, mode=0o750) as deep:
            fd = deep.create("f")
            os.write(fd, b"data")
            Beneath.set_metadata_fd(fd, mode=0o640, owner=None, mtime=5)
            os.close(fd)
        handle.mkdir("a/b/g")
        handle.mkdir("a/b/g/sub")
        for replaced in ("a/b/g", "a/b/file"):  # a whole directory, a file
            fd = handle.create(replaced, replacing=True)
            os.write(fd, b"data")
            Beneath.set_metadata_fd(fd, mode=0o640, owner=None, mtime=5)
            os.close(fd)
        handle.link("a/b/g", "a/b/h")
        handle.symlink("g", "a/b/s")
        assert handle.readlink("a/b/s") == "g"
        assert handle.lstat("a/b/h").st_nlink == 2 and handle.lstat("missing") is None
        handle.remove("x")
    assert (root / "a/b/g").read_bytes() == b"data" and oct((root / "a/b/g").stat().st_mode)[-3:] == "640"
    assert (root / "a/b/file").read_bytes() == b"data"
    assert not (root / "x").exists()


def test_only_regular_files_are_opened(resolver, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with Beneath.open_root(tmp_path) as handle:
        with pytest.raises(NotRegularFile):
            handle.open("fifo")


def test_a_root_that_is_a_symlink_is_refused_unless_allowed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(EscapingPath):
        Beneath.open_root(tmp_path / "alias")
    Beneath.open_root(tmp_path / "alias", follow_root=True).close()  # a stick's mount point, a release tree
