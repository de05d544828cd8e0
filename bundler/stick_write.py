"""``bundle write``: put bundles and their trust-root chain on a stick (docs/STICK.md).

What a device finds on the stick is either complete and verified, or visibly incomplete:

1. read only: check every bundle as a device would against the root chain, all for one
   product; look at what the stick already holds (a complete copy is verified in place);
2. refuse - before writing anything - more bundle folders for the product than a device
   examines (``stick.MAX_BUNDLE_FOLDERS``), a file over FAT32's limit, a different trust root
   claiming a version the stick has, or too little free space;
3. trust files, each root's signatures before the root: temp name -> fsync -> rename ->
   fsync of the folder; then read back;
4. remove every incomplete or damaged copy to be written again (its marker first), all before
   the first bundle is written, since the space check counted what they free; then per bundle
   copy every file the same way, evict it from the page cache, read every byte back and verify
   it, and only then write COMPLETE;
5. read the product's folder as a device does, from the oldest root given, the stick's own
   trust roots and every signature file included (``stick_check.py``): a bundle a device would
   refuse there fails the write (exit 1), naming it.

The steps live beside this module: planning, which only reads (``stick_plan.py``), the limits
and the free space (``stick_space.py``), and the copy and read-back of each file
(``stick_copy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from agent.format import bundle_dir, stick
from agent.progress import Progress, step_counter
from bundler.stick_check import check_as_a_device
from bundler.stick_copy import StickFile, make_dirs, put, read_back, remove_bundle_folder, verify_copy
from bundler.stick_plan import BundlePlan, RootPlan, plan_write
from bundler.stick_space import check_limits, check_space
from keys.files import fsync_directory


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
    ReadBackMismatch, DevicesWouldRefuse and Failed after.
    """
    progress = progress or (lambda step, done, total: None)
    plan = plan_write(Path(stick_path), [Path(d) for d in bundle_dirs], [Path(p) for p in root_paths], progress)
    check_limits(plan, max_file_bytes)
    check_space(plan)
    for bundle in plan.bundles:  # first: the space check counted what they free
        if bundle.state in ("incomplete", "damaged"):
            remove_bundle_folder(bundle.folder)
    for root in plan.roots:
        _write_root(root)
    for bundle in plan.bundles:
        _write_bundle(bundle, progress)
    check_as_a_device(plan.stick, plan.product, plan.anchor, [bundle.id for bundle in plan.bundles])
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


def _write_root(root: RootPlan) -> None:
    if root.to_write:
        make_dirs(root.folder)
        for file in root.to_write:  # signatures before the document: a root on the stick is never unsigned
            put(root.folder / file.name, file, lambda n: None)
        fsync_directory(root.folder)
    for file in root.files:
        read_back(root.folder / file.name, file)


def _write_bundle(bundle: BundlePlan, progress: Progress) -> None:
    if bundle.to_write:
        make_dirs(bundle.folder / bundle_dir.PAYLOAD)
        advance = step_counter(progress, f"copying {bundle.id}", sum(f.size for f in bundle.to_write))
        for file in bundle.to_write:
            put(bundle.folder / file.name, file, advance)
        fsync_directory(bundle.folder / bundle_dir.PAYLOAD)
        fsync_directory(bundle.folder)
    if bundle.state != "present":
        verify_copy(bundle.folder, bundle.verified.manifest, bundle.files, progress, f"reading back {bundle.id}")
        marker = StickFile.of_bytes(stick.COMPLETE, stick.complete_marker(bundle.verified.manifest_bytes))
        put(bundle.folder / stick.COMPLETE, marker, lambda n: None)
        fsync_directory(bundle.folder)
        read_back(bundle.folder / stick.COMPLETE, marker)
    else:
        for file in bundle.to_write:
            read_back(bundle.folder / file.name, file)
