"""The apply engine: build a component's new tree from its base tree and a verified bundle.

One engine for both sides: ``bundle verify --base`` runs it into a temporary directory, the
agent runs it into the inactive boot environment. Memory stays bounded whatever the file sizes:
a file is produced one chunk at a time (at most MAX_CHUNK_BYTES of output, its stored object,
and its base region). Every byte is checked: stored objects against their hashes before use,
base files copied whole against the hashes the manifest names, each written file against its
SHA-256, and finally the whole tree against the manifest (verify_staged).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from agent.beneath import Beneath, EscapingPath, NotRegularFile
from agent.format import codec
from agent.format.manifest import Component
from agent.format.paths import ancestors
from agent.format.tree import DIR, FILE, HARDLINK, SYMLINK, Entry, Prefix
from agent.known_hashes import KnownHashes
from agent.payload import Payload
from agent.reflink import reflink
from agent.scan import READ_SIZE, scan_tree
from agent.tree_audit import compare
from keys.crashpoint import crashpoint
from keys.errors import Refused
from keys.files import write_all

Progress = Callable[[int], None]
DEFLATE_SLICE = 1 << 20  # gzip content is re-deflated this much at a time (0.4-3 s at worst)


class StagingError(Refused):
    """What was built does not match the manifest; the staged tree must be discarded."""


class WorkExceeded(StagingError):
    """A bundle asks the device for far more work than the bytes it writes justify (T-WORK)."""


class WorkBudget:
    """What one install may cost the device relative to what it writes (T-WORK).

    A signed bundle can make a few KiB of objects cost hours: thousands of patch chunks that each
    read a 64 MiB base region, files that take turns between two blocks so that each decodes a
    16 MiB block again, or gzip recipes whose content deflates at level 9 at 0.4 MB/s (measured
    here on a two-letter random text; text deflates at 20-60 MB/s). Bytes read from base trees,
    inflated and decoded from blocks are counted, and may reach ``BYTES_PER_BYTE_WRITTEN`` times the bytes
    written plus ``FREE_BYTES``; deflating and applying bsdiff patches cannot be judged by bytes
    (deflating's speed varies 300-fold with the content, a bsdiff patch's with its number of
    controls), so their CPU time is measured and may reach ``FREE_CPU_SECONDS`` plus
    ``CPU_SECONDS_PER_MIB`` per MiB written. A legitimate delta stays far below both
    (docs/AGENT.md, "What gets installed"). One budget spans every step of an install.
    """

    BYTES_PER_BYTE_WRITTEN = 16
    FREE_BYTES = 1 << 30
    FREE_CPU_SECONDS = 5.0
    CPU_SECONDS_PER_MIB = 1.0

    def __init__(self) -> None:
        self.written = 0
        self.processed = 0
        self.cpu_seconds = 0.0

    def wrote(self, count: int) -> None:
        self.written += count

    def read(self, count: int, path: str) -> None:
        """Charge ``count`` bytes read or inflated from the base tree, or decoded from a block, for ``path``."""
        self.processed += count
        allowed = self.BYTES_PER_BYTE_WRITTEN * self.written + self.FREE_BYTES
        if self.processed > allowed:
            raise WorkExceeded(f"{path!r}: the bundle makes the device read {self.processed} bytes of base files and "
                               f"blocks to "
                               f"write {self.written}; at most {self.BYTES_PER_BYTE_WRITTEN} per byte written (and "
                               f"{self.FREE_BYTES >> 20} MiB) are allowed - refused as a resource attack",
                               hint="the bundle is not what the vendor's tools make; report it to the vendor")

    def computed(self, seconds: float, path: str) -> None:
        """Charge ``seconds`` of CPU spent re-deflating gzip content or applying a bsdiff patch."""
        self.cpu_seconds += seconds
        allowed = self.FREE_CPU_SECONDS + self.CPU_SECONDS_PER_MIB * self.written / (1 << 20)
        if self.cpu_seconds > allowed:
            raise WorkExceeded(f"{path!r}: re-deflating gzip content and applying bsdiff patches took "
                               f"{self.cpu_seconds:.1f} s of CPU to write "
                               f"{self.written} bytes; at most {self.FREE_CPU_SECONDS:g} s and "
                               f"{self.CPU_SECONDS_PER_MIB:g} s per MiB written are allowed - refused as a "
                               "resource attack", hint="the bundle is not what the vendor's tools make; report it "
                                                       "to the vendor")


@dataclass
class BaseTree:
    """The installed tree a delta applies to, read strictly beneath its root. A file copied from
    it is hashed as it is copied. A patch region is not: the file rebuilt from it is checked
    against its own SHA-256, which no other base bytes could pass, and only when that fails are
    the base files it was patched from hashed, against ``listing`` (path -> SHA-256 of the base
    release's files, asked for only then), to name the one that differs as the cause (T-BASE)."""

    root: Beneath
    budget: WorkBudget = field(default_factory=WorkBudget)
    listing: Callable[[], Mapping[str, str] | None] | None = None
    _verified: dict[str, str] = field(default_factory=dict)
    _listed: Mapping[str, str] | None = None

    def _open(self, path: str) -> int:
        try:
            fd = self.root.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise StagingError(f"base file {path!r} is missing from {self.root.where}",
                               hint="this delta needs the exact base release; use a full bundle") from None
        except NotRegularFile:
            raise StagingError(f"base path {path!r} is not a regular file", where=self.root.where) from None
        except EscapingPath as error:
            raise StagingError(error.message, where=self.root.where) from None
        except OSError as error:  # a socket, no permission...: not a base file we can use
            raise StagingError(f"base file {path!r} cannot be opened: {error.strerror}",
                               where=self.root.where) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StagingError(f"base path {path!r} is not a regular file", where=self.root.where)
        return fd

    def _listed_sha256(self, prefix: Prefix) -> str | None:
        """The base file's SHA-256 as a format-2 prefix or the listing of the base says."""
        if prefix.sha256 is not None:
            return prefix.sha256
        if self._listed is None:
            self._listed = (self.listing() if self.listing is not None else None) or {}
        return self._listed.get(prefix.path)

    def name_differing_base(self, entry: Entry) -> None:
        """After ``entry`` failed to rebuild, raise StagingError naming a base file it patches that
        is not the one the delta was made against, if there is one: that is the cause, not the
        bundle. Each is read once; not charged to the budget, as the install stops either way.
        Without a listing of the base, the base files are named as the likely cause."""
        unlisted = set()
        prefixes = {c.prefix.path: c.prefix for c in entry.chunks if c.prefix is not None}
        for _, prefix in sorted(prefixes.items()):
            sha256 = self._listed_sha256(prefix)
            if sha256 is None:
                unlisted.add(prefix.path)
                continue
            if self._verified.get(prefix.path) == sha256:
                continue
            digest = hashlib.sha256()
            fd = self._open(prefix.path)
            try:
                while block := os.read(fd, READ_SIZE):
                    digest.update(block)
            finally:
                os.close(fd)
            if digest.hexdigest() != sha256:  # T-BASE: the base differs from the manifest's base
                raise StagingError(f"base file {prefix.path!r} differs from the one this delta was made against",
                                   where=self.root.where,
                                   hint="this delta needs the exact base release; use a full bundle")
            self._verified[prefix.path] = sha256
        if unlisted:  # the stored objects were hashed: a base that differs is by far the likeliest cause
            raise StagingError(f"{entry.path!r} rebuilt from base file {', '.join(map(repr, sorted(unlisted)))} "
                               "does not have its signed SHA-256: the base file differs from the one this delta "
                               "was made against, or the bundle was made wrong", where=self.root.where,
                               hint="audit the installed files in technician mode, or use a full bundle")

    def region(self, prefix: Prefix) -> bytes | bytearray:
        """The base bytes a patch chunk refers to (of the gunzipped content, or of the file with its
        ELF tables re-coded, if it says so)."""
        fd = self._open(prefix.path)
        try:
            if prefix.gunzip:
                self.budget.read(prefix.offset + prefix.length, prefix.path)  # inflated from the start

                def read_block() -> bytes:  # and what it is inflated from: members may be empty
                    block = os.read(fd, READ_SIZE)
                    self.budget.read(len(block), prefix.path)
                    return block

                try:
                    data = codec.GZIP_RECIPE.base_content(read_block, prefix.offset, prefix.offset + prefix.length)
                except ValueError:
                    raise StagingError(f"base file {prefix.path!r} is not gzip data as the delta expects") from None
            elif prefix.elf_tables:  # re-coded as a whole: its section headers are at its end
                size = os.fstat(fd).st_size
                self.budget.read(size, prefix.path)
                try:
                    data = codec.ELF_TABLES.base_content(lambda: os.read(fd, READ_SIZE), prefix.offset,
                                                         prefix.offset + prefix.length)
                except ValueError as error:
                    raise StagingError(f"base file {prefix.path!r}: {error}, but the delta refers to its ELF "
                                       "tables", hint="this delta needs the exact base release; use a full "
                                                      "bundle") from None
            elif prefix.offset + prefix.length > os.fstat(fd).st_size:
                data = b""  # reported below as too short; pread would fail on offsets past 2**63
            else:
                self.budget.read(prefix.length, prefix.path)
                data = os.pread(fd, prefix.length, prefix.offset)
        finally:
            os.close(fd)
        path, length = prefix.path, prefix.length
        if len(data) != length:
            raise StagingError(f"base file {path!r} is shorter than the region the delta refers to")
        return data

    def copy_to(self, path: str, sha256: str, out_fd: int, progress: Progress | None) -> bool:
        """Copy a base file (unchanged or moved) and check it is the one the manifest names.

        A reflink (FICLONE: btrfs, xfs) shares the blocks instead of writing them; the base is
        still read once to check its hash. Elsewhere the bytes are copied while being hashed.
        Returns whether the bytes hashed are the ones written (not so for a reflink: the base
        could change between the clone and the read).
        """
        digest = hashlib.sha256()
        fd = self._open(path)
        try:
            cloned = reflink(fd, out_fd)
            while block := os.read(fd, READ_SIZE):
                digest.update(block)
                self.budget.wrote(len(block))
                if not cloned:
                    write_all(out_fd, block)
                if progress:
                    progress(len(block))
        finally:
            os.close(fd)
        if digest.hexdigest() != sha256:
            raise StagingError(f"base file {path!r} differs from the one this delta was made against",
                               where=self.root.where, hint="this delta needs the exact base release; use a full bundle")
        self._verified[path] = sha256
        return not cloned


def _write_file(entry: Entry, fd: int, payload: Payload, base: BaseTree | None, budget: WorkBudget,
                progress: Progress | None) -> bool:
    """Write the file's bytes to ``fd``; raises StagingError unless their SHA-256 is the
    manifest's. Returns whether those are the bytes hashed (see BaseTree.copy_to)."""
    if entry.base_path is not None:
        assert base is not None, "the manifest parser refuses base copies in full updates"
        return base.copy_to(entry.base_path, entry.sha256, fd, progress)
    file_digest = hashlib.sha256()

    def write(data: bytes) -> None:
        file_digest.update(data)
        write_all(fd, data)
        budget.wrote(len(data))
        if progress:
            progress(len(data))

    try:
        _rebuild(entry, payload, base, budget, write, file_digest)
    except WorkExceeded:
        raise
    except (StagingError, codec.CorruptObject) as error:
        if base is not None:
            base.name_differing_base(entry)
        if isinstance(error, codec.CorruptObject):  # the codec cannot know which file it was decoding
            raise codec.CorruptObject(f"{entry.path!r}: {error.message}", where=error.where,
                                      hint=error.hint) from None
        raise
    return True


def _rebuild(entry: Entry, payload: Payload, base: BaseTree | None, budget: WorkBudget,
             write: Callable[[bytes], None], file_digest) -> None:
    """Decode the file's chunks (patching base regions) and ``write`` them; raises StagingError
    unless ``file_digest``, fed by ``write``, ends as the manifest's SHA-256."""
    objects = payload.objects
    rebuilder = codec.rebuilder(entry, write)  # a transform codec (gzip-recipe) rebuilds the file from its content
    content_digest = hashlib.sha256()
    for chunk in entry.chunks:
        stored = objects[chunk.object]
        prefix = None
        if chunk.prefix is not None:
            assert base is not None, "the manifest parser refuses patches in full updates"
            prefix = base.region(chunk.prefix)
        stored_bytes = payload.read_object(stored, lambda size: budget.read(size, entry.path))
        started = time.thread_time()
        data = codec.decode(stored.encoding, stored_bytes, chunk.size, prefix)
        if stored.encoding == codec.BSDIFF.name:  # applied in Python: its time depends on its controls
            budget.computed(time.thread_time() - started, entry.path)
        content_digest.update(data)
        if rebuilder is not None:
            for start in range(0, len(data), DEFLATE_SLICE):  # the budget is checked while it is spent
                started = time.thread_time()
                rebuilder.feed(data[start:start + DEFLATE_SLICE])
                budget.computed(time.thread_time() - started, entry.path)
        else:
            write(data)
    if rebuilder is not None:
        if entry.gzip is not None and content_digest.hexdigest() != entry.gzip.sha256:
            raise StagingError(f"{entry.path!r}: decoded gzip content does not match its SHA-256")
        started = time.thread_time()
        try:
            rebuilder.finish()  # a shaped recipe (gzip-shape) and re-coded ELF tables do their work here
        except ValueError as error:
            what = "its gzip recipe does" if entry.gzip is not None else "its re-coded ELF tables do"
            raise StagingError(f"{entry.path!r}: {what} not fit its content: {error}",
                               hint="the bundle is not what the vendor's tools make; report it to the vendor") from None
        budget.computed(time.thread_time() - started, entry.path)
    if file_digest.hexdigest() != entry.sha256:
        if rebuilder is not None and entry.gzip is not None:
            raise StagingError(f"{entry.path!r}: re-deflating its content did not reproduce the signed file: "
                               "this system's zlib deflates differently from the bundler's, or the bundle's "
                               "recipe is wrong", hint="install a full bundle, or use a stock zlib")
        raise StagingError(f"{entry.path!r} decoded to content that does not match its SHA-256")


def _owner(entry: Entry, set_owner: bool) -> tuple[int, int] | None:
    return (entry.uid, entry.gid) if set_owner else None


def _already_there(entry: Entry, have: Entry, hard_linked: set[str]) -> bool:
    """Whether the clone holds ``entry`` as it is (checked at the end with the whole tree): an
    unchanged file kept at its path, not hard-linked (setting its metadata would change another
    path's), or the same symlink - most of a platform's files and links."""
    if entry.type == FILE and have.type == FILE:
        return entry.base_path == entry.path and entry.path not in hard_linked
    return entry.type == SYMLINK and have.type == SYMLINK and have.target == entry.target


def _status_matches(found: os.stat_result, entry: Entry, set_owner: bool) -> bool:
    """Whether a directory's status already is what ``entry`` says (as a scan reads it)."""
    return (stat.S_ISDIR(found.st_mode) and stat.S_IMODE(found.st_mode) == entry.mode
            and int(found.st_mtime) == entry.mtime
            and (not set_owner or (found.st_uid, found.st_gid) == (entry.uid, entry.gid)))


def _kept_as_they_are(component: Component, existing: dict[str, Entry], hard_linked: set[str],
                      exclude: tuple[str, ...], set_owner: bool) -> list[str]:
    """The clone's files that apply leaves untouched (neither written nor given new metadata,
    which would move their ctime), in path order."""
    kept = []
    for entry in component.entries:
        have = existing.get(entry.path)
        if (entry.type == FILE and have is not None and _already_there(entry, have, hard_linked)
                and not _metadata_differs(have, entry, set_owner) and not _within(entry.path, exclude)):
            kept.append(entry.path)
    return kept


def _metadata_differs(have: Entry, entry: Entry, set_owner: bool) -> bool:
    """Whether a path already in the tree (as scanned) needs ``entry``'s mode, mtime or owner set."""
    return have.mtime != entry.mtime or _mode_or_owner_differs(have, entry, set_owner)


def _mode_or_owner_differs(have: Entry, entry: Entry, set_owner: bool) -> bool:
    return have.mode != entry.mode or (set_owner and (have.uid, have.gid) != (entry.uid, entry.gid))


def _within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def _ancestors(paths: tuple[str, ...]) -> set[str]:
    """The directories leading to nested components: they stay even if this listing lacks them."""
    return {directory for path in paths for directory in ancestors(path)}


def apply_component(component: Component, payload: Payload, target: Path | Beneath, *, base: Path | Beneath | None,
                    set_owner: bool, progress: Progress | None = None, exclude: tuple[str, ...] = (),
                    target_is_clone_of_base: bool = False, budget: WorkBudget | None = None,
                    known: KnownHashes | None = None,
                    base_listing: Callable[[], Mapping[str, str] | None] | None = None) -> None:
    """Make ``target`` hold the component's new tree.

    ``target`` may be empty or missing (the tree is built from scratch) or may hold an older
    tree: then each changed path is removed and written again, and paths the new tree no longer
    has are removed. ``target`` is scratch until the apply and the check after it succeed: the
    caller discards it on any error. When ``target`` is a clone of ``base`` (a cloned
    environment), files the manifest copies unchanged from the same path are kept as they are.
    ``exclude`` names subtrees (other components nested inside this one, machine-local paths)
    that are left alone; the caller has refused listings that claim them or make their ancestors
    anything but directories (agent/layout.py). Reads come from ``base`` - the running
    environment, never written - so the order of changes in ``target`` cannot corrupt a source.
    Every write, removal and metadata change stays beneath ``target`` and follows no symlink
    (agent/beneath.py, T-STAGE-BENEATH); ``budget`` bounds the work (T-WORK). ``known`` receives
    the SHA-256 of the files written, and of the files kept from a clone (hashed on other
    threads meanwhile), for verify_staged. ``base_listing`` gives the SHA-256 of each file of
    the base release; it is asked for only when a patched file fails to rebuild (BaseTree).

    ``set_owner`` applies numeric ownership (root only).
    Raises StagingError, EscapingPath, CorruptPayload, CorruptObject (the caller discards
    ``target``), OSError.
    """
    if component.is_delta and base is None:
        raise StagingError(f"component {component.name} is a delta from sequence {component.base.sequence}; "
                           "its base tree is needed", hint="name the base tree, or use a full bundle")
    if not isinstance(target, Beneath):
        Path(target).mkdir(mode=0o700, exist_ok=True)
        with Beneath.open_root(Path(target)) as tree:
            return apply_component(component, payload, tree, base=base, set_owner=set_owner, progress=progress,
                                   exclude=exclude, target_is_clone_of_base=target_is_clone_of_base, budget=budget,
                                   known=known, base_listing=base_listing)
    if base is not None and not isinstance(base, Beneath):
        with Beneath.open_root(Path(base)) as base_tree:
            return apply_component(component, payload, target, base=base_tree, set_owner=set_owner,
                                   progress=progress, exclude=exclude, target_is_clone_of_base=target_is_clone_of_base,
                                   budget=budget, known=known, base_listing=base_listing)
    budget = budget or WorkBudget()
    base_tree = BaseTree(base, budget, base_listing) if base is not None else None
    hard_linked: set[str] = set()
    foreign: list[str] = []
    existing = {e.path: e for e in scan_tree(target, with_hashes=False, exclude=exclude, hard_linked=hard_linked,
                                             foreign=foreign)}
    for path in foreign:  # a socket, FIFO or non-UTF-8 name a program made in the environment cloned
        target.remove(path)
    keep = {e.path for e in component.entries} | _ancestors(exclude)
    for path in sorted((p for p in existing if p not in keep), key=lambda p: p.count("/"), reverse=True):
        target.remove(path)
    if known is not None and target_is_clone_of_base:
        known.hash_in_background(target, _kept_as_they_are(component, existing, hard_linked, exclude, set_owner))
    directories = []
    for entry in component.entries:
        if _within(entry.path, exclude):
            continue  # a machine-local path ([layout] preserve): never ours to write
        have = existing.get(entry.path)
        if entry.type == DIR:
            if have is not None and have.type != DIR:
                target.remove(entry.path)
                have = None
            if have is None:
                target.mkdir(entry.path, 0o700)  # final mode after the children exist: it may be read-only
            directories.append(entry)  # its mtime changes with its children: set again, at the end
            continue
        if target_is_clone_of_base and have is not None and _already_there(entry, have, hard_linked):
            if _mode_or_owner_differs(have, entry, set_owner):  # a link has no mode: entry.mode is None
                target.set_metadata(entry.path, mode=entry.mode, owner=_owner(entry, set_owner), mtime=entry.mtime)
            elif have.mtime != entry.mtime:
                target.set_mtime(entry.path, entry.mtime)
            continue
        # Written at its own name, what was there removed first: no rename, which on btrfs costs
        # more than the write of a small file. A target is discarded whole when an apply fails
        # (a staged environment is destroyed, a scratch tree removed), so no step needs to be atomic.
        crashpoint(f"stage {entry.path}")
        if entry.type == FILE:
            fd = target.create(entry.path, replacing=have is not None)
            try:
                hashed = _write_file(entry, fd, payload, base_tree, budget, progress)
                Beneath.set_metadata_fd(fd, mode=entry.mode, owner=_owner(entry, set_owner), mtime=entry.mtime)
                if hashed and known is not None:
                    known.record(entry.path, os.fstat(fd), entry.sha256)  # its ctime is final: nothing follows
            finally:
                os.close(fd)
            continue
        if have is not None:
            target.remove(entry.path)
        if entry.type == SYMLINK:
            target.symlink(entry.target, entry.path)
            target.set_metadata(entry.path, mode=None, owner=_owner(entry, set_owner), mtime=entry.mtime)
        elif entry.type == HARDLINK:
            target.link(entry.target, entry.path)
    for entry in reversed(directories):
        found = target.lstat(entry.path)
        if found is None or not _status_matches(found, entry, set_owner):  # most of a clone's are as they were
            target.set_metadata(entry.path, mode=entry.mode, owner=_owner(entry, set_owner), mtime=entry.mtime)
    if known is not None:
        known.wait()


def verify_staged(component: Component, target: Path | Beneath, *, check_owner: bool,
                  exclude: tuple[str, ...] = (), known: KnownHashes | None = None) -> None:
    """Check the built tree against the manifest, entry by entry (``exclude``: nested components,
    machine-local paths), never following a symlink (agent/tree_audit.py compare, as the audit of an
    installed environment does). A file whose hash ``known`` holds from staging, unchanged since,
    is not read again (agent/known_hashes.py). Raises StagingError naming the first difference,
    EscapingPath."""
    result = compare(component.entries, scan_tree(target, exclude=exclude, known=known), exclude,
                     check_owner=check_owner)
    if not result.clean:
        raise StagingError(f"{component.name}: {result.first} after staging")
