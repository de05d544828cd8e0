"""The apply engine: build a component's new tree from its base tree and a verified bundle.

One engine for both sides: ``bundle verify --base`` runs it into a temporary directory, the
agent runs it into the inactive boot environment. Memory stays bounded whatever the file sizes:
a file is produced one chunk at a time (at most MAX_CHUNK_BYTES of output, its stored object,
and its base region). Every byte is checked: stored objects against their hashes before use,
base files against the hashes the manifest names before they are used as a source, each written
file against its SHA-256, and finally the whole tree against the manifest (verify_staged).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.format import codec, gzip_recipe
from agent.beneath import NotRegularFile, open_beneath
from agent.format.manifest import Component
from agent.format.tree import DIR, FILE, HARDLINK, SYMLINK, Entry, Prefix
from agent.payload import Payload
from agent.scan import READ_SIZE, scan_tree
from keys.crashpoint import crashpoint
from keys.errors import Refused

Progress = Callable[[int], None]


class StagingError(Refused):
    """What was built does not match the manifest; the staged tree must be discarded."""


@dataclass
class BaseTree:
    """The installed tree a delta applies to. Every base file is hashed before it is used."""

    root: Path
    _verified: dict[str, str] = field(default_factory=dict)

    def _open(self, path: str) -> int:
        try:
            fd = open_beneath(self.root, path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise StagingError(f"base file {path!r} is missing from {self.root}",
                               hint="this delta needs the exact base release; use a full bundle") from None
        except NotRegularFile:
            raise StagingError(f"base path {path!r} is not a regular file", where=self.root) from None
        except OSError as error:  # a socket, no permission...: not a base file we can use
            raise StagingError(f"base file {path!r} cannot be opened: {error.strerror}", where=self.root) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StagingError(f"base path {path!r} is not a regular file", where=self.root)
        return fd

    def check(self, path: str, sha256: str) -> None:
        if self._verified.get(path) == sha256:
            return
        digest = hashlib.sha256()
        fd = self._open(path)
        try:
            while block := os.read(fd, READ_SIZE):
                digest.update(block)
        finally:
            os.close(fd)
        if digest.hexdigest() != sha256:  # T-BASE: the base differs from the manifest's base
            raise StagingError(f"base file {path!r} differs from the one this delta was made against",
                               where=self.root, hint="this delta needs the exact base release; use a full bundle")
        self._verified[path] = sha256

    def region(self, prefix: Prefix) -> bytes:
        """The base bytes a patch chunk refers to (of the gunzipped content if it says so)."""
        self.check(prefix.path, prefix.sha256)
        fd = self._open(prefix.path)
        try:
            if prefix.gunzip:
                try:
                    content = gzip_recipe.gunzip_prefix(lambda: os.read(fd, READ_SIZE), prefix.offset + prefix.length)
                except ValueError:
                    raise StagingError(f"base file {prefix.path!r} is not gzip data as the delta expects") from None
                data = content[prefix.offset:]
            elif prefix.offset + prefix.length > os.fstat(fd).st_size:
                data = b""  # reported below as too short; pread would fail on offsets past 2**63
            else:
                data = os.pread(fd, prefix.length, prefix.offset)
        finally:
            os.close(fd)
        path, length = prefix.path, prefix.length
        if len(data) != length:
            raise StagingError(f"base file {path!r} is shorter than the region the delta refers to")
        return data

    def copy_to(self, path: str, sha256: str, out_fd: int, progress: Progress | None) -> None:
        """Copy a base file (unchanged or moved) and check it is the one the manifest names.

        A reflink (FICLONE: btrfs, xfs) shares the blocks instead of writing them; the base is
        still read once to check its hash. Elsewhere the bytes are copied while being hashed.
        """
        digest = hashlib.sha256()
        fd = self._open(path)
        try:
            cloned = reflink(fd, out_fd)
            while block := os.read(fd, READ_SIZE):
                digest.update(block)
                if not cloned:
                    _write_all(out_fd, block)
                if progress:
                    progress(len(block))
        finally:
            os.close(fd)
        if digest.hexdigest() != sha256:
            raise StagingError(f"base file {path!r} differs from the one this delta was made against",
                               where=self.root, hint="this delta needs the exact base release; use a full bundle")
        self._verified[path] = sha256


_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(source_fd: int, out_fd: int) -> bool:
    """Share ``source_fd``'s blocks with the empty ``out_fd`` if the filesystem can; else False."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fcntl.ioctl(out_fd, _FICLONE, source_fd)
        return True
    except OSError:  # EOPNOTSUPP, EXDEV, EINVAL...: fall back to copying
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_file(entry: Entry, dest: Path, payload: Payload, base: BaseTree | None, progress: Progress | None) -> None:
    objects = payload.manifest.object_index()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if entry.base_path is not None:
            assert base is not None, "the manifest parser refuses base copies in full updates"
            base.copy_to(entry.base_path, entry.sha256, fd, progress)
            return
        file_digest = hashlib.sha256()

        def write(data: bytes) -> None:
            file_digest.update(data)
            _write_all(fd, data)
            if progress:
                progress(len(data))

        rebuilder = gzip_recipe.Rebuilder(entry.gzip, write) if entry.gzip is not None else None
        content_digest = hashlib.sha256()
        for chunk in entry.chunks:
            stored = objects[chunk.object]
            prefix = None
            if chunk.prefix is not None:
                assert base is not None, "the manifest parser refuses patches in full updates"
                prefix = base.region(chunk.prefix)
            data = codec.decode(stored.encoding, payload.read_object(stored), chunk.size, prefix)
            content_digest.update(data)
            if rebuilder is not None:
                rebuilder.feed(data)
            else:
                write(data)
        if rebuilder is not None:
            if content_digest.hexdigest() != entry.gzip.sha256:
                raise StagingError(f"{entry.path!r}: decoded gzip content does not match its SHA-256")
            rebuilder.finish()
        if file_digest.hexdigest() != entry.sha256:
            if rebuilder is not None:
                raise StagingError(f"{entry.path!r}: re-deflating its content did not reproduce the file; this "
                                   "system's zlib deflates differently from the bundler's",
                                   hint="install a full bundle, or use a stock zlib")
            raise StagingError(f"{entry.path!r} decoded to content that does not match its SHA-256")
    finally:
        os.close(fd)


def _set_metadata(entry: Entry, dest: Path, set_owner: bool) -> None:
    if set_owner:
        os.lchown(dest, entry.uid, entry.gid)  # before chmod: chown clears setuid bits
    if entry.type != SYMLINK:
        os.chmod(dest, entry.mode)
    os.utime(dest, ns=(entry.mtime * 10**9, entry.mtime * 10**9), follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def _ancestors(paths: tuple[str, ...]) -> set[str]:
    """The directories leading to nested components: they stay even if this listing lacks them."""
    result = set()
    for path in paths:
        parts = path.split("/")
        result.update("/".join(parts[:i]) for i in range(1, len(parts)))
    return result


def _temporary(dest: Path) -> Path:
    return dest.with_name(f".bundle-new-{os.getpid()}-{dest.name}"[:255])


def apply_component(component: Component, payload: Payload, target: Path, *, base: Path | None,
                    set_owner: bool, progress: Progress | None = None, exclude: tuple[str, ...] = (),
                    target_is_clone_of_base: bool = False) -> None:
    """Make ``target`` hold the component's new tree.

    ``target`` may not exist (the tree is built from scratch) or may hold an older tree: then
    everything is written beside its final name and renamed into place, and paths the new tree no
    longer has are removed. When ``target`` is a clone of ``base`` (a cloned environment), files
    the manifest copies unchanged from the same path are kept as they are. ``exclude`` names subtrees (other components nested inside
    this one) that are left alone. Reads come from ``base`` - the running environment, never
    written - so the order of changes in ``target`` cannot corrupt a source.

    ``set_owner`` applies numeric ownership (root only).
    Raises StagingError, CorruptPayload, CorruptObject (the caller discards ``target``), OSError.
    """
    target = Path(target)
    if component.is_delta and base is None:
        raise StagingError(f"component {component.name} is a delta from sequence {component.base.sequence}; "
                           "its base tree is needed", hint="name the base tree, or use a full bundle")
    base_tree = BaseTree(Path(base)) if base is not None else None
    existing = {}
    if target.exists():
        existing = {e.path: e for e in scan_tree(target, with_hashes=False, exclude=exclude)}
        keep = {e.path for e in component.entries} | _ancestors(exclude)
        for path in sorted((p for p in existing if p not in keep), key=lambda p: p.count("/"), reverse=True):
            _remove(target / path)
    directories = []
    for entry in component.entries:
        if _within(entry.path, exclude):
            continue  # a nested component or a machine-local path: never ours to write
        dest = target if entry.path == "." else target / entry.path
        have = existing.get(entry.path)
        if entry.type == DIR:
            if have is not None and have.type != DIR:
                _remove(dest)
                have = None
            if have is None:
                os.mkdir(dest, 0o700)  # final mode after the children exist: it may be read-only
            directories.append((entry, dest))
            continue
        if target_is_clone_of_base and entry.type == FILE and have is not None and have.type == FILE \
                and entry.base_path == entry.path and os.lstat(dest).st_nlink == 1:
            _set_metadata(entry, dest, set_owner)  # unchanged and already there (checked at the end)
            continue
        temporary = _temporary(dest)
        if entry.type == FILE:
            _write_file(entry, temporary, payload, base_tree, progress)
            _set_metadata(entry, temporary, set_owner)
        elif entry.type == SYMLINK:
            os.symlink(entry.target, temporary)
            _set_metadata(entry, temporary, set_owner)
        elif entry.type == HARDLINK:
            os.link(target / entry.target, temporary, follow_symlinks=False)
        if have is not None and have.type == DIR:
            shutil.rmtree(dest)
        crashpoint(f"stage {entry.path}")
        os.replace(temporary, dest)
    for entry, dest in reversed(directories):
        _set_metadata(entry, dest, set_owner)


def verify_staged(component: Component, target: Path, *, check_owner: bool, exclude: tuple[str, ...] = ()) -> None:
    """Check the built tree against the manifest, entry by entry (``exclude``: nested components).
    Raises StagingError naming the first difference."""
    actual = {e.path: e for e in scan_tree(Path(target), exclude=exclude)}
    for expected in component.entries:
        if _within(expected.path, exclude):
            continue
        found = actual.pop(expected.path, None)
        if found is None:
            raise StagingError(f"{component.name}: {expected.path!r} is missing from the staged tree")
        checks = [("type", expected.type, found.type), ("size", expected.size, found.size),
                  ("content", expected.sha256, found.sha256), ("target", expected.target, found.target)]
        if expected.type != HARDLINK and expected.type != SYMLINK:
            checks.append(("mode", expected.mode, found.mode))
        if check_owner and expected.type != HARDLINK:
            checks.append(("owner", (expected.uid, expected.gid), (found.uid, found.gid)))
        for what, want, got in checks:
            if want != got:
                raise StagingError(f"{component.name}: {expected.path!r} has the wrong {what} after staging")
    unexpected = sorted(set(actual) - _ancestors(exclude))
    if unexpected:
        raise StagingError(f"{component.name}: the staged tree has unexpected {unexpected[0]!r}")
