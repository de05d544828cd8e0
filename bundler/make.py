"""``bundle make``: the smallest signed bundle that takes machines from a base release to a new one.

Per file of a changed component (docs/FORMAT.md, "How files are carried"):

* same content somewhere in the base (unchanged, moved, renamed, duplicated) -> copied from
  the base on the device, no data in the bundle;
* changed -> patch chunks against one region each of a base file: where the chunk's pieces are
  found by content (bundler/base_index.py), else of the most similar base file (same path, else
  same name, else same path with digits ignored); zstd patches, bsdiff ones for executables,
  each chunk falling back to raw bytes when that is smaller;
* new -> the same where its content is found in the base, else plain zstd chunks (or raw bytes
  when compression does not help);
* removed -> implied: the manifest lists the complete new tree.

Files are cut into chunks of at most ``chunk_size`` bytes, each patched against a base region of
at most ``PREFIX_BYTES``, so memory stays bounded for multi-GiB files on both sides. How a chunk
or a gzip file is encoded is bundler/encoders.py's; the manifest lists the codecs used. Work runs on
threads (libzstd releases the GIL; bundler/workers.py) but results are written in a fixed order,
so the same inputs and keys give byte-identical bundles.

Progress is reported per piece of a chunk as the workers encode it, and per file while a delta is
planned. An interrupt (KeyboardInterrupt, or SIGTERM as agent/cli/interrupt.py raises it) stops
the workers at their next piece and removes the partial output on the way out; partial outputs
that dead processes left beside ``--out`` are removed by the next run (docs/OPERATOR.md).
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

from agent.format import bundle_dir, codec
from agent.format.manifest import (FORMAT, MAX_CHUNK_BYTES, MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_PREFIX_BYTES, READS,
                                   Base, Component, Manifest, MalformedManifest, check_component, signature_comment,
                                   store, stored_json)
from agent.format.paths import PathError
from agent.format.tree import FILE, SETUID_SETGID, Chunk, Entry, Prefix, tree_digest
from agent.mounts import UNMOUNT_HINT, mount_points_inside
from agent.progress import Progress
from agent.scan import as_content, scan_tree
from bundler import encoders
from bundler.base_index import BaseIndex, Match
from bundler.blocks import BlockPacker
from bundler.recipes import Found, find_recipes
from bundler.encoders import Source
from bundler.release import Release, ReleaseComponent
from bundler.tree_stamps import check_unchanged, stamps
from keys.detached import signature_path
from keys.errors import AlreadyExists, Failed, Refused
from keys.files import fsync_directory, write_atomic
from keys.secret_key import SecretKey
from keys.signing import sign
from keys.strict_json import JSONShapeError
from bundler.volumes import VolumeWriter
from bundler.partial import partial_path, remove_stale_partials
from bundler.key_files import secret_key_files
from bundler.xattrs import with_xattrs
from bundler.workers import Counter, MemoryBudget, Workers

# 8 MiB: the chunks in flight, their base regions and frames, and the results waiting to be
# written in order fit 256 MiB of memory with two workers (16 MiB chunks: 267 MiB on one file).
DEFAULT_CHUNK_BYTES = 8 << 20
# Prefix + chunk stay within 64 MiB: single-threaded level 19 loses long matches beyond that.
PREFIX_BYTES = 48 << 20
DEFAULT_VOLUME_BYTES = 2 << 30
# What the encodings in flight may hold together (bundler/encoders.py memory_needed): with the
# process's own ~60 MiB (the release's listing, the results waiting to be written in order),
# bundle make stays within 256 MiB at any file size.
ENCODING_MEMORY_BYTES = 192 << 20
# What the chunks handed to the encoding threads ahead of their turn to be written may hold
# beyond two per thread (bundler/workers.py ordered_map): results waiting in memory. Counted in
# input bytes, four default chunks made the 2 GiB synthetic tree's peak 255 MiB, two 253 MiB.
ENCODED_AHEAD_BYTES = 2 * DEFAULT_CHUNK_BYTES
DEFAULT_LEVEL = 19
# The window of a component's last block, 4 MiB. That block and the one before it are sealed when
# the component's last results come in, and are compressed after every other encoding: at level 19
# the one before's match tables (81 MiB) and this one's at a full window did not fit the budget
# together, so one waited for the other (the platform pair: 1.5 s more of bundle make). With this
# window its tables take 49 MiB; the bytes of the platform pair's last block did not grow. Only the
# last block: a 4 MiB window on every block made the kernel pair's 0.25% larger.
LAST_BLOCK_WINDOW_LOG = 22
# New content up to this size that compresses goes into a block as it is (bundler/blocks.py):
# small files share one frame's context, as in a tar.zst. Bigger ones fill their own frame.
SOLID_CONTENT_BYTES = 1 << 20


class MakeRefused(Refused):
    """The release cannot be turned into a bundle as asked."""


@dataclass(frozen=True)
class MakeOptions:
    full: bool = False
    level: int = DEFAULT_LEVEL
    volume_size: int = DEFAULT_VOLUME_BYTES
    chunk_size: int = DEFAULT_CHUNK_BYTES
    threads: int = max(1, min(4, os.cpu_count() or 1))
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    downgrades: dict[str, tuple[int, ...]] = field(default_factory=dict)
    format: int = FORMAT  # 2: for devices whose agent reads nothing newer
    codecs: frozenset[str] = frozenset(encoders.NAMES)  # what the devices' agent has (--codecs)

    def avoided(self) -> tuple[str, ...]:
        """The object encodings a chunk may not use: those left out of ``codecs``, and bsdiff
        without ``block``, as its patches are stored only in blocks."""
        return tuple(name for name, encoder in encoders.ENCODERS.items()
                     if name not in self.codecs or (encoder.in_block and codec.BLOCK.name not in self.codecs))


@dataclass(frozen=True)
class _ChunkJob:
    """Encode bytes [offset, offset + size) of a new file's content, maybe against a base region."""

    source: Source
    offset: int
    size: int
    reference: Source | None = None
    prefix: Prefix | None = None


# --- choosing what to carry -------------------------------------------------------------------


def _component_entries(component: ReleaseComponent) -> list[Entry]:
    """Scan a release tree and apply its content policy (games: content only, owned by 0:0)."""
    entries = scan_tree(component.path)
    if component.policy == "system":
        return entries
    for entry in entries:
        if entry.mode is not None and entry.mode & SETUID_SETGID:
            raise MakeRefused(f"{entry.path!r} has a setuid/setgid bit; game components are content only",
                              where=component.path, hint="clear the bit (chmod u-s,g-s) in the release tree")
        sticky_folder = entry.type == "dir" and entry.mode & 0o1000
        if entry.mode is not None and entry.mode & 0o002 and not sticky_folder:
            raise MakeRefused(f"{entry.path!r} is writable by every user (mode {entry.mode:04o}); devices refuse "
                              "games another local process could change", where=component.path,
                              hint="chmod o-w it in the release tree (a shared folder needs the sticky bit, +t)")
    return as_content(entries)


def _similar_base_file(path: str, size: int, base_files: dict[str, Entry], by_name: dict[str, list[Entry]],
                       by_blind_path: dict[str, list[Entry]]) -> Entry | None:
    """The base file most likely to share content with new file ``path`` (OSTree pairs by name)."""
    same = base_files.get(path)
    if same is not None:
        return same
    for candidates in (by_name.get(posixpath.basename(path)), by_blind_path.get(_digits_blind(path))):
        if candidates:
            return min(candidates, key=lambda e: (abs(e.size - size), e.path))
    return None


def _digits_blind(path: str) -> str:
    return re.sub(r"[0-9]+", "#", path)


def _chunk_jobs(size: int, source: Source, reference: Entry | None, reference_source: Source | None,
                reference_size: int, chunk_size: int, found: _Found | None = None,
                base_hashes: bool = False) -> list[_ChunkJob]:
    """``base_hashes``: prefixes name their base file's SHA-256 (format 2)."""
    jobs = []
    if found is not None and found.matches:
        cuts = found.index.cuts(found.matches, size, chunk_size, PREFIX_BYTES)
    else:
        cuts = [(offset, min(chunk_size, size - offset)) for offset in range(0, size, chunk_size)]
    for offset, length in cuts:
        prefix, prefix_source = None, reference_source
        region = found.index.region(found.matches, offset, length, PREFIX_BYTES) if found is not None else None
        # Pieces found by content place the region; a named pair that shares no piece with the
        # chunk (a recompiled binary: similar, not equal) is still the better reference.
        if region is not None and (reference is None or region.found >= length // 8):
            prefix = Prefix(path=region.entry.path, offset=region.offset, length=region.length,
                            sha256=region.entry.sha256 if base_hashes else None)
            prefix_source = Source(found.base_root / region.entry.path)
        elif reference is not None and reference_size > 0:
            region_size = min(reference_size, PREFIX_BYTES)
            # Map the chunk's position proportionally into the base file and centre the region on it.
            centre = (offset + length // 2) * reference_size // size
            start = min(max(0, centre - region_size // 2), reference_size - region_size)
            prefix = Prefix(path=reference.path, offset=start, length=region_size,
                            gunzip=reference_source.gunzip, elf_tables=reference_source.elf_tables,
                            sha256=reference.sha256 if base_hashes else None)
        jobs.append(_ChunkJob(source=source, offset=offset, size=length,
                              reference=prefix_source if prefix else None, prefix=prefix))
    return jobs


@dataclass(frozen=True)
class _Found:
    """The pieces of a new file found in the base tree at ``base_root`` (bundler/base_index.py)."""

    index: BaseIndex
    base_root: Path
    matches: list[Match]


def _encode(job: _ChunkJob, options: MakeOptions, budget: MemoryBudget,
            tick: encoders.Tick | None = None) -> tuple[str, bytes, bool]:
    """``(encoding, stored, in a block)``: the smallest encoding of the chunk (encoders.smallest)
    that ``options.codecs`` allows, within the memory budget; a small chunk that compresses is
    stored as it is, in a block (``SOLID_CONTENT_BYTES``), where blocks are allowed."""
    level = options.level
    region_size = job.prefix.length if job.prefix is not None else 0
    # First the probe, for what it alone holds: incompressible data is then encoded at a quick
    # level, whose tables are a fraction of level 19's, so two such chunks of a big asset
    # against 48 MiB regions fit the budget together (84 MiB each instead of 153; the synthetic
    # game tree was encoded on one core). While the next reservation waits, only the probe's
    # answer is held (its frame, for incompressible data): the chunk is read again after.
    probed: tuple[int, bytes | None] = (level, None)
    if encoders.probes(job.size, level):
        with budget.held(encoders.memory_needed(job.size, 0, encoders.PROBE_LEVEL)):
            probed = encoders.probe_chunk(job.source.read(job.offset, job.size), level)
    with budget.held(encoders.memory_needed(job.size, region_size, probed[0])):
        data = job.source.read(job.offset, job.size)
        region = job.reference.read(job.prefix.offset, job.prefix.length) if job.prefix is not None else None
        encoding, stored = encoders.smallest(data, level, region, tick, probed=probed, avoid=options.avoided())
        if (encoding == encoders.ZSTD.name and job.size <= SOLID_CONTENT_BYTES
                and codec.BLOCK.name in options.codecs):
            return encoders.RAW.name, data, True
        return encoding, stored, encoders.ENCODERS[encoding].in_block


def _block_frame(level: int, budget: MemoryBudget, last: bool) -> Callable[[bytes], bytes]:
    window_log = LAST_BLOCK_WINDOW_LOG if last else None

    def frame(content: bytes) -> bytes:
        with budget.held(encoders.memory_needed(len(content), 0, level, window_log)):
            return encoders.compress(content, level, window_log=window_log)
    return frame


def _store(writer: VolumeWriter, blocks: BlockPacker, job: _ChunkJob, encoding: str, stored: bytes,
           in_block: bool, options: MakeOptions) -> tuple[str, str]:
    """``(encoding, object id)`` of the chunk once ``writer`` or ``blocks`` holds it. Bytes already
    stored under another encoding (a file that is the zstd frame stored for another file, stored
    raw) cannot be listed twice, so the chunk is stored its next-best way instead: objects stay
    one per id."""
    def add(encoding: str, stored: bytes, in_block: bool) -> str | None:
        return blocks.add(stored, encoding) if in_block else writer.add(stored, encoding)

    object_id = add(encoding, stored, in_block)
    if object_id is not None:
        return encoding, object_id
    data = job.source.read(job.offset, job.size)
    region = job.reference.read(job.prefix.offset, job.prefix.length) if job.prefix is not None else None
    for other, stored in encoders.ranked(data, options.level, region, avoid=(encoding, *options.avoided())):
        object_id = add(other, stored, encoders.ENCODERS[other].in_block)
        if object_id is not None:
            return other, object_id
    raise Failed("every encoding of a chunk collides with bytes stored under another encoding",
                 where=job.source.path, hint="report this release to the bundler's maintainers")


# --- the bundle -------------------------------------------------------------------------------


@dataclass
class _Plan:
    component: ReleaseComponent
    base: ReleaseComponent | None
    base_digest: str | None
    entries: list[Entry]
    jobs: dict[str, list[_ChunkJob]]  # path -> chunk jobs, for files that carry data
    removed: tuple[str, ...] = ()


def _check_xattrs(component: ReleaseComponent, entries: list[Entry], dropped: list[tuple[str, str]] | None) -> None:
    """Refuses the component's files that have extended attributes, which no bundle carries
    (bundler/xattrs.py); ``dropped``, if given, receives ``(component, path)`` of each instead."""
    found = with_xattrs(component.path, entries)
    if dropped is not None:
        dropped.extend((component.name, path) for path, _ in found)
        return
    first = next(found, None)
    if first is None:
        return
    path, names = first
    more = sum(1 for _ in found)
    others = f", and so do {more} more paths" if more > 1 else ", and so does 1 more path" if more else ""
    raise MakeRefused(f"{path!r} of component {component.name} has extended attributes "
                      f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}){others}; bundles do not "
                      "carry them, so devices would install it without them", where=component.path,
                      hint="remove them from the release tree (setfacl -b, setfattr -x NAME), or make the "
                           "bundle with --drop-xattrs if the machines do without them or set them themselves "
                           "(systemd-tmpfiles sets /var/log/journal's ACLs at boot)")


def _refuse_secret_keys(component: ReleaseComponent, entries: list[Entry]) -> None:
    """A secret key in the tree would be on every machine: whoever opens one could sign bundles
    (bundler/key_files.py)."""
    path = next(secret_key_files(component.path, entries), None)
    if path is not None:
        raise MakeRefused(f"{path!r} of component {component.name} is a secret signing key; a bundle would put "
                          "it on every machine, where whoever reads it could sign bundles", where=component.path,
                          hint="move it out of the release tree: secret keys stay on the signing machine (if a "
                               "bundle ever carried it, rotate it out: docs/TRUST.md, \"Rotating after a lost or "
                               "stolen key\")")


def _plan_component(component: ReleaseComponent, base: ReleaseComponent | None, options: MakeOptions,
                    progress: Progress | None = None, xattrs_dropped: list[tuple[str, str]] | None = None) -> _Plan:
    if progress is not None:  # hashing the trees: no total known, the bar shows the time it takes
        progress(f"scanning {component.name}", 0, 0)
    entries = _component_entries(component)
    _refuse_secret_keys(component, entries)
    _check_xattrs(component, entries, xattrs_dropped)
    if base is None:
        plan_entries, jobs = [], {}
        for entry in entries:
            if entry.type == FILE and entry.size:
                jobs[entry.path] = _chunk_jobs(entry.size, Source(component.path / entry.path), None, None, 0,
                                               options.chunk_size)
            plan_entries.append(entry)
        return _Plan(component, None, None, plan_entries, jobs)
    base_entries = _component_entries(base)
    base_files = {e.path: e for e in base_entries if e.type == FILE}
    by_content: dict[str, Entry] = {}
    by_name: dict[str, list[Entry]] = {}
    by_blind_path: dict[str, list[Entry]] = {}
    for entry in base_files.values():
        if entry.size:
            by_content.setdefault(entry.sha256, entry)
            by_name.setdefault(posixpath.basename(entry.path), []).append(entry)
            by_blind_path.setdefault(_digits_blind(entry.path), []).append(entry)
    carried = [e for e in entries if e.type == FILE and e.size and e.sha256 not in by_content]
    searched, total = 0, sum(e.size for e in carried)

    def read(size: int) -> None:  # planning reads the carried files: gzip recipes (bundler/recipes.py)
        nonlocal searched
        searched += size
        if progress is not None:
            progress(f"planning {component.name}", searched, total)
    # The base is indexed on a thread while other processes search the recipes and this one
    # waits for them (the platform pair: 0.8 s of indexing, 1.3 s of searching, 0.3 s saved).
    with Workers(1) as indexer:
        indexing = indexer.submit(lambda files: BaseIndex(base.path, files), list(base_files.values()))
        recipes = (find_recipes([(component.path / e.path, e.size) for e in carried], options.threads, read)
                   if encoders.GZIP_RECIPE.name in options.codecs else {})
        if progress is not None and not indexing.done():
            progress(f"indexing the base of {component.name}", 0, 0)
        index = indexing.result()
    plan_entries, jobs = [], {}
    for entry in entries:
        if entry.type == FILE and entry.size:
            same = base_files.get(entry.path)
            if same is not None and same.sha256 == entry.sha256:
                entry = replace(entry, base_path=entry.path)
            elif entry.sha256 in by_content:
                entry = replace(entry, base_path=by_content[entry.sha256].path)
            else:
                entry, jobs[entry.path] = _delta_jobs(entry, recipes.get(component.path / entry.path), component,
                                                      base, base_files, by_name, by_blind_path, index,
                                                      options)
        plan_entries.append(entry)
    new_paths = {e.path for e in entries}
    removed = tuple(e.path for e in base_entries if e.path not in new_paths)  # already in listing order
    return _Plan(component, base, tree_digest(base_entries), plan_entries, jobs, removed)


def _delta_jobs(entry: Entry, recipe: Found, component: ReleaseComponent, base: ReleaseComponent,
                base_files: dict[str, Entry], by_name: dict[str, list[Entry]], by_blind_path: dict[str, list[Entry]],
                index: BaseIndex, options: MakeOptions) -> tuple[Entry, list[_ChunkJob]]:
    """Jobs for a changed or new file of a delta. A gzip file with a ``recipe`` (it re-deflates
    bit for bit) is carried as its content (the gzip-recipe codec); only deltas do this, so a
    full bundle never depends on the device's zlib."""
    source = Source(component.path / entry.path)
    size = entry.size
    if recipe is not None and not set(codec.used_by((), [replace(entry, gzip=recipe[0])])) <= options.codecs:
        recipe = None  # it needs gzip-blocks or gzip-shape, which the devices lack: carried as it is
    if recipe is not None:
        entry = replace(entry, gzip=recipe[0])
        source, size = Source(source.path, gunzip=True), recipe[1]
    elif encoders.ELF_TABLES.name in options.codecs and encoders.has_elf_tables(source.path, size):
        entry = replace(entry, elf_tables=True)
        source = Source(source.path, elf_tables=True)
    reference = _similar_base_file(entry.path, entry.size, base_files, by_name, by_blind_path)
    reference_source, reference_size = None, 0
    if reference is not None:
        reference_source, reference_size = Source(base.path / reference.path), reference.size
        gunzipped = encoders.GZIP_RECIPE.content_size(reference_source.path) if recipe is not None else None
        if gunzipped is not None:
            reference_source, reference_size = Source(reference_source.path, gunzip=True), gunzipped
        elif entry.elf_tables and encoders.has_elf_tables(reference_source.path, reference_size):
            reference_source = Source(reference_source.path, elf_tables=True)
    # Pieces found by content are of the files' bytes as they are, which a re-coded file no longer is.
    found = None if source.gunzip or source.elf_tables else _Found(index, base.path, index.matches(source.path, size))
    return entry, _chunk_jobs(size, source, reference, reference_source, reference_size, options.chunk_size, found,
                              base_hashes=options.format == 2)


def _select_components(release: Release, base: Release | None, options: MakeOptions) -> list[tuple]:
    if base is not None and base.product != release.product:
        raise MakeRefused(f"the base release is for product {base.product!r}, the new one for "
                          f"{release.product!r}", where=base.source)
    selected = []
    for name in sorted(release.components, key=lambda n: (n != "platform", n)):
        component = release.components[name]
        previous = base.components.get(name) if base is not None else None
        if previous is not None and component.sequence == previous.sequence:
            if tree_digest(_component_entries(component)) != tree_digest(_component_entries(previous)):
                raise MakeRefused(f"component {name} changed but its sequence is still {component.sequence}",
                                  where=release.source, hint="raise the sequence in the new release.toml")
            continue
        if previous is not None and component.sequence < previous.sequence:
            allowed = options.downgrades.get(name, ())
            if previous.sequence not in allowed:
                raise MakeRefused(
                    f"component {name} goes down from sequence {previous.sequence} to {component.sequence}; "
                    "devices refuse that without a signed permission",
                    hint=f"add --allow-downgrade {name}={previous.sequence} if this downgrade is intended")
        selected.append((component, None if options.full else previous))
    if not selected:
        raise MakeRefused("no component changed between the base and the new release (all sequences equal)",
                          where=release.source)
    return selected


def make_bundle(release: Release, base: Release | None, keys: list[SecretKey], out: Path,
                options: MakeOptions = MakeOptions(), progress: Progress | None = None,
                xattrs_dropped: list[tuple[str, str]] | None = None) -> Manifest:
    """Write a signed bundle directory at ``out`` (which must not exist). Returns its manifest.
    ``progress(step, done, total)`` hears how far planning and encoding are, from any thread.
    A carried tree holding a secret key file is refused (bundler/key_files.py), and so is a
    carried file, folder or link with extended attributes (bundler/xattrs.py), unless
    ``xattrs_dropped`` is given: it receives ``(component, path)`` of each, and the bundle is
    made without them.

    Raises MakeRefused, UnsupportedFile, Failed, OSError; on any error or interrupt nothing is left
    at ``out`` and no partial output beside it.
    """
    out = Path(out)
    if out.exists():
        raise AlreadyExists("already exists; bundles are never overwritten", where=out,
                            hint="choose another --out or remove the old bundle")
    if options.format not in READS:
        raise MakeRefused(f"format {options.format} cannot be written; this bundler writes formats "
                          f"{' and '.join(map(str, READS))}", hint="use --format 2 or 3")
    _check_codecs(options.codecs)
    for name in options.targets:
        if name not in release.components:
            raise MakeRefused(f"--target names component {name!r}, which the release does not have")
    _refuse_output_inside_a_tree(out, release, base)
    remove_stale_partials(out.parent)
    staging = partial_path(out)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _create(staging)  # first: a parent that cannot take the bundle fails before hours of encoding
        _refuse_other_filesystems(release, base)
        trees = _trees(release, base)
        before = {tree: stamps(tree) for tree in trees}
        plans = [_plan_component(c, b, options, progress, xattrs_dropped)
                 for c, b in _select_components(release, base, options)]
        _check_counts(plans, release)
        writer = VolumeWriter(staging / bundle_dir.PAYLOAD, options.volume_size)
        used: set[str] = set()
        with Workers(options.threads) as workers:
            components = [_encode_component(plans.pop(0), writer, options, used, workers, progress)
                          for _ in range(len(plans))]  # a plan's listing and jobs go once it is encoded
            writer.close()
            manifest = Manifest(product=release.product, hardware=release.hardware, components=tuple(components),
                                objects=tuple(writer.objects), volumes=tuple(writer.volumes), format=options.format)
            # The manifest lists the codecs its objects and entries use (Manifest.codecs): exactly those used.
            assert manifest.codecs == tuple(sorted(used)), (manifest.codecs, used)
            assert used <= options.codecs, (used, options.codecs)
            manifest_json = manifest.to_bytes()
            # What is returned is the manifest parsed back: both listings at once held 50 MiB more at
            # the entry limit.
            del manifest, components
            _check_size(manifest_json, release)
            # Compressing the manifest is the longest step no other work overlaps: the checks run meanwhile.
            compressing = workers.submit(store, manifest_json)
            try:  # never emit what a device would refuse
                manifest = Manifest.from_bytes(manifest_json)
                for tree in trees:  # every read is done: what was hashed is what was encoded
                    check_unchanged(tree, before[tree])
                manifest_bytes = compressing.result()
                assert stored_json(manifest_bytes) == manifest_json
            except MalformedManifest as error:
                raise MakeRefused(f"the release breaks a bundle rule: {error.message}", where=release.source) from None
        write_atomic(bundle_dir.manifest_path(staging), manifest_bytes)
        for key in keys:
            write_atomic(signature_path(bundle_dir.manifest_path(staging), key.id),
                         sign(key, manifest_bytes, signature_comment(release.product)).to_bytes())
        fsync_directory(staging)
        os.rename(staging, out)
        fsync_directory(out.parent)
        return manifest
    except BaseException:  # an interrupt too: nothing stays behind
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _trees(release: Release, base: Release | None) -> list[Path]:
    """The folders the bundle is made from, each once (a nested component's is inside another's)."""
    paths = {c.path.resolve() for c in (*release.components.values(), *(base.components.values() if base else ()))}
    return sorted(p for p in paths if not any(p != q and p.is_relative_to(q) for q in paths))


def _refuse_other_filesystems(release: Release, base: Release | None) -> None:
    """A filesystem mounted inside a release or base tree would be read as the release's files: a
    chroot's /proc left mounted after a build never ends, its /dev is refused file by file. A
    component's own folder may be a mount point (another component nested in it, too)."""
    roots = {c.path.resolve(): (what, c.name) for what, r in (("release", release), ("base", base)) if r
             for c in r.components.values()}
    for root, (what, name) in sorted(roots.items()):
        for mounted in mount_points_inside(root):
            if mounted.resolve() not in roots:
                raise MakeRefused(f"another filesystem is mounted here, inside the {what} tree of component {name}",
                                  where=mounted, hint=UNMOUNT_HINT)


def _refuse_output_inside_a_tree(out: Path, release: Release, base: Release | None) -> None:
    """The bundle is written while the trees are scanned: inside one, its own partial folder would
    be carried to every device (or, inside a base tree, make the delta's base a tree nobody has)."""
    where = out.resolve()
    for tree in [*release.components.values(), *(base.components.values() if base else ())]:
        if where.is_relative_to(tree.path.resolve()):
            raise MakeRefused(f"--out {out} is inside the tree of component {tree.name} ({tree.path})", where=out,
                              hint="write the bundle outside every release and base tree")


def _create(staging: Path) -> None:
    """Raises OSError naming the folder that refused (``--out``'s parent), not our partial name."""
    try:
        staging.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as error:
        if error.filename is None or Path(error.filename) != staging:
            raise
        raise OSError(error.errno, error.strerror, str(staging.parent)) from None


# T-EXHAUST: devices refuse a manifest beyond these limits (docs/FORMAT.md, "Limits"), which keep
# the agent's memory bounded. The parse of the finished manifest below catches every limit; these
# say which one in the release's terms, and the counts before hours of encoding.
_SPLIT = "make one bundle per component (a release.toml listing only some of them); one component cannot exceed it"


def _check_counts(plans: list[_Plan], release: Release) -> None:
    for what, count in (("entries", sum(len(p.entries) for p in plans)),
                        ("removed paths", sum(len(p.removed) for p in plans))):
        if count > MAX_ENTRIES:
            raise MakeRefused(f"the bundle would list {count} {what}; devices accept at most {MAX_ENTRIES} "
                              "in one bundle (MAX_ENTRIES, docs/FORMAT.md \"Limits\")", where=release.source,
                              hint=_SPLIT)


def _check_codecs(codecs: frozenset[str]) -> None:
    unknown = sorted(codecs - set(codec.CODECS))
    if unknown:
        raise MakeRefused(f"--codecs names {', '.join(unknown)}, which this bundler does not know; it knows "
                          f"{', '.join(codec.CODECS)}", hint="name the codecs the machines' agent has, as its "
                                                            "refusal of a bundle lists them")
    missing = [name for name in (encoders.RAW.name, encoders.ZSTD.name) if name not in codecs]
    if missing:
        raise MakeRefused(f"--codecs leaves out {' and '.join(missing)}, which every agent has and a bundle may "
                          "need", hint="add it to --codecs")


def _check_size(manifest_json: bytes, release: Release) -> None:
    if len(manifest_json) > MAX_MANIFEST_BYTES:
        raise MakeRefused(f"the manifest would be {len(manifest_json)} bytes of JSON; devices accept at most "
                          f"{MAX_MANIFEST_BYTES} (MAX_MANIFEST_BYTES, docs/FORMAT.md \"Limits\")", where=release.source,
                          hint=_SPLIT)


def _encode_component(plan: _Plan, writer: VolumeWriter, options: MakeOptions, used: set[str], workers: Workers,
                      progress: Progress | None) -> Component:
    """The component with its chunks stored by ``writer``; adds the codecs it used to ``used``."""
    all_jobs = [job for jobs in plan.jobs.values() for job in jobs]
    tick = Counter(progress, f"encoding {plan.component.name}", sum(job.size for job in all_jobs), workers)
    budget = MemoryBudget(ENCODING_MEMORY_BYTES, workers.check)
    results: Iterator[tuple[str, bytes, bool]] = workers.ordered_map(
        lambda job: _encode(job, options, budget, tick), all_jobs, size=lambda job: job.size,
        result_size=lambda result: len(result[1]), ahead_bytes=ENCODED_AHEAD_BYTES)
    blocks = BlockPacker(writer, lambda content, last: workers.submit(_block_frame(options.level, budget, last),
                                                                      content))
    entries = []
    for entry in plan.entries:
        jobs = plan.jobs.get(entry.path)
        if jobs:
            chunks = []
            for job in jobs:
                encoding, object_id = _store(writer, blocks, job, *next(results), options)
                used.add(encoding)
                chunks.append(Chunk(object=object_id, size=job.size,
                                    prefix=job.prefix if encoders.ENCODERS[encoding].patch else None))
            entry = replace(entry, chunks=tuple(chunks))
        if codec.ELF_TABLES.used_by(entry):
            used.add(encoders.ELF_TABLES.name)
        if entry.gzip is not None:  # a gzip file of empty content has a recipe but no chunks
            used.add(encoders.GZIP_RECIPE.name)
            if entry.gzip.shape is not None:
                used.add(encoders.GZIP_SHAPE.name)
            if entry.gzip.block_ends is not None:
                used.add(encoders.GZIP_BLOCKS.name)
        entries.append(entry)
    blocks.flush()
    if any(o.block is not None for o in writer.objects):
        used.add(codec.BLOCK.name)
    component = plan.component
    result = Component(
        name=component.name, version=component.version, sequence=component.sequence, policy=component.policy,
        tree_digest=tree_digest(entries), entries=tuple(entries),
        base=(Base(sequence=plan.base.sequence, version=plan.base.version, tree_digest=plan.base_digest)
              if plan.base is not None else None),
        targets=options.targets.get(component.name, ()),
        downgrade_from=options.downgrades.get(component.name, ()), removed=plan.removed)
    try:
        check_component(result, {o.id: o for o in writer.objects})
    except (JSONShapeError, PathError) as error:
        raise MakeRefused(f"component {component.name}: {error}", where=component.path,
                          hint="fix the release tree") from None
    return result


assert DEFAULT_CHUNK_BYTES <= MAX_CHUNK_BYTES and PREFIX_BYTES <= MAX_PREFIX_BYTES
