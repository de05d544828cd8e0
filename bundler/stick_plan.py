"""Planning a stick write: check every input as a device would and look at what the stick holds.

Reads only. It decides, per trust root and per bundle, which files still have to be written;
a bundle already complete on the stick is verified in place and kept.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent import medium
from agent.format import bundle_dir, stick
from agent.verify import VerifiedBundle
from agent.progress import Progress, relabeled
from bundler.stick_copy import ReadBackMismatch, StickFile, verify_copy
from bundler.verify import check_bundle
from keys.detached import load_root_chain, signature_paths
from keys.errors import Failed, Refused
from keys.files import read_capped
from keys.minisign import MAX_SIGNATURE_FILE_BYTES
from keys.rotation import RootCandidate, VerifiedRoot, accept_chain, trust_anchor
from keys.trust_root import MAX_ROOT_BYTES, TrustRoot


class WriteRefused(Refused):
    """The bundles or the stick were examined and cannot be written as asked; nothing was written."""


class TooManyBundles(WriteRefused):
    """The stick would hold more bundle folders for the product than a device accepts."""


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
    anchor: VerifiedRoot  # the oldest root given: a device provisioned with it walks the stick's chain
    needed: int = 0
    available: int | None = None  # None: the filesystem does not report its size


def plan_write(stick_path: Path, bundle_dirs: list[Path], root_paths: list[Path], progress: Progress) -> StickPlan:
    """Check the inputs and the stick; decide what to write. Writes nothing.

    Raises WriteRefused, TooManyBundles, StickLayoutError, and the errors of ``check_bundle``
    and ``accept_chain`` (ThresholdNotMet, RotationRefused...).
    """
    candidates = load_root_chain(root_paths)
    trusted = accept_chain(candidates)
    checked: dict[str, tuple[Path, VerifiedBundle]] = {}
    for source in bundle_dirs:
        verified, _ = check_bundle(source, trusted, {}, progress=relabeled(progress, f"checking {source}"))
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
                              for bundle_id, (source, verified) in checked.items()],
                     anchor=trust_anchor(candidates[0]))
    for bundle in plan.bundles:
        _plan_bundle(plan, bundle, progress)
    return plan


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
            verify_copy(bundle.folder, bundle.verified.manifest,
                        [f for f in bundle.files if f.data is None or f.name == bundle_dir.MANIFEST],
                        progress, f"verifying {bundle.id} on the stick")
            bundle.state = "present"
        except ReadBackMismatch:
            bundle.state = "damaged"
    if bundle.state == "present" and _stray_signatures(bundle):
        bundle.state = "damaged"  # a device reads every signature file there, and one not ours may not parse
    if bundle.state == "present":
        # A co-signature added since the last write is copied in; the marker stays valid.
        bundle.to_write = [f for f in bundle.files if f.data is not None and f.name != bundle_dir.MANIFEST
                           and _read_existing(bundle.folder / f.name, MAX_SIGNATURE_FILE_BYTES) != f.data]
        return
    if os.path.samefile(bundle.source, bundle.folder):
        raise WriteRefused("the bundle to write is the stick's own incomplete copy", where=bundle.source,
                           hint="write from the bundle that `bundle make` created")
    bundle.to_write = list(bundle.files)


def _stray_signatures(bundle: BundlePlan) -> list[str]:
    """Signature files in the stick's copy that the bundle written does not have (a hand copy's)."""
    ours = {f.name for f in bundle.files}
    return [p.name for p in signature_paths(bundle.folder / bundle_dir.MANIFEST) if p.name not in ours]


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
