"""``bundle write``: put bundles and their trust-root chain on a stick (docs/STICK.md).

What a device finds on the stick is either complete and verified, or visibly incomplete:

1. read only: check every bundle as a device would against the root chain, all for one
   product; look at what the stick already holds (a complete copy is verified in place);
2. refuse - before writing anything - more bundle folders for the product than a device
   examines (``stick.MAX_BUNDLE_FOLDERS``), a file over FAT32's limit, a different trust root
   claiming a version the stick has, or too little free space;
3. trust files, each root's signatures before the root: temp name -> fsync -> rename ->
   fsync of the folder; then read back;
4. per bundle: remove an incomplete copy (its marker first), copy every file the same way,
   evict it from the page cache, read every byte back and verify it, and only then write
   COMPLETE.

``keys.files.write_atomic`` is not used on the stick: it sets the mode with fchmod, which FAT
cannot store and may refuse; nothing here sets owners or modes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from agent import medium
from agent.format import bundle_dir, stick
from agent.payload import CorruptPayload, Payload
from agent.verify import VerifiedBundle
from bundler.verify import check_bundle
from keys.detached import load_root_chain, signature_paths
from keys.errors import Failed, Refused
from keys.files import fsync_directory, read_capped
from keys.minisign import MAX_SIGNATURE_FILE_BYTES
from keys.rotation import RootCandidate, accept_chain
from keys.trust_root import MAX_ROOT_BYTES, TrustRoot

COPY_BLOCK = 1 << 20
# Directory entries: a long name costs up to 8 x 32 bytes in a FAT directory.
ENTRY_BYTES = 256

Progress = Callable[[str, int, int], None]


class WriteRefused(Refused):
    """The bundles or the stick were examined and cannot be written as asked; nothing was written."""


class TooManyBundles(WriteRefused):
    """The stick would hold more bundle folders for the product than a device accepts."""


class NoSpace(WriteRefused):
    """The stick has less free space than the files to write need."""


class FileTooLarge(WriteRefused):
    """A file exceeds what FAT32 can store (4 GiB - 1)."""


class ReadBackMismatch(Failed):
    """What the stick returns differs from what was written (or, for a kept copy, from the bundle)."""


@dataclass(frozen=True)
class StickFile:
    """One file to put on the stick: small files carry their bytes, volumes their source path."""

    name: str  # relative to its folder on the stick
    size: int
    sha256: str
    data: bytes | None = None
    source: Path | None = None

    @classmethod
    def of_bytes(cls, name: str, data: bytes, source: Path | None = None) -> "StickFile":
        return cls(name, len(data), hashlib.sha256(data).hexdigest(), data=data, source=source)


@dataclass
class RootPlan:
    version: int
    folder: Path
    files: list[StickFile]  # signature files first, the root document last
    to_write: list[StickFile] = field(default_factory=list)


@dataclass
class BundlePlan:
    source: Path
    id: str
    folder: Path
    verified: VerifiedBundle
    files: list[StickFile]  # signature files, the manifest, then the volumes
    state: str = "new"  # new | incomplete | damaged | present
    to_write: list[StickFile] = field(default_factory=list)


@dataclass
class StickPlan:
    stick: Path
    product: str
    roots: list[RootPlan]
    bundles: list[BundlePlan]
    needed: int = 0
    available: int | None = None  # None: the filesystem does not report its size


@dataclass(frozen=True)
class WriteReport:
    stick: Path
    product: str
    roots: list[dict]
    bundles: list[dict]
    needed: int
    available: int | None

    def to_json(self) -> dict:
        return {"stick": str(self.stick), "product": self.product, "roots": self.roots,
                "bundles": self.bundles, "space": {"needed": self.needed, "available": self.available},
                "verified": True}


_STATUS = {"new": "written", "incomplete": "replaced-incomplete", "damaged": "replaced-damaged", "present": "kept"}


def write_stick(stick_path: Path, bundle_dirs: Sequence[Path], root_paths: Sequence[Path], *,
                progress: Progress | None = None, max_file_bytes: int = stick.MAX_FILE_BYTES) -> WriteReport:
    """Write the bundles and the root chain to ``stick_path``, read them back, mark bundles complete.

    Raises WriteRefused (TooManyBundles, NoSpace, FileTooLarge), StickLayoutError, ThresholdNotMet,
    RotationRefused and the other errors of ``check_bundle`` before anything is written;
    ReadBackMismatch and Failed after.
    """
    progress = progress or (lambda step, done, total: None)
    plan = plan_write(Path(stick_path), [Path(d) for d in bundle_dirs], [Path(p) for p in root_paths], progress)
    _check_limits(plan, max_file_bytes)
    _check_space(plan)
    for root in plan.roots:
        _write_root(root)
    for bundle in plan.bundles:
        _write_bundle(bundle, progress)
    return WriteReport(
        stick=plan.stick, product=plan.product,
        roots=[{"version": r.version, "path": str(r.folder / stick.root_name(r.version)),
                "status": "written" if r.to_write else "kept"} for r in plan.roots],
        bundles=[{"id": b.id, "source": str(b.source), "path": str(b.folder), "status": _STATUS[b.state],
                  "bytes": sum(f.size for f in b.files),
                  "components": [f"{c.name} {c.base.version + ' -> ' if c.base else ''}{c.version}"
                                 for c in b.verified.manifest.components]}
                 for b in plan.bundles],
        needed=plan.needed, available=plan.available)


# --- planning: reads only ------------------------------------------------------------------


def plan_write(stick_path: Path, bundle_dirs: list[Path], root_paths: list[Path], progress: Progress) -> StickPlan:
    """Check the inputs and the stick; decide what to write. Writes nothing. Raises as write_stick."""
    candidates = load_root_chain(root_paths)
    trusted = accept_chain(candidates)
    checked: dict[str, tuple[Path, VerifiedBundle]] = {}
    for source in bundle_dirs:
        verified, _ = check_bundle(source, trusted, {}, progress=_relabel(progress, f"checking {source}"))
        checked.setdefault(stick.bundle_id(verified.manifest_bytes), (source, verified))  # named twice: once
    products = sorted({verified.manifest.product for _, verified in checked.values()})
    if len(products) != 1:
        raise WriteRefused(f"the bundles are for different products ({', '.join(products)})",
                           hint="a stick carries one product's folder per write; write each product separately")
    product = products[0]
    trust, bundles = stick.trust_dir(stick_path, product), stick.bundles_dir(stick_path, product)
    for path in (trust.parent, trust, bundles):
        _plain_dir_or_absent(path)
    _check_bundle_count(bundles, product, set(checked))  # from names alone: before any copy is verified
    plan = StickPlan(stick=stick_path, product=product,
                     roots=[_plan_root(trust, c) for c in _one_per_version(candidates)],
                     bundles=[BundlePlan(source=source, id=bundle_id, folder=bundles / bundle_id,
                                         verified=verified, files=_bundle_files(source, verified))
                              for bundle_id, (source, verified) in checked.items()])
    for bundle in plan.bundles:
        _plan_bundle(plan, bundle, progress)
    return plan


def _relabel(progress: Progress, label: str) -> Progress:
    return lambda step, done, total: progress(label, done, total)


def _one_per_version(candidates: list[RootCandidate]) -> list[tuple[int, RootCandidate]]:
    # accept_chain already refused two different documents with one version.
    by_version = {TrustRoot.from_bytes(c.raw, where=c.where).version: c for c in candidates}
    return sorted(by_version.items())


def _signature_files(document: Path, stick_name: str) -> list[StickFile]:
    """The document's signature files, renamed after ``stick_name`` (``DOC.<KEY ID>.minisig``)."""
    return [StickFile.of_bytes(stick_name + path.name[len(document.name):],
                               read_capped(path, MAX_SIGNATURE_FILE_BYTES, what="signature file"), source=path)
            for path in signature_paths(document)]


def _plan_root(folder: Path, versioned: tuple[int, RootCandidate]) -> RootPlan:
    version, candidate = versioned
    name = stick.root_name(version)
    document = StickFile.of_bytes(name, candidate.raw, source=Path(candidate.where))
    plan = RootPlan(version, folder, [*_signature_files(Path(candidate.where), name), document])
    existing = _read_existing(folder / name, MAX_ROOT_BYTES)
    if existing is not None and existing != candidate.raw:  # T-ROOT-FORK
        raise WriteRefused(f"a different trust root with version {version} is already on the stick",
                           where=folder / name,
                           hint="a version is published once; this stick belongs to another trust root "
                                "or the file given is not the published one")
    plan.to_write = [f for f in plan.files
                     if _read_existing(folder / f.name, max(f.size, MAX_SIGNATURE_FILE_BYTES)) != f.data]
    return plan


def _bundle_files(source: Path, verified: VerifiedBundle) -> list[StickFile]:
    """Only what the device reads: signatures, the verified manifest bytes, the signed volumes."""
    manifest_file = bundle_dir.manifest_path(source)
    files = _signature_files(manifest_file, bundle_dir.MANIFEST)
    files.append(StickFile.of_bytes(bundle_dir.MANIFEST, verified.manifest_bytes, source=manifest_file))
    for volume in verified.manifest.volumes:
        files.append(StickFile(f"{bundle_dir.PAYLOAD}/{volume.name}", volume.size, volume.sha256,
                               source=bundle_dir.volume_path(source, volume.name)))
    return files


def _plan_bundle(plan: StickPlan, bundle: BundlePlan, progress: Progress) -> None:
    try:
        info = os.lstat(bundle.folder)
    except FileNotFoundError:
        bundle.state, bundle.to_write = "new", list(bundle.files)
        return
    if not stat.S_ISDIR(info.st_mode):
        raise stick.StickLayoutError("is in the place of a bundle folder and is not a plain folder",
                                     where=bundle.folder, hint="move it away and write again")
    marker = medium.read_marker(plan.stick, plan.product, bundle.id)
    if marker != stick.complete_marker(bundle.verified.manifest_bytes):
        bundle.state = "incomplete"
    else:
        try:
            _verify_copy(bundle, [f for f in bundle.files if f.data is None or f.name == bundle_dir.MANIFEST],
                         _relabel(progress, f"verifying {bundle.id} on the stick"))
            bundle.state = "present"
        except ReadBackMismatch:
            bundle.state = "damaged"
    if bundle.state == "present":
        # A co-signature added since the last write is copied in; the marker stays valid.
        bundle.to_write = [f for f in bundle.files if f.data is not None and f.name != bundle_dir.MANIFEST
                           and _read_existing(bundle.folder / f.name, MAX_SIGNATURE_FILE_BYTES) != f.data]
        return
    if os.path.samefile(bundle.source, bundle.folder):
        raise WriteRefused("the bundle to write is the stick's own incomplete copy", where=bundle.source,
                           hint="write from the bundle that `bundle make` created")
    bundle.to_write = list(bundle.files)


def _plain_dir_or_absent(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        raise stick.StickLayoutError("is not a plain folder (a file or a symlink)", where=path,
                                     hint="move it away and write again")


def _check_bundle_count(bundles: Path, product: str, new_ids: set[str]) -> None:
    """Refuse a write after which devices would refuse the whole stick: more than
    MAX_BUNDLE_FOLDERS entries named like a bundle folder in the product's folder (T-LOG,
    docs/STICK.md "Limits"). Incomplete copies count, as a device counts them; a bundle already
    on the stick, complete or not, is replaced in place and adds none. Raises TooManyBundles."""
    try:
        present = {name for name in os.listdir(bundles) if stick.is_bundle_folder_name(name)}
    except FileNotFoundError:
        present = set()
    except OSError as error:
        raise Failed(f"cannot list the folder: {error.strerror}", where=bundles) from None
    total = len(present | new_ids)
    if total > stick.MAX_BUNDLE_FOLDERS:
        raise TooManyBundles(
            f"the stick would hold {total} bundles for {product} ({len(present)} already there, "
            f"{len(new_ids - present)} new); devices refuse a stick with more than {stick.MAX_BUNDLE_FOLDERS} "
            "bundles per product", where=bundles,
            hint="write fewer bundles to this stick, or remove from this folder the bundles no machine "
                 "needs any more (docs/STICK.md, \"Limits\")")


def _read_existing(path: Path, limit: int) -> bytes | None:
    """A stick file's bytes, or None if absent. Raises StickLayoutError if it is not a regular file."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise stick.StickLayoutError("is not a regular file", where=path, hint="move it away and write again")
    if info.st_size > limit:
        return b""  # cannot be ours: rewritten
    return read_capped(path, limit, what="file on the stick")


def _check_limits(plan: StickPlan, max_file_bytes: int) -> None:
    for files in [r.to_write for r in plan.roots] + [b.to_write for b in plan.bundles]:
        for file in files:
            if file.size > max_file_bytes:
                raise FileTooLarge(f"{file.size} bytes is more than a FAT32 file can hold ({max_file_bytes})",
                                   where=file.source,
                                   hint="make the bundle again with a smaller --volume-size")


def _allocated(size: int, cluster: int) -> int:
    return -(-size // cluster) * cluster + ENTRY_BYTES


def _check_space(plan: StickPlan) -> None:
    """Refuse before writing when the files cannot fit; counts what removing incomplete copies frees."""
    info = os.statvfs(plan.stick)
    writes = any(r.to_write for r in plan.roots) or any(b.state != "present" or b.to_write for b in plan.bundles)
    if writes and info.f_flag & os.ST_RDONLY:  # a stick with nothing to write is still verified
        raise WriteRefused("the stick is mounted read-only", where=plan.stick,
                           hint="check the stick's write-protect switch, then mount it read-write")
    cluster = info.f_frsize or info.f_bsize
    trust, bundles = stick.trust_dir(plan.stick, plan.product), stick.bundles_dir(plan.stick, plan.product)
    new_dirs = [d for d in (trust.parent, trust, bundles) if not d.exists()]
    folder = cluster + ENTRY_BYTES  # a folder takes at least one cluster of directory entries
    needed = len(new_dirs) * folder
    freed = 0
    for root in plan.roots:
        needed += sum(_allocated(f.size, cluster) for f in root.to_write)
    for bundle in plan.bundles:
        needed += sum(_allocated(f.size, cluster) for f in bundle.to_write)
        if bundle.state != "present":
            needed += 2 * folder + _allocated(65, cluster)  # the bundle's folder, payload/, COMPLETE
        if bundle.state in ("incomplete", "damaged"):
            freed += _usage(bundle.folder)
    plan.needed = needed
    if info.f_blocks == 0:
        # Some FUSE drivers (fusefat) report no size at all. Running out of space mid-write is safe
        # (the bundle gets no COMPLETE marker), so this is reported rather than refused.
        return
    plan.available = info.f_bavail * info.f_frsize + freed
    if plan.needed > plan.available:
        raise NoSpace(f"the stick has {_size(plan.available)} free, the files to write need {_size(plan.needed)}",
                      where=plan.stick, hint="use a larger stick, or write fewer bundles to this one")


def _usage(folder: Path) -> int:
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            total += os.lstat(os.path.join(directory, name)).st_blocks * 512
    return total


def _size(count: int) -> str:
    return f"{count} bytes ({count / (1 << 20):.1f} MiB)"


# --- writing ---------------------------------------------------------------------------------


def _write_root(root: RootPlan) -> None:
    if root.to_write:
        _make_dirs(root.folder)
        for file in root.to_write:  # signatures before the document: a root on the stick is never unsigned
            _put(root.folder / file.name, file, lambda n: None)
        fsync_directory(root.folder)
    for file in root.files:
        _read_back(root.folder / file.name, file)


def _write_bundle(bundle: BundlePlan, progress: Progress) -> None:
    if bundle.state in ("incomplete", "damaged"):
        _remove(bundle.folder)
    if bundle.to_write:
        _make_dirs(bundle.folder / bundle_dir.PAYLOAD)
        total, done = sum(f.size for f in bundle.to_write), 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            progress(f"copying {bundle.id}", done, total)

        for file in bundle.to_write:
            _put(bundle.folder / file.name, file, advance)
        fsync_directory(bundle.folder / bundle_dir.PAYLOAD)
        fsync_directory(bundle.folder)
    if bundle.state != "present":
        _verify_copy(bundle, bundle.files, _relabel(progress, f"reading back {bundle.id}"))
        marker = stick.complete_marker(bundle.verified.manifest_bytes)
        _put(bundle.folder / stick.COMPLETE, StickFile.of_bytes(stick.COMPLETE, marker), lambda n: None)
        fsync_directory(bundle.folder)
        _read_back(bundle.folder / stick.COMPLETE, StickFile.of_bytes(stick.COMPLETE, marker))
    else:
        for file in bundle.to_write:
            _read_back(bundle.folder / file.name, file)


def _make_dirs(path: Path) -> None:
    """Create missing folders (no mode is set: FAT has none) and make each new entry durable."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except OSError as error:
            raise Failed(f"cannot create the folder: {error.strerror}", where=directory) from None
        fsync_directory(directory.parent)


def _remove(folder: Path) -> None:
    """Remove a bundle folder, its marker first: a half-removed folder must never look complete."""
    try:
        os.unlink(folder / stick.COMPLETE)
        fsync_directory(folder)
    except (FileNotFoundError, IsADirectoryError):
        pass
    try:
        shutil.rmtree(folder)  # fd-based on Linux: does not follow symlinks inside
    except OSError as error:
        raise Failed(f"cannot remove the incomplete copy: {error.strerror}", where=folder) from None
    fsync_directory(folder.parent)


def _blocks(file: StickFile) -> Iterator[bytes]:
    if file.data is not None:
        view = memoryview(file.data)
        for start in range(0, len(view), COPY_BLOCK):
            yield view[start:start + COPY_BLOCK]
        return
    try:
        fd = os.open(file.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        raise Failed(f"cannot open: {error.strerror}", where=file.source) from None
    try:
        while block := os.read(fd, COPY_BLOCK):
            yield block
    finally:
        os.close(fd)


def _put(target: Path, file: StickFile, advance: Callable[[int], None]) -> None:
    """temp name -> write -> fsync -> drop from the page cache -> rename. The caller fsyncs the folder.

    The bytes are hashed as they are copied: a source that changed since it was checked is caught
    here, before it can be marked complete.
    """
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise Failed(f"cannot write: {error.strerror}", where=target) from None
    digest, size = hashlib.sha256(), 0
    try:
        for block in _blocks(file):
            digest.update(block)
            size += len(block)
            view = memoryview(block)
            while view:
                view = view[os.write(fd, view):]
            advance(len(block))
        if size != file.size or digest.hexdigest() != file.sha256:
            raise Failed("changed while being copied to the stick", where=file.source,
                         hint="leave the bundle alone while it is written, then write again")
        os.fsync(fd)
        # Written pages are clean after fsync; dropping them makes the read-back come from the stick.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError as error:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise Failed(f"cannot write: {error.strerror}", where=target,
                     hint="the stick may be full, read-only or removed") from None
    except BaseException:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(temp, target)
    except OSError as error:
        raise Failed(f"cannot rename into place: {error.strerror}", where=target) from None


# --- reading back ----------------------------------------------------------------------------


def _open_evicted(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ReadBackMismatch("is missing on the stick", where=path,
                               hint="the stick may have been removed; write again") from None
    except OSError as error:
        raise ReadBackMismatch(f"cannot be opened on the stick: {error.strerror}", where=path) from None
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def _read_back(path: Path, expected: StickFile) -> None:
    """Read ``path`` from the stick and compare its size and SHA-256. Raises ReadBackMismatch."""
    fd = _open_evicted(path)
    try:
        info = os.fstat(fd)
        digest = hashlib.sha256()
        if stat.S_ISREG(info.st_mode) and info.st_size == expected.size:
            while block := os.read(fd, COPY_BLOCK):
                digest.update(block)
    except OSError as error:
        raise ReadBackMismatch(f"cannot be read back: {error.strerror}", where=path) from None
    finally:
        os.close(fd)
    if digest.hexdigest() != expected.sha256:
        raise ReadBackMismatch("reads back different from what was written", where=path,
                               hint="the stick may be failing: write again, or use another stick")


def _verify_copy(bundle: BundlePlan, files: list[StickFile], progress: Progress) -> None:
    """Every byte of the bundle's copy on the stick: small files by hash, the payload object by
    object and volume by volume with the device's own reader. Raises ReadBackMismatch."""
    for file in files:
        if file.data is not None:
            _read_back(bundle.folder / file.name, file)
    volumes = [f for f in files if f.data is None]
    if not volumes:
        return
    for volume in volumes:
        os.close(_open_evicted(bundle.folder / volume.name))
    manifest = bundle.verified.manifest
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress("", done, manifest.payload_size)

    try:
        with Payload(bundle.folder, manifest) as payload:
            payload.verify_all(advance)
    except CorruptPayload as error:
        for volume in volumes:  # name the file that differs, not only the object
            _read_back(bundle.folder / volume.name, volume)
        raise ReadBackMismatch(f"the payload reads back different from what was written: {error.message}",
                               where=bundle.folder, hint="the stick may be failing: write again, or use another stick")
