"""The hostile-stick corpus: attacks a stick can carry, tried on a real provisioned device.

Every case starts from an honest stick - the trust root the device was provisioned with and the
delta d12 from release 1 to 2, both made by the real tools - changes one thing in the
simulator's model (tests/sim/stick.py), writes the stick, and inserts it into a cabinet at
release 1 with the real ``bundle-agent on-insert``. The case names the text the agent must
print and its exit code. Then the device must be exactly as it was: the running environment's
tree digest, the committed state's bytes, the list of environments, no pending install, and the
trust roots it holds (unless the stick carries a legitimate rotation). An attack found before
anything is written leaves no staging in the audit log. Corruption only visible while staging
leaves ``staging-failed`` there, with the new environment gone.

Why some cases expect exit 0: an authentic bundle that is not for this machine, or not for its
current state (an older release, another product, a delta from another base), is not an
integrity failure. docs/AGENT.md: such a medium exits 0 with "nothing was installed"
and gives each bundle's reason. Exit 3 is for media refused for integrity or trust reasons.

docs/THREAT-MODEL.md maps every case name to the threat it covers (checked below).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pytest
import zstandard

from agent.format import codec, stick
from agent.format.bundle_dir import MANIFEST, PAYLOAD
from agent.format.manifest import (MAX_CHUNK_BYTES, MAX_CHUNKS, MAX_ENTRIES, MAX_MANIFEST_BYTES,
                                   MAX_STORED_MANIFEST_BYTES, Base, StoredObject)
from agent.format.tree import Chunk, Entry, tree_digest
from agent.state_dir import StateDir
from agent.scan import scan_tree
from keys.detached import signature_path
from keys.strict_json import MAX_VALUES
from keys.trust_root import Role
from tests.sim.device import STAGED, Cabinet, World
from tests.sim.stick import (BundleModel, StickSim, dir_entry, file_entry, flip, hardlink_entry,
                             move_behind_symlink, replace_with_fifo, replace_with_socket, symlink_entry)
from tests.sim.summary import count_summary
from tests.sim.tools import BIN

REFUSED = 3  # examined and refused, device unchanged (docs/AGENT.md, "Commands and exit codes")
NOT_APPLICABLE = 0  # authentic, but nothing on it is for this machine in its current state
AGENT_TIMEOUT = 10  # seconds (a case takes well under 2): a stick must never make the agent wait
THREAT_MODEL = Path(__file__).resolve().parent.parent / "docs" / "THREAT-MODEL.md"

WHEEL = "game/fortune-wheel"  # new in d12: a full component
LUCKY = "game/lucky-sevens"  # a delta from the installed 1.0 in d12
NOWHERE = "sha256:" + "0" * 64  # a tree digest no device has


@dataclass(frozen=True)
class Case:
    """One hostile stick. ``attack`` changes the model; ``expect`` is the text the agent must print:
    a string, several strings, or a function of the model after the attack (for key ids, volume
    names and other values that differ from one run to the next)."""

    name: str
    threat: str  # its row in docs/THREAT-MODEL.md
    attack: Callable[[StickSim], object]
    expect: str | tuple[str, ...] | Callable[[StickSim], str | tuple[str, ...]]
    exit: int = REFUSED
    staged: bool = False  # only visible while staging: the staging must be discarded
    setup: Callable[[Cabinet, StickSim, Path], None] | None = None  # runs before the "before" snapshot
    rotates: bool = False  # the stick carries a valid rotation, which the device may keep
    medium: str | None = None  # None: insert the stick; a bundle name: `install` that bundle's folder
    layout: str = "separate"  # the device's [layout] (LAYOUTS)
    timeout: int = 10  # seconds the agent may take (a stick must never make it wait)
    stick: str = "stick"  # the stick's directory name (os.fsdecode of its bytes, which need not be UTF-8)
    via: str = ""  # appended to the medium's path as a technician might type it ("payload/..")
    audit_records: int | None = None  # the run must add exactly this many audit records...
    audit_bytes: int | None = None  # ...and grow the audit log by at most this many bytes


# --- the honest starting points ---------------------------------------------------------------------


def d12(sim: StickSim) -> BundleModel:
    return sim.bundle("d12")


def d12_volumes(sim: StickSim) -> BundleModel:
    """d12 as ``bundle make --volume-size 16K`` makes it (volumes of 16, 16, 16 and 1.2 KiB), instead of d12."""
    sim.bundles.pop("d12", None)
    return sim.bundle("d12-vols")


def only(sim: StickSim, name: str) -> BundleModel:
    """The stick carries this bundle alone (d12 beside it would be installed)."""
    model = sim.bundle(name)
    for other in [n for n in sim.bundles if n != name]:
        del sim.bundles[other]
    return model


def wheel_data(sim: StickSim) -> bytes:
    return (sim.world.dir / "r2/games/fortune-wheel/wheel.dat").read_bytes()


def wheel_object(sim: StickSim) -> str:
    return d12(sim).entry(WHEEL, "wheel.dat").chunks[0].object


def rotation_to_rel3(sim: StickSim):
    """Root 2 as the vendor publishes it: rel1 retired (and so revoked), rel3 added."""
    return sim.rotate(remove_signers=["rel1"], add_signers=["rel3"])


def accept_root_2(cabinet: Cabinet, sim: StickSim, tmp_path: Path) -> None:
    """Setup: the device already walked to root 2, from an earlier honest stick."""
    earlier = StickSim(sim.world)
    rotation_to_rel3(earlier)
    result = cabinet.agent("on-insert", earlier.write(tmp_path / "earlier-stick"))
    assert result.returncode in (0, STAGED) and (cabinet.dir / "state/trust/root-2.json").exists(), result.stderr


def commit_release_2(cabinet: Cabinet, sim: StickSim, tmp_path: Path) -> None:
    """Setup: the device installed release 2 and committed it (platform sequence 7)."""
    cabinet.agent("install", sim.world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)


# --- trust ----------------------------------------------------------------------------------------


def duplicate_signature(sim: StickSim) -> None:
    """rel1's signature twice: as DOC.<ID>.minisig and as minisign's default DOC.minisig."""
    model = d12(sim).sign_with("rel1")
    model.signature_files = {f"{MANIFEST}.minisig": model.signatures()[0].to_bytes()}


def signatures_under_each_others_names(sim: StickSim) -> None:
    """rel1's and rel2's genuine signatures, each in the file named for the other's key: stored by
    that name, one would take the place of the other's good signature (T-SIGSTORE)."""
    model = d12(sim)
    rel1, rel2 = model.signatures()
    model.sign_with()
    model.signature_files = {f"{MANIFEST}.{rel1.key_id_text}.minisig": rel2.to_bytes(),
                             f"{MANIFEST}.{rel2.key_id_text}.minisig": rel1.to_bytes()}


def named_for_another_key(sim: StickSim) -> str:
    first, second = sorted([sim.keys.id("rel1"), sim.keys.id("rel2")])
    return f"the file is named for key {first} but holds a signature by key {second}"


def mix_and_match(sim: StickSim) -> None:
    """full-2's genuine signatures beside d12's manifest."""
    model = d12(sim)
    model.foreign, model.signers = sim.bundle("full-2").signatures(), []
    del sim.bundles["full-2"]


def trust_root_as_manifest(sim: StickSim) -> None:
    """The signed trust root, compressed like a manifest and signed by both release signers."""
    d12(sim).stored = codec.compress(Path(sim.world.root).read_bytes(), 3)


def manifest_as_trust_root(sim: StickSim) -> None:
    """d12's manifest JSON as root-2.json, signed by both root keys."""
    rotation_to_rel3(sim).raw = d12(sim).manifest.to_bytes()


def forged_root(sim: StickSim) -> None:
    """A forged stick brings its own root 1 (the attacker's keys) and a bundle signed under it."""
    forged = replace(sim.root, root_keys=Role((sim.keys.named("mallory-root"),), 1),
                     release_signers=Role((sim.keys.named("mallory-rel"),), 1))
    sim.roots[0] = replace(sim.roots[0], root=forged, signers=["mallory-root"])
    d12(sim).sign_with("mallory-rel")


def forged_rotation(sim: StickSim) -> None:
    """Root 2 naming only the attacker's keys, signed by them, and a bundle signed under it."""
    new = replace(sim.root, version=2, root_keys=Role((sim.keys.named("mallory-root"),), 1),
                  release_signers=Role((sim.keys.named("mallory-rel"),), 1),
                  revoked_keys=tuple(sim.root.all_keys().values()))
    sim.add_root(new, ["mallory-root"])
    d12(sim).sign_with("mallory-rel")


def skipped_root(sim: StickSim) -> None:
    """Roots 2 and 3 are valid, but the stick carries only 1 and 3, and a bundle that only root 2 or
    3 accepts (rel3 joined in root 2)."""
    rotation_to_rel3(sim)
    sim.rotate(add_root_keys=["root3"])
    del sim.roots[1]
    d12(sim).sign_with("rel2", "rel3")


def un_revoking_root(sim: StickSim) -> None:
    """Root 3, signed by every root key, brings back rel1, which root 2 revoked."""
    two = rotation_to_rel3(sim).root
    sim.add_root(replace(two, version=3, revoked_keys=(),
                         release_signers=Role((*two.release_signers.keys, sim.keys.named("rel1")), 2)),
                 ["root1", "root2"])


def root_dropping_unrevoked(sim: StickSim) -> None:
    """Root 2 drops rel1 without listing it as revoked, so a later root could quietly bring it back."""
    sim.add_root(replace(sim.root, version=2,
                         release_signers=Role((sim.keys.named("rel2"), sim.keys.named("rel3")), 2)),
                 ["root1", "root2"])


def forked_root(sim: StickSim) -> None:
    """Two different documents claim version 2, both validly signed (one under another file name)."""
    two = rotation_to_rel3(sim).root
    sim.add_root(replace(two, release_signers=Role(two.release_signers.keys, 1)), ["root1", "root2"],
                 name="root-3.json")


# --- content ---------------------------------------------------------------------------------------


def without_keys(model) -> None:
    """A stick attacker holds no key: the signatures stay those of the honest bytes."""
    model.foreign, model.signers = model.signatures(), []


def manifest_changed_without_keys(sim: StickSim) -> None:
    model = d12(sim)
    without_keys(model)
    model.set_component("platform", downgrade_from=(8,))  # any change to the signed bytes


def manifest_bit_flipped(sim: StickSim) -> None:
    """One bit of the manifest file flipped on the stick; folder and marker still the honest ones."""
    model = d12(sim)
    honest = model.manifest_file()
    without_keys(model)
    model.folder, model.marker = stick.bundle_id(honest), stick.complete_marker(honest)
    model.stored = flip(honest)


def signature_bit_flipped(part: str) -> Callable[[StickSim], None]:
    """rel1's signature with one bit flipped in the signature itself or in its trusted comment."""
    def attack(sim: StickSim) -> None:
        model = d12(sim)
        rel1 = model.signatures()[0]
        if part == "signature":
            bad = replace(rel1, signature=flip(rel1.signature))
        else:
            text = rel1.trusted_comment
            bad = replace(rel1, trusted_comment=text[:-1] + chr(ord(text[-1]) ^ 1))
        model.signers, model.foreign = ["rel2"], [bad]
    return attack


def signature_truncated(sim: StickSim) -> None:
    model = d12(sim)
    rel1 = model.signatures()[0].to_bytes()
    model.sign_with("rel2").signature_files = {
        f"{MANIFEST}.{sim.keys.id('rel1')}.minisig": b"\n".join(rel1.split(b"\n")[:2]) + b"\n"}


def root_changed_after_signing(sim: StickSim) -> None:
    """A valid root 2 whose release-signer threshold was lowered from 2 to 1 after the signing."""
    model = rotation_to_rel3(sim)
    without_keys(model)
    model.raw = model.root.to_bytes().replace(b'"threshold": 2\n  },\n  "revoked_keys"',
                                              b'"threshold": 1\n  },\n  "revoked_keys"')
    assert model.raw != model.root.to_bytes()


def root_signature_bit_flipped(sim: StickSim) -> None:
    model = rotation_to_rel3(sim)
    root1 = model.signatures()[0]
    model.signers, model.foreign = ["root2"], [replace(root1, signature=flip(root1.signature))]


def object_error(model: BundleModel, offset: int) -> str:
    """The refusal for a damaged payload byte at ``offset``: the object holding it, and its volumes."""
    stored = next(o for o in model.manifest.objects if o.offset <= offset < o.offset + o.size)
    names, position = [], 0
    for volume in model.manifest.volumes:
        if position < stored.offset + stored.size and position + volume.size > stored.offset:
            names.append(volume.name)
        position += volume.size
    return f"object {stored.id[:16]} (in volume {', '.join(names)}) does not match its hash"


def volume_bit_flipped(index: int, last: bool = False) -> Callable[[StickSim], None]:
    def attack(sim: StickSim) -> None:
        model = d12_volumes(sim)
        data = model.volume_bytes[index]
        model.volume_bytes[index] = flip(data, len(data) - 1 if last else 0)
    return attack


def volume_bit_flipped_error(index: int, last: bool = False) -> Callable[[StickSim], str]:
    def expect(sim: StickSim) -> str:
        model = sim.bundle("d12-vols")
        start = sum(v.size for v in model.manifest.volumes[:index])
        return object_error(model, start + (model.manifest.volumes[index].size - 1 if last else 0))
    return expect


def second_volume_error(sim: StickSim) -> str:
    model = sim.bundle("d12-vols")
    return object_error(model, model.manifest.volumes[0].size)


def volume_from_another_bundle(sim: StickSim) -> None:
    """Volume 2 replaced by as many bytes of full-2's volume: the size is right, the bytes are not."""
    model = d12_volumes(sim)
    model.volume_bytes[1] = sim.bundle("full-2").volume_bytes[0][:len(model.volume_bytes[1])]
    del sim.bundles["full-2"]


def volumes_reordered(sim: StickSim) -> None:
    model = d12_volumes(sim)
    model.volume_bytes[1], model.volume_bytes[2] = model.volume_bytes[2], model.volume_bytes[1]


def volumes_reordered_signed(sim: StickSim) -> None:
    """An insider lists volumes 2 and 3 the other way round (each name still its own hash)."""
    model = d12_volumes(sim)
    volumes = list(model.manifest.volumes)
    volumes[1], volumes[2] = volumes[2], volumes[1]
    model.manifest = replace(model.manifest, volumes=tuple(volumes))
    model.volume_bytes[1], model.volume_bytes[2] = model.volume_bytes[2], model.volume_bytes[1]


def extra_volume_signed(sim: StickSim) -> None:
    model = d12_volumes(sim)
    model.volume_bytes.append(b"an extra volume that no object covers")  # 37 bytes
    model.sync_volumes()


def last_volume_resized(by: int) -> Callable[[StickSim], None]:
    def attack(sim: StickSim) -> None:
        model = d12_volumes(sim)
        data = model.volume_bytes[3]
        model.volume_bytes[3] = data[:by] if by < 0 else data + bytes(by)
    return attack


def volume_size_error(index: int, actual: int) -> Callable[[StickSim], str]:
    def expect(sim: StickSim) -> str:
        volume = sim.bundle("d12-vols").manifest.volumes[index]
        return f"volume {volume.name} has {actual} bytes, the manifest says {volume.size}"
    return expect


def add(component: str, *entries: Entry) -> Callable[[StickSim], None]:
    """An insider adds entries to a component of d12 (listing order and tree digest kept right)."""
    return lambda sim: d12(sim).edit(component, add=entries)


def change(component: str, path: str, **fields) -> Callable[[StickSim], None]:
    """An insider changes fields of one entry of d12 (the tree digest kept right)."""
    return lambda sim: d12(sim).edit(component, change={path: fields})


def gzip_content_mismatch(sim: StickSim) -> None:
    entry = d12(sim).entry("platform", "usr/share/doc/cabinet/changelog.gz")
    d12(sim).edit("platform", change={entry.path: dict(gzip=replace(entry.gzip, sha256="0" * 64))})


def patch_base_mismatch(sim: StickSim) -> None:
    """reels.dat's patch names a region of the installed reels.dat other than the one it was made
    against. The base file is the installed one (its kept manifest says so): the bundle is named."""
    chunk = d12(sim).entry(LUCKY, "reels.dat").chunks[0]
    other = replace(chunk.prefix, offset=chunk.prefix.offset + 1, length=chunk.prefix.length - 1)
    d12(sim).edit(LUCKY, change={"reels.dat": dict(chunks=(replace(chunk, prefix=other),))})


def patch_region_beyond_2_63(sim: StickSim) -> None:
    """reels.dat's patch region starts 100 bytes before 2^63 - 1, the largest offset the format allows."""
    chunk = d12(sim).entry(LUCKY, "reels.dat").chunks[0]
    d12(sim).edit(LUCKY, change={"reels.dat": dict(chunks=(replace(chunk, prefix=replace(chunk.prefix,
                                                                                          offset=(1 << 63) - 100)),))})


def copy_source_mismatch(sim: StickSim) -> None:
    """A new file said to be a copy of the installed usr/bin/sudo, with other content."""
    d12(sim).edit("platform", add=[file_entry("usr/bin/sudo-copy", b"#!/bin/sh\nexec /bin/sh -p\n",
                                              base_path="usr/bin/sudo")])


def copy_source_through_symlink(sim: StickSim) -> None:
    """A new file copied from usr/bin/engine, which on the device is a symlink (to the engine)."""
    engine = (sim.world.dir / "r1/platform/usr/bin/cabinet-engine").read_bytes()
    d12(sim).edit("platform", add=[file_entry("usr/bin/engine-copy", engine, mode=0o755, base_path="usr/bin/engine")])


# --- payload objects an insider can sign -------------------------------------------------------------


@lru_cache(maxsize=None)
def bomb(size: int, byte: bytes = b"\0") -> bytes:
    """A small zstd frame that really expands to ``size`` bytes and says so (1 GiB: 32 KiB)."""
    out = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=True, write_checksum=False)
    with compressor.stream_writer(out, size=size, closefd=False) as writer:
        block = byte * (1 << 20)
        for _ in range(size >> 20):
            writer.write(block)
    return out.getvalue()


def reframe(frame: bytes, *, content_size: int | None, window_log: int) -> bytes:
    """The same zstd blocks under a rewritten frame header (RFC 8878, 3.1.1.1): any window size, any
    declared content size or none. The blocks still decode; only the header lies."""
    descriptor = frame[4]
    single_segment, dict_flag, size_flag = descriptor >> 5 & 1, descriptor & 3, descriptor >> 6
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    blocks = frame[start + ((1 if single_segment else 0), 2, 4, 8)[size_flag]:]
    header = bytes([3 << 6 if content_size is not None else 0, (window_log - 10) << 3])
    return frame[:4] + header + (content_size.to_bytes(8, "little") if content_size is not None else b"") + blocks


def block_members(model: BundleModel) -> tuple[StoredObject, list[StoredObject]]:
    """The first block of a bundle and its members."""
    block = next(o for o in model.manifest.objects if o.encoding == "block")
    return block, [o for o in model.manifest.objects if o.block == block.id]


def first_block(model: BundleModel) -> tuple[StoredObject, list[StoredObject], bytes]:
    """The first block of a bundle, its members and its content."""
    block, members = block_members(model)
    return block, members, codec.decompress(dict(model.objects())[block], sum(m.size for m in members))


def store_block(sim: StickSim, content_of: Callable[[bytes], bytes]) -> None:
    """An insider stores another frame as full-2's first block (small files of release 2
    compressed together; hashed and signed): of the content ``content_of`` makes from the real
    one; the members keep their ids and places."""
    model = only(sim, "full-2")
    block, _, content = first_block(model)
    model.replace_object(block.id, codec.compress(content_of(content), 3))


def block_member_error(sim: StickSim) -> str:
    block, members = block_members(sim.bundle("full-2"))
    return f"object {members[0].id[:16]} (in block {block.id[:16]}) does not match its hash"


def blocks_taken_in_turn(sim: StickSim) -> None:
    """An insider's full-2 with two full blocks and 200 one-byte files that take turns between
    them: without a charge, each file would make the device decode 16 MiB again."""
    model = only(sim, "full-2")
    frames, members, files = [], [], []
    for number, letter in enumerate((b"x", b"y")):
        filler = bytes([number]) * (codec.MAX_BLOCK_BYTES - 1)
        frame = codec.compress(filler + letter, 1)
        block = StoredObject(id=hashlib.sha256(frame).hexdigest(), offset=0, size=len(frame), encoding="block")
        frames.append((block, frame))
        members += [StoredObject(id=hashlib.sha256(filler).hexdigest(), offset=0, size=len(filler), encoding="raw",
                                 block=block.id),
                    StoredObject(id=hashlib.sha256(letter).hexdigest(), offset=len(filler), size=1, encoding="raw",
                                 block=block.id)]
    model.manifest = replace(model.manifest, objects=model.manifest.objects + tuple(members))
    model.repack([*model.objects(), *frames])
    for number in range(200):
        letter = (b"x", b"y")[number % 2]
        files.append(file_entry(f"turn-{number:03}", letter, chunks=(Chunk(hashlib.sha256(letter).hexdigest(), 1),)))
    model.edit(WHEEL, add=files)


def store_wheel(sim: StickSim, stored: bytes, *, size: int | None = None) -> None:
    """An insider stores ``stored`` as wheel.dat's object (a zstd object, hashed and signed), and may
    make the listing claim the file is the first ``size`` bytes of the real one."""
    model = d12(sim)
    model.replace_object(wheel_object(sim), stored, encoding="zstd")
    if size is not None:
        chunk = model.entry(WHEEL, "wheel.dat").chunks[0]
        model.edit(WHEEL, change={"wheel.dat": dict(
            size=size, sha256=hashlib.sha256(wheel_data(sim)[:size]).hexdigest(), chunks=(replace(chunk, size=size),))})


# --- resource exhaustion -------------------------------------------------------------------------------


def json_edit(change: Callable[[dict], None]) -> Callable[[StickSim], None]:
    """An insider's build machine writes whatever JSON it likes into d12's manifest and signs it."""
    def attack(sim: StickSim) -> None:
        model = d12(sim)
        document = json.loads(model.manifest.to_bytes())
        change(document)
        model.manifest_json, model.level = json.dumps(document).encode(), 3
    return attack


def a_million_entries(document: dict) -> None:
    next(c for c in document["components"] if c["name"] == WHEEL)["entries"] = [{}] * 1_000_001


def deep_json(prefix: bytes) -> bytes:
    """A JSON object whose first field nests 100,000 lists deep, then ``prefix``'s fields."""
    return b'{"deep": ' + b"[" * 100_000 + b"]" * 100_000 + b", " + prefix[1:]


def manifest_nested_deep(sim: StickSim) -> None:
    model = d12(sim)
    model.manifest_json, model.level = deep_json(model.manifest.to_bytes()), 3


def manifest_duplicate_key(sim: StickSim) -> None:
    """Two readers could disagree on which "product" counts: the parser must refuse, not pick one."""
    model = d12(sim)
    model.manifest_json = b'{"product": "other-cabinet", ' + model.manifest.to_bytes()[1:]


def seventy_signature_files(sim: StickSim) -> None:
    model = d12(sim)
    rel1 = model.signatures()[0].to_bytes()
    model.signature_files = {f"{MANIFEST}.{i:016X}.minisig": rel1 for i in range(70)}


def root_over_1_mib(sim: StickSim) -> None:
    model = rotation_to_rel3(sim)
    document = json.loads(model.root.to_bytes())
    document["padding"] = "x" * (1 << 20)  # unknown fields are allowed in a root; its size is bounded
    model.raw = json.dumps(document).encode()


def padded_to(characters: int, *, wide: bool = False) -> Callable[[StickSim], None]:
    """d12's manifest as a build machine could sign it, padded with spaces after its closing brace (valid
    JSON) to ``characters`` characters; if ``wide``, with a folder named by an emoji in the wheel game,
    which makes CPython hold every character of the text in 4 bytes (docs/FORMAT.md, "Limits")."""
    def attack(sim: StickSim) -> None:
        model = d12(sim)
        if wide:
            model.edit(WHEEL, add=[dir_entry("\U0001F3B0")])
        text = model.manifest.to_bytes().decode()
        model.manifest_json, model.level = (text + " " * (characters - len(text))).encode(), 3
    return attack


def over_the_limit_in_two(field: str, components: tuple[str, ...], item) -> Callable[[dict], None]:
    """Half of MAX_ENTRIES and one ``item`` in ``field`` of each of two components: each list is within
    the limit, their sum is not, and nothing of either may be built before that is known."""
    def change(document: dict) -> None:
        for component in document["components"]:
            if component["name"] in components:
                component[field] = [item] * (MAX_ENTRIES // 2 + 1)
    return change


def wheel_in_chunks(count: int) -> Callable[[dict], None]:
    """wheel.dat listed as ``count`` chunks (its one chunk again and again): one entry is read whole."""
    def change(document: dict) -> None:
        wheel = next(c for c in document["components"] if c["name"] == WHEEL)
        entry = next(e for e in wheel["entries"] if e["path"] == "wheel.dat")
        entry["chunks"] = entry["chunks"] * count
    return change


# --- the medium ------------------------------------------------------------------------------------------


def after_writing(where: Callable[[StickSim, Path], Path], do: Callable[[Path, Path], None], *,
                  rotate: bool = False) -> Callable[[StickSim], None]:
    """What no model can say: once the stick is written, ``do(path, stick)`` to one of its paths."""
    def attack(sim: StickSim) -> None:
        if rotate:
            rotation_to_rel3(sim)
        d12(sim)
        sim.after.append(lambda root: do(where(sim, root), root))
    return attack


def first_volume(sim: StickSim, path: Path) -> Path:
    return sim.volume_file(path, "d12")


def manifest_file(sim: StickSim, path: Path) -> Path:
    return sim.bundle_dir(path, "d12") / MANIFEST


def rel1_signature_file(sim: StickSim, path: Path) -> Path:
    return signature_path(sim.bundle_dir(path, "d12") / MANIFEST, sim.keys.id("rel1"))


def root1_signature_of_root_2(sim: StickSim, path: Path) -> Path:
    return signature_path(sim.trust_dir(path) / "root-2.json", sim.keys.id("root1"))


def complete_marker(sim: StickSim, path: Path) -> Path:
    return sim.bundle_dir(path, "d12") / stick.COMPLETE


def payload_folder(sim: StickSim, path: Path) -> Path:
    return sim.bundle_dir(path, "d12") / PAYLOAD


def bundle_folder(sim: StickSim, path: Path) -> Path:
    return sim.bundle_dir(path, "d12")


def product_subfolder(name: str) -> Callable[[StickSim, Path], Path]:
    return lambda sim, path: path / sim.product / name


def fifo(path: Path, root: Path) -> None:
    replace_with_fifo(path)


def socket_file(path: Path, root: Path) -> None:
    replace_with_socket(path)


def off_the_stick(path: Path, root: Path) -> None:
    """The same genuine bytes, moved off the stick and reached through a symlink left in their place."""
    move_behind_symlink(path, root.parent / "off-the-stick" / path.name)


def into_directory(path: Path, root: Path) -> None:
    path.unlink()
    path.mkdir()


def into_device_node(path: Path, root: Path) -> None:
    """A character device with /dev/null's numbers: an ext4-formatted stick can carry one, FAT cannot."""
    path.unlink()
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


def stick_for_another_product(sim: StickSim) -> None:
    sim.product = "other-cabinet"
    d12(sim).manifest = replace(d12(sim).manifest, product="other-cabinet")


def older_release(sim: StickSim, downgrade_from: tuple[int, ...] = ()) -> BundleModel:
    """A genuinely signed release older than the installed one: platform 13.1.0, sequence 5."""
    model = only(sim, "full-1").only("platform")
    return model.set_component("platform", version="13.1.0", sequence=5, downgrade_from=downgrade_from)


def signed_by(*names: str) -> Callable[[StickSim], str]:
    """The refusal text for d12 signed by ``names`` (rel1 and rel2 are the trusted signers)."""
    def expect(sim: StickSim) -> str:
        trusted = [n for n in ("rel1", "rel2") if n in names]
        missing = [n for n in ("rel1", "rel2") if n not in names]
        unknown = sorted(sim.keys.id(n) for n in names if n not in ("rel1", "rel2"))
        details = ([f"signed: {', '.join(trusted)}"] if trusted else []) + [f"missing: {', '.join(missing)}"]
        details += [f"ignored, keys not in this role: {', '.join(unknown)}"] if unknown else []
        return f"signed by {len(trusted)} of 2 required release signers ({'; '.join(details)})"
    return expect


def invalid(role: str, *names: str) -> Callable[[StickSim], tuple[str, ...]]:
    """Every key of ``names`` signed other bytes (the order of the list follows the key ids)."""
    return lambda sim: (f"signed by 0 of 2 required {role} (missing: {', '.join(names)}; invalid: ",
                        *(f"{n} (signature by key {sim.keys.id(n)} does not match the signed bytes)" for n in names))


# --- sticks that try to exhaust the log, odd names, spool paths -----------------------------------------

LATIN_1_STICK = os.fsdecode(b"stick-\xe9")  # a FAT volume label in a legacy code page, mounted as is
LATIN_1_SHOWN = "stick-\\xe9"  # how the agent prints and logs it


def forged_folders(count: int) -> Callable[[StickSim], None]:
    """``count`` bundle folders anyone can write without a key: a bundle ID for a name, a COMPLETE
    marker naming their manifest, and 64 random bytes for a manifest that nobody signed."""
    def write(bundles: Path, root: Path) -> None:
        for _ in range(count):
            manifest = os.urandom(64)
            folder = bundles / stick.bundle_id(manifest)
            folder.mkdir()
            (folder / MANIFEST).write_bytes(manifest)
            (folder / stick.COMPLETE).write_bytes(stick.complete_marker(manifest))
    return after_writing(product_subfolder(stick.BUNDLES), write)


def forged_folders_beside_unsigned_d12(count: int) -> Callable[[StickSim], None]:
    def attack(sim: StickSim) -> None:
        forged_folders(count)(sim)
        d12(sim).sign_with()
    return attack


def many_files(count: int) -> Callable[[Path, Path], None]:
    def write(folder: Path, root: Path) -> None:
        for number in range(count):
            (folder / f"note-{number}.txt").touch()
    return write


def manifest_bomb_not_the_marked_one(sim: StickSim) -> None:
    """d12's folder and marker, but a 100 MiB zstd bomb for a manifest: the marker's hash refuses it
    before anything decompresses it (the bomb's own refusal would name its size)."""
    model = d12(sim)
    honest = model.manifest_file()
    model.folder, model.marker = stick.bundle_id(honest), stick.complete_marker(honest)
    model.stored = bomb(100 << 20, b" ")
    without_keys(model)


def sparse(size: int) -> Callable[[Path, Path], None]:
    """The file made ``size`` bytes long without writing them (a hole): reading it would cost the
    whole size, refusing it from its size costs nothing."""
    return lambda path, root: os.truncate(path, size)


def foreign_names(sim: StickSim) -> None:
    """Files whose names are not UTF-8 in every folder of the layout, beside d12 (another system's)."""
    def write(root: Path) -> None:
        bundle = sim.bundle_dir(root, "d12")
        for folder, name in ((root / sim.product, b"notes-\xe9.txt"), (sim.trust_dir(root), b"root-\xff.json"),
                             (bundle.parent, b"caf\xe9"), (bundle, b"manifest.json.zst.\xff.minisig"),
                             (bundle / PAYLOAD, b"\xff.vol")):
            (folder / os.fsdecode(name)).write_bytes(b"not ours")
    d12(sim)
    sim.after.append(write)


def names_not_utf_8(sim: StickSim) -> None:
    """Names that are not UTF-8 and d12 signed by rel1 alone: the names are ignored, never a crash."""
    foreign_names(sim)
    d12(sim).sign_with("rel1")


# --- the device's layout: a signed listing must not reach into another component -----------------------

GAMES = "usr/local/games"  # the whole-system layout's games folder (LAYOUTS)


def whole_system(*entries: Entry, drop: tuple[str, ...] = (), change: dict | None = None) -> Callable[[StickSim], None]:
    """An insider's platform for the whole-system layout: d12's platform with these entries."""
    return lambda sim: d12(sim).edit("platform", add=entries, drop=drop, change=change)


def games_folder_behind_symlink(cabinet: Cabinet, sim: StickSim, tmp_path: Path) -> None:
    """Setup: on the device, the running environment's games folder was replaced by a symlink to a
    copy elsewhere (another local process, or an installer that made it so). Staging must refuse
    to write through it, not follow it out of the new environment."""
    games = cabinet.dir / "envs/env-1" / GAMES
    shutil.move(games, cabinet.dir / "outside")
    games.symlink_to(cabinet.dir / "outside")


def rolled_back_from_release_2(cabinet: Cabinet, sim: StickSim, tmp_path: Path) -> None:
    """Setup: release 2 committed (it added the fortune wheel), then a technician's manual rollback
    to release 1, which lacks it: the wheel's floor stays at its sequence 1."""
    commit_release_2(cabinet, sim, tmp_path)
    cabinet.agent("rollback", check=True)
    cabinet.agent("boot", check=True)


def configured(line: str) -> Callable[[Cabinet, StickSim, Path], None]:
    """Setup: a plausible mistake in the device's [layout] (the honest stick is then inserted)."""
    def setup(cabinet: Cabinet, sim: StickSim, tmp_path: Path) -> None:
        config = cabinet.dir / "agent.toml"
        text = config.read_text().split("[layout]\n")[0]  # the Cabinet writes [layout] last
        key = line.split("=")[0].strip()
        kept = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (cabinet.layout or {}).items() if k != key)
        config.write_text(f"{text}[layout]\n{kept}{line}\n")
    return setup


@lru_cache(maxsize=None)
def slow_to_deflate(size: int) -> bytes:
    """Content that zstd stores in a few KiB but zlib deflates at level 9 at about 0.4 MB/s: a
    1 MiB random text of two letters, repeated (zlib's 32 KiB window never sees the repeats)."""
    import random
    block = bytes(b"ab"[byte & 1] for byte in random.Random(9).randbytes(1 << 20))
    return (block * (size // len(block) + 1))[:size]


def gzip_recipe_cpu_bomb(sim: StickSim) -> None:
    """An insider's changelog.gz: 48 MiB of such content with a level-9 recipe (a few KiB stored)."""
    model = d12(sim)
    entry = model.entry("platform", "usr/share/doc/cabinet/changelog.gz")
    content = slow_to_deflate(48 << 20)  # three chunks of one object: its 1 MiB text repeats
    stored = codec.compress(content[:MAX_CHUNK_BYTES], 3)
    objects = [*model.objects(), (StoredObject(id=hashlib.sha256(stored).hexdigest(), offset=0, size=len(stored),
                                               encoding="zstd"), stored)]
    model.repack(objects)
    recipe = replace(entry.gzip, level=9, size=len(content), sha256=hashlib.sha256(content).hexdigest())
    chunks = (Chunk(object=objects[-1][0].id, size=MAX_CHUNK_BYTES),) * (len(content) // MAX_CHUNK_BYTES)
    model.edit("platform", change={entry.path: dict(gzip=recipe, size=len(content) // 6, chunks=chunks)})


def two_manifests_beyond_one_manifest_s_limits(sim: StickSim) -> None:
    """full-1 (the installed release: a no-op) twice, each signed with 17 MiB of JSON whitespace
    after its listing: within the limits of one manifest alone, beyond them together."""
    del sim.bundles["d12"]
    for name, padding in (("full-1", 17 << 20), ("full-1-again", (17 << 20) + 1)):
        model = sim.add(name, sim.world.bundles / "full-1")
        model.manifest_json, model.level = model.manifest.to_bytes() + b" " * padding, 3


NOTHING = "nothing was installed"  # with the outcome (agent/report.py)

CASES: list[Case] = [
    # --- trust: who signed the bundle ----------------------------------------------------------------
    Case("unsigned-bundle", "T-UNSIGNED", lambda s: d12(s).sign_with(), signed_by()),
    # A technician's `install` of the bundle folder runs the same checks as a stick.
    Case("unsigned-bundle-directory", "T-UNSIGNED", lambda s: d12(s).sign_with(), signed_by(), medium="d12"),
    Case("one-signer-below-threshold", "T-THRESHOLD", lambda s: d12(s).sign_with("rel1"), signed_by("rel1")),
    Case("same-signer-twice", "T-DUPSIG", duplicate_signature, signed_by("rel1")),
    Case("signatures-under-each-others-names", "T-SIGSTORE", signatures_under_each_others_names,
         named_for_another_key),
    Case("signer-not-in-root", "T-UNKNOWN", lambda s: d12(s).sign_with("rel1", "rel3"), signed_by("rel1", "rel3")),
    Case("forged-signers", "T-UNSIGNED", lambda s: d12(s).sign_with("mallory1", "mallory2"),
         signed_by("mallory1", "mallory2")),
    # The stick's own root 1 is history, never an anchor: the device keeps the one it was given.
    Case("forged-root-on-stick", "T-UNSIGNED", forged_root, signed_by("mallory-rel")),
    # Root 2 on the stick is genuine (and kept); under it rel1 no longer counts.
    Case("revoked-signer", "T-REVOKED", rotation_to_rel3,
         "signed by 1 of 2 required release signers (signed: rel2; missing: rel3; ignored, revoked: rel1)",
         rotates=True),
    Case("signature-of-another-bundle", "T-MIXMATCH", mix_and_match, invalid("release signers", "rel1", "rel2")),
    # The type is read first (then the format version and the codecs, then the exact field set).
    Case("trust-root-as-manifest", "T-TYPE", trust_root_as_manifest,
         "invalid manifest: document type is 'trust-root', not 'bundle-manifest'"),
    Case("manifest-as-trust-root", "T-TYPE", manifest_as_trust_root,
         "not a valid trust root: document type is 'bundle-manifest', not 'trust-root'"),
    # --- trust: rotations of the trust root ------------------------------------------------------------
    Case("rotation-by-attacker-keys", "T-ROOT-NEWONLY", forged_rotation,
         lambda s: ("signed by 0 of 2 required root keys of the trusted version 1 (missing: root1, root2; ignored, "
                    f"keys not in this role: {s.keys.id('mallory-root')})")),
    Case("rotation-signed-by-new-keys-only", "T-ROOT-NEWONLY",
         lambda s: s.rotate(add_root_keys=["root3"], remove_root_keys=["root1"], signers=["root3"]),
         lambda s: ("signed by 0 of 2 required root keys of the trusted version 1 (missing: root1, root2; ignored, "
                    f"keys not in this role: {s.keys.id('root3')})")),
    Case("rotation-signed-by-old-keys-only", "T-ROOT-OLDONLY",
         lambda s: s.rotate(add_root_keys=["root3"], remove_root_keys=["root1"], signers=["root1", "root2"]),
         "signed by 1 of 2 required root keys of version 2 (signed: root2; missing: root3; ignored, revoked: root1)"),
    Case("rotation-by-one-stolen-root-key", "T-THRESHOLD",
         lambda s: s.rotate(add_signers=["mallory"], signers=["root1"]),
         "signed by 1 of 2 required root keys of the trusted version 1 (signed: root1; missing: root2)"),
    # The device holds root 2; the stick offers root 1 and d12 signed by rel1 and rel2, which root 1
    # accepted. Older roots on a stick are history: rel1 stays revoked.
    Case("older-root-replayed", "T-ROOT-REPLAY", lambda s: None,
         "signed by 1 of 2 required release signers (signed: rel2; missing: rel3; ignored, revoked: rel1)",
         setup=accept_root_2),
    # Without root 2 the device cannot reach root 3: it stays at root 1 (and stores nothing), under
    # which rel3 is nobody.
    Case("skipped-root-version", "T-ROOT-SKIP", skipped_root, signed_by("rel2", "rel3")),
    Case("rotation-un-revokes-a-key", "T-REVOKED", un_revoking_root,
         lambda s: (f"version 3 un-revokes key rel1 ({s.keys.id('rel1')}), revoked in version 2; "
                    "revocation is permanent")),
    Case("rotation-drops-a-key-unrevoked", "T-REVOKED", root_dropping_unrevoked,
         lambda s: f"version 2 drops key rel1 ({s.keys.id('rel1')}) without revoking it"),
    Case("two-roots-claim-one-version", "T-ROOT-FORK", forked_root, "two different trust roots claim version 2"),
    # --- freshness and targeting (authentic bundles: exit 0, nothing installed, the reason shown) -------
    Case("older-release-replayed", "T-ROLLBACK", older_release,
         ("platform 13.1.0 (sequence 5) is older than the installed sequence 6 (13.2.0); the manifest does not "
          "permit that downgrade (an older release replayed)", NOTHING), exit=NOT_APPLICABLE),
    Case("release-1-replayed-after-update", "T-ROLLBACK", lambda s: only(s, "full-1"),
         ("platform 13.2.0 (sequence 6) is older than the installed sequence 7 (13.2.1); the manifest does not "
          "permit that downgrade (an older release replayed)", NOTHING), exit=NOT_APPLICABLE, setup=commit_release_2),
    Case("same-release-again", "T-ROLLBACK", lambda s: only(s, "full-1"),
         ("platform 13.2.0 (sequence 6) is already installed", NOTHING), exit=NOT_APPLICABLE),
    Case("downgrade-permitted-from-other-sequences", "T-ROLLBACK", lambda s: older_release(s, (4, 7)),
         ("platform 13.1.0 (sequence 5) is older than the installed sequence 6 (13.2.0); the manifest does not "
          "permit that downgrade", NOTHING), exit=NOT_APPLICABLE),
    Case("downgrade-delta-from-another-base", "T-ROLLBACK",
         lambda s: d12(s).only("platform").set_component(
             "platform", sequence=5, version="13.1.0", downgrade_from=(6,),
             base=Base(sequence=6, version="13.2.0", tree_digest=NOWHERE)),
         ("platform 13.1.0 (sequence 5) is a permitted downgrade, but a delta from another base", NOTHING),
         exit=NOT_APPLICABLE),
    Case("wrong-product", "T-PRODUCT",
         lambda s: setattr(d12(s), "manifest", replace(d12(s).manifest, product="other-cabinet")),
         ("bundle is for product other-cabinet, this machine is demo-cabinet", NOTHING), exit=NOT_APPLICABLE),
    # The device reads only its own product's folder; another product's stick holds nothing for it.
    Case("stick-for-another-product", "T-PRODUCT", stick_for_another_product, NOTHING, exit=NOT_APPLICABLE),
    Case("wrong-hardware", "T-HARDWARE",
         lambda s: setattr(d12(s), "manifest", replace(d12(s).manifest, hardware=("cab-z",))),
         ("bundle is for hardware cab-z, this machine is cab-a", NOTHING), exit=NOT_APPLICABLE),
    Case("component-for-another-serial", "T-TARGET",
         lambda s: d12(s).only(WHEEL).set_component(WHEEL, targets=("SN0002",)),
         ("game/fortune-wheel 1.0 (sequence 1) is targeted at other machines (serial SN0001 not listed)", NOTHING),
         exit=NOT_APPLICABLE),
    Case("delta-from-another-sequence", "T-BASE",
         lambda s: d12(s).only("platform").set_component(
             "platform", base=Base(sequence=5, version="13.1.0", tree_digest=NOWHERE)),
         ("platform 13.2.1 (sequence 7) is a delta from sequence 5 (13.1.0); this machine has sequence 6 (13.2.0)",
          NOTHING), exit=NOT_APPLICABLE),
    # Same sequence, another tree (a modified release 1): the delta applies to one exact tree only.
    Case("delta-from-another-tree", "T-BASE",
         lambda s: d12(s).only("platform").set_component(
             "platform", base=replace(d12(s).component("platform").base, tree_digest=NOWHERE)),
         ("platform 13.2.1 (sequence 7) is a delta from sequence 6 (13.2.0); this machine has sequence 6 (13.2.0)",
          NOTHING), exit=NOT_APPLICABLE),
    # --- content: damaged or altered bytes --------------------------------------------------------------
    Case("manifest-changed-without-keys", "T-TAMPER", manifest_changed_without_keys,
         invalid("release signers", "rel1", "rel2")),
    Case("manifest-bit-flipped", "T-TAMPER", manifest_bit_flipped,
         "the manifest is not the one the COMPLETE marker names (changed after writing)"),
    Case("signature-bit-flipped", "T-SIGTAMPER", signature_bit_flipped("signature"),
         lambda s: ("signed by 1 of 2 required release signers (signed: rel2; missing: rel1; invalid: rel1 "
                    f"(signature by key {s.keys.id('rel1')} does not match the signed bytes))")),
    Case("trusted-comment-bit-flipped", "T-SIGTAMPER", signature_bit_flipped("comment"),
         lambda s: ("signed by 1 of 2 required release signers (signed: rel2; missing: rel1; invalid: rel1 "
                    f"(trusted comment of the signature by key {s.keys.id('rel1')} was altered))")),
    Case("signature-file-truncated", "T-SIGTAMPER", signature_truncated, "a signature file must have 4 lines, found 2"),
    Case("trust-root-changed-after-signing", "T-TAMPER", root_changed_after_signing,
         invalid("root keys of the trusted version 1", "root1", "root2")),
    Case("trust-root-signature-bit-flipped", "T-SIGTAMPER", root_signature_bit_flipped,
         lambda s: ("signed by 1 of 2 required root keys of the trusted version 1 (signed: root2; missing: root1; "
                    f"invalid: root1 (signature by key {s.keys.id('root1')} does not match the signed bytes))")),
    *[Case(f"volume-{i + 1}-first-byte-flipped", "T-CONTENT", volume_bit_flipped(i), volume_bit_flipped_error(i))
      for i in range(4)],
    Case("volume-4-last-byte-flipped", "T-CONTENT", volume_bit_flipped(3, last=True),
         volume_bit_flipped_error(3, last=True)),
    Case("volume-from-another-bundle", "T-CONTENT", volume_from_another_bundle, second_volume_error),
    Case("volume-truncated", "T-CONTENT", last_volume_resized(-1), volume_size_error(3, 1215)),
    Case("volume-longer-than-signed", "T-CONTENT", last_volume_resized(1), volume_size_error(3, 1217)),
    Case("volume-missing", "T-CONTENT", lambda s: d12_volumes(s).volume_bytes.__setitem__(2, None),
         lambda s: f"volume {s.bundle('d12-vols').manifest.volumes[2].name} is missing"),
    Case("volumes-reordered-on-stick", "T-CONTENT", volumes_reordered, second_volume_error),
    Case("volumes-reordered-in-signed-manifest", "T-CONTENT", volumes_reordered_signed, second_volume_error),
    Case("extra-volume-in-signed-manifest", "T-OVERLAP", extra_volume_signed,
         "invalid manifest: objects cover 50368 bytes but the volumes hold 50405"),
    # An insider's manifest names an object by a hash its bytes do not have; volumes are consistent.
    Case("object-bytes-not-its-hash", "T-CONTENT",
         lambda s: d12(s).replace_object(wheel_object(s), os.urandom(50_000), keep_id=True),
         lambda s: object_error(d12(s), d12(s).manifest.object_index()[wheel_object(s)].offset)),
    Case("decoded-file-not-its-hash", "T-CONTENT", change("platform", "etc/cabinet.conf", sha256="0" * 64),
         "'etc/cabinet.conf' decoded to content that does not match its SHA-256", staged=True),
    Case("gzip-content-not-its-hash", "T-CONTENT", gzip_content_mismatch,
         "'usr/share/doc/cabinet/changelog.gz': decoded gzip content does not match its SHA-256", staged=True),
    Case("delta-patch-region-moved", "T-BASE", patch_base_mismatch,
         "'reels.dat': zstd decode: Data corruption detected", staged=True),
    # The region lies past the end of the base file, however large its offset: a refusal, not an I/O error.
    Case("patch-region-beyond-2-63", "T-BASE", patch_region_beyond_2_63,
         "base file 'reels.dat' is shorter than the region the delta refers to", staged=True),
    Case("delta-copy-source-differs", "T-BASE", copy_source_mismatch,
         "base file 'usr/bin/sudo' differs from the one this delta was made against", staged=True),
    # The listing claims fewer bytes than the stored frame holds, and the reverse.
    Case("frame-declares-more-than-signed", "T-CONTENT",
         lambda s: store_wheel(s, codec.compress(wheel_data(s), 3), size=40_000),
         "stored object declares 50000 bytes, the manifest says 40000", staged=True),
    Case("frame-declares-less-than-signed", "T-CONTENT",
         lambda s: store_wheel(s, codec.compress(wheel_data(s)[:40_000], 3)),
         "stored object declares 40000 bytes, the manifest says 50000", staged=True),
    # The header matches the listing, the blocks hold less: the decoder's own check catches it.
    Case("frame-header-lies-about-size", "T-CONTENT",
         lambda s: store_wheel(s, reframe(codec.compress(wheel_data(s)[:40_000], 3), content_size=50_000,
                                          window_log=17)),
         "zstd decode: Data corruption detected", staged=True),
    Case("frame-with-trailing-bytes", "T-CONTENT",
         lambda s: store_wheel(s, codec.compress(wheel_data(s), 3) + b"trailing"),
         "stored object is not exactly one zstd frame", staged=True),
    Case("raw-object-size-differs-from-chunk", "T-CONTENT",
         lambda s: d12(s).replace_object(wheel_object(s), wheel_data(s)[:40_000], encoding="raw"),
         "a raw object must be exactly its chunk's size"),
    # --- resource exhaustion --------------------------------------------------------------------------------
    Case("bomb-tiny-object-declares-1-gib", "T-BOMB", lambda s: store_wheel(s, bomb(1 << 30)),
         "stored object declares 1073741824 bytes, the manifest says 50000", staged=True),
    Case("bomb-object-without-declared-size", "T-BOMB",
         lambda s: store_wheel(s, reframe(codec.compress(wheel_data(s), 3), content_size=None, window_log=17)),
         "stored object does not declare its content size", staged=True),
    # Declares the right size but a 2 GiB window: beyond the decoder's documented limit (FORMAT.md).
    Case("bomb-huge-window", "T-BOMB",
         lambda s: store_wheel(s, reframe(codec.compress(wheel_data(s), 3), content_size=50_000, window_log=31)),
         "stored object's zstd window is 2147483648 bytes (limit 268435456)", staged=True),
    # A block (small files compressed together): its frame is hashed, decoded within the signed
    # sizes of its members, and each member hashed again in the decoded bytes.
    Case("block-member-not-its-hash", "T-CONTENT",
         lambda s: store_block(s, lambda content: bytes([content[0] ^ 1]) + content[1:]),
         block_member_error, staged=True),
    Case("block-frame-declares-more-than-its-members", "T-BOMB",
         lambda s: store_block(s, lambda content: content + b"more"),
         lambda s: f"declares {sum(m.size for m in block_members(s.bundle('full-2'))[1]) + 4} bytes, the manifest says",
         staged=True),
    Case("block-bomb-declares-1-gib", "T-BOMB",
         lambda s: only(s, "full-2").replace_object(block_members(s.bundle("full-2"))[0].id, bomb(1 << 30)),
         "stored object declares 1073741824 bytes", staged=True),
    Case("bomb-chunk-of-1-gib", "T-BOMB", lambda s: store_wheel(s, bomb(1 << 30), size=1 << 30),
         f"chunk size must be 1..{MAX_CHUNK_BYTES}"),
    Case("manifest-over-32-mib", "T-EXHAUST", lambda s: setattr(d12(s), "stored", os.urandom((32 << 20) + 1)),
         f"manifest is larger than the {MAX_STORED_MANIFEST_BYTES}-byte limit"),
    Case("manifest-bomb-100-mib", "T-BOMB", lambda s: setattr(d12(s), "stored", bomb(100 << 20, b" ")),
         f"manifest would decompress to 104857600 bytes (limit {MAX_MANIFEST_BYTES})"),
    Case("manifest-without-declared-size", "T-BOMB",
         lambda s: setattr(d12(s), "stored", reframe(d12(s).manifest_file(), content_size=None, window_log=20)),
         "stored manifest does not declare its content size"),
    Case("a-million-entries", "T-EXHAUST", json_edit(a_million_entries),
         f"invalid manifest: more than {MAX_ENTRIES} entries"),
    Case("a-million-objects", "T-EXHAUST", json_edit(lambda d: d.update(objects=[{}] * 1_000_001)),
         f"invalid manifest: more than {MAX_ENTRIES} objects"),
    Case("ten-thousand-volumes", "T-EXHAUST", json_edit(lambda d: d.update(volumes=[{}] * 10_001)),
         "invalid manifest: more than 10000 volumes"),
    Case("257-hardware-models", "T-EXHAUST",
         json_edit(lambda d: d.update(hardware=[f"cab-{i}" for i in range(257)])),
         "invalid manifest: more than 256 hardware"),
    Case("manifest-nested-100000-deep", "T-EXHAUST", manifest_nested_deep, "invalid manifest: nested too deeply"),
    Case("manifest-duplicate-key", "T-PARSER", manifest_duplicate_key, "invalid manifest: duplicate key 'product'"),
    # The platform may name any owner, but only one a POSIX system can hold: uid_t and gid_t are
    # 32 bits, and (uid_t) -1 means "leave unchanged" to chown.
    Case("platform-owner-beyond-32-bits", "T-PARSER", change("platform", "etc/cabinet.conf", uid=1 << 40),
         "uid must be 0..4294967294"),
    Case("platform-group-beyond-32-bits", "T-PARSER", change("platform", "etc/cabinet.conf", gid=1 << 40),
         "gid must be 0..4294967294"),
    Case("seventy-signature-files", "T-EXHAUST", seventy_signature_files, "more than 64 signature files"),
    Case("trust-root-over-1-mib", "T-EXHAUST", root_over_1_mib, "trust root is larger than the 1048576-byte limit"),
    Case("trust-root-nested-100000-deep", "T-EXHAUST",
         lambda s: setattr(rotation_to_rel3(s), "raw", deep_json(s.root.to_bytes())),
         "not a valid trust root: nested too deeply"),
    Case("path-deeper-than-128", "T-EXHAUST", add(WHEEL, *[dir_entry("/".join(["d"] * n)) for n in range(1, 130)]),
         "is nested deeper than 128 levels"),
    # Chains of 38 links, each target padded to ~4 KiB with "a/../": every link walks the rest of its chain.
    Case("symlink-chains-padded-to-exhaust", "T-EXHAUST",
         add(WHEEL, dir_entry("a"), *[symlink_entry(f"c{chain}-{i:02}", "a/../" * 790 + f"c{chain}-{i + 1:02}")
                                      for chain in range(5) for i in range(38)]),
         "resolving the symlinks takes more than 4000000 steps"),
    Case("name-longer-than-255-bytes", "T-EXHAUST", add(WHEEL, file_entry("x" * 256)), "is longer than 255 bytes"),
    Case("path-longer-than-4096-bytes", "T-EXHAUST",
         add(WHEEL, *[dir_entry("/".join(["d" * 200] * n)) for n in range(1, 22)]), "path longer than 4096 bytes"),
    Case("symlink-target-longer-than-4096-bytes", "T-EXHAUST", add("platform", symlink_entry("etc/far", "a/" * 2100)),
         "symlink 'etc/far' has an overlong target or one with a NUL byte"),
    # --- memory: the largest manifest the parser accepts ---
    # Limits that bound the agent's memory (docs/FORMAT.md, "Limits"); tests/test_manifest_memory.py
    # installs the largest manifest within them and checks the agent's peak RSS.
    Case("memory-json-one-byte-over-the-limit", "T-EXHAUST", padded_to(MAX_MANIFEST_BYTES + 1),
         f"manifest would decompress to {MAX_MANIFEST_BYTES + 1} bytes (limit {MAX_MANIFEST_BYTES})"),
    # A quarter of the limit in characters, but one emoji: 4 bytes each in memory.
    Case("memory-text-four-bytes-per-character", "T-EXHAUST", padded_to(MAX_MANIFEST_BYTES // 4 + 1, wide=True),
         f"text is {MAX_MANIFEST_BYTES // 4 + 1} characters of 4 bytes in memory, more than the "
         f"{MAX_MANIFEST_BYTES}-byte limit"),
    Case("memory-entries-over-the-limit-in-two-games", "T-EXHAUST",
         json_edit(over_the_limit_in_two("entries", (WHEEL, LUCKY), {})),
         f"invalid manifest: more than {MAX_ENTRIES} entries"),
    Case("memory-removed-paths-over-the-limit-in-two-deltas", "T-EXHAUST",
         json_edit(over_the_limit_in_two("removed", ("platform", LUCKY), "x")),
         f"invalid manifest: more than {MAX_ENTRIES} removed"),
    Case("memory-file-in-65537-chunks", "T-EXHAUST", json_edit(wheel_in_chunks(MAX_CHUNKS + 1)),
         f"invalid manifest: more than {MAX_CHUNKS} chunks"),
    # 32 MB of "[], ": parsed whole, the lists took ~500 MB. Values read whole are counted instead.
    Case("memory-eight-million-empty-lists", "T-EXHAUST", json_edit(lambda d: d.update(padding=[[]] * 8_000_000)),
         f"invalid manifest: more than {MAX_VALUES} values"),
    # --- paths, validly signed: an insider or a compromised build must not escape ------------------------
    Case("dot-dot-path", "T-PATH", add(WHEEL, file_entry("../../platform/usr/bin/evil", b"x")),
         "path '../../platform/usr/bin/evil' has an empty, '.' or '..' component"),
    Case("absolute-path", "T-PATH", add("platform", file_entry("/etc/cron.d/evil", b"x")),
         "path '/etc/cron.d/evil' is absolute"),
    # The platform may link anywhere (system policy), but nothing is ever written through a link.
    Case("file-written-through-symlink", "T-SYMLINK-WRITE",
         add("platform", symlink_entry("etc/cron", "/etc/cron.d"), file_entry("etc/cron/evil", b"x")),
         "the parent of 'etc/cron/evil' is not a directory of the listing"),
    Case("game-symlink-leaves-component", "T-LINK-ESCAPE", add(WHEEL, symlink_entry("out", "../../platform/etc")),
         "symlink 'out' -> '../../platform/etc': '../../platform/etc' resolves outside its component"),
    Case("game-symlink-absolute", "T-LINK-ESCAPE", add(WHEEL, symlink_entry("out", "/etc")),
         "symlink 'out' -> '/etc' is absolute; content components may only link inside themselves"),
    # d/s -> .. stays inside; e -> d/s/../x looks inside to normpath but climbs out through s.
    Case("game-symlink-escapes-through-symlink", "T-LINK-ESCAPE",
         add(WHEEL, dir_entry("d"), symlink_entry("d/s", ".."), symlink_entry("e", "d/s/../x")),
         "symlink 'e' -> 'd/s/../x': 'd/s/../x' resolves outside its component"),
    Case("game-symlink-loop", "T-LINK-ESCAPE", add(WHEEL, symlink_entry("a", "b"), symlink_entry("b", "a")),
         "symlink 'a' -> 'b': 'b' goes through a symlink loop"),
    Case("duplicate-path", "T-PATH", add(WHEEL, file_entry("wheel.dat", b"x")),
         "entry 'wheel.dat' is out of order or listed twice"),
    Case("game-names-equal-after-case-folding", "T-COLLIDE", add(WHEEL, file_entry("WHEEL.DAT")),
         "'wheel.dat' and 'WHEEL.DAT' name the same file after Unicode normalisation or case folding"),
    Case("names-equal-after-unicode-normalisation", "T-COLLIDE",
         add("platform", file_entry("etc/caf\u00e9"), file_entry("etc/cafe\u0301")),
         "'etc/caf\u00e9' and 'etc/cafe\u0301' name the same file after Unicode normalisation\n"),
    Case("nul-in-name", "T-PATH", add(WHEEL, file_entry("wheel\0.dat", b"x")),
         "path 'wheel\\x00.dat' contains a NUL byte"),
    Case("slash-ending-a-name", "T-PATH", add(WHEEL, file_entry("evil/", b"x")),
         "path 'evil/' has an empty, '.' or '..' component"),
    # The format has no device-node type and its modes carry permission bits only.
    Case("device-node", "T-POLICY",
         add(WHEEL, Entry(path="console", type="chardev", mode=0o666, uid=0, gid=0, mtime=0)),
         "type must be one of ('dir', 'file', 'symlink', 'hardlink')"),
    Case("device-node-mode-bits", "T-POLICY", change(WHEEL, "wheel.dat", mode=0o20644),
         "mode must be an octal string like '0755'"),
    Case("setuid-in-game", "T-POLICY", change(WHEEL, "wheel.dat", mode=0o4755), "'wheel.dat' has a setuid/setgid bit"),
    Case("setgid-directory-in-game", "T-POLICY", change(WHEEL, ".", mode=0o2755), "'.' has a setuid/setgid bit"),
    Case("foreign-owner-in-game", "T-POLICY", change(WHEEL, "wheel.dat", uid=1000),
         "'wheel.dat' has owner 1000:0; content is owned by 0:0"),
    Case("hardlink-leaves-component", "T-PATH", add(WHEEL, hardlink_entry("sudo", "../../platform/usr/bin/sudo")),
         "path '../../platform/usr/bin/sudo' has an empty, '.' or '..' component"),
    Case("hardlink-absolute", "T-PATH", add(WHEEL, hardlink_entry("shadow", "/etc/shadow")),
         "path '/etc/shadow' is absolute"),
    Case("hardlink-to-unlisted-file", "T-PATH", add(WHEEL, hardlink_entry("sudo", "usr/bin/sudo")),
         "hard link 'sudo' must point to a file listed before it"),
    Case("component-name-escapes", "T-PATH", lambda s: d12(s).set_component(WHEEL, name="game/../../etc"),
         "component name 'game/../../etc' must be 'platform' or 'game/<id>'"),
    Case("copy-source-outside-base", "T-PATH",
         add("platform", file_entry("etc/shadow-copy", b"x", base_path="../../../etc/shadow")),
         "path '../../../etc/shadow' has an empty, '.' or '..' component"),
    Case("copy-source-through-symlink", "T-SYMLINK-READ", copy_source_through_symlink,
         "'usr/bin/engine' is a symlink", staged=True),
    Case("two-manifests-beyond-one-manifest-s-limits", "T-EXHAUST", two_manifests_beyond_one_manifest_s_limits,
         f"the manifests on this medium would exceed {MAX_STORED_MANIFEST_BYTES >> 20} MiB stored or "
         f"{MAX_MANIFEST_BYTES >> 20} MiB decompressed, the limits of one manifest; this bundle was not read"),
    # --- the device's layout: a signed platform must not reach into the games or machine-local paths ----
    Case("platform-makes-games-folder-a-symlink-into-the-running-environment", "T-NESTED",
         whole_system(dir_entry("usr/local"), symlink_entry(GAMES, "../../../env-1/usr/local/games")),
         f"makes '{GAMES}' a symlink, but it is the games folder '{GAMES}': it must stay a directory",
         layout="whole-system"),
    Case("platform-makes-games-folder-an-absolute-symlink", "T-NESTED",
         whole_system(dir_entry("usr/local"), symlink_entry(GAMES, "/tmp")),
         f"makes '{GAMES}' a symlink, but it is the games folder", layout="whole-system"),
    Case("platform-makes-a-folder-above-the-games-a-symlink", "T-NESTED",
         whole_system(symlink_entry("usr/local", "/tmp")),
         f"makes 'usr/local' a symlink, but it leads to the games folder '{GAMES}'", layout="whole-system"),
    Case("platform-makes-games-folder-a-file", "T-NESTED",
         whole_system(dir_entry("usr/local"), file_entry(GAMES)),
         f"makes '{GAMES}' a file, but it is the games folder", layout="whole-system"),
    Case("platform-lists-a-file-inside-a-game", "T-NESTED",
         whole_system(dir_entry("usr/local"), dir_entry(GAMES), dir_entry(f"{GAMES}/fortune-wheel"),
                      file_entry(f"{GAMES}/fortune-wheel/PWNED.txt")),
         f"lists '{GAMES}/fortune-wheel', inside the games folder '{GAMES}': only game components may be staged there",
         layout="whole-system"),
    Case("platform-makes-the-folder-of-a-preserved-path-a-symlink", "T-NESTED",
         whole_system(drop=("etc/cabinet.conf",), change={"etc": dict(type="symlink", mode=None, target="/tmp")}),
         "makes 'etc' a symlink, but it leads to the machine-local path 'etc/ssh' ([layout] preserve)",
         layout="whole-system"),
    # Staging writes beneath the new environment only: a symlink already in the clone is refused, not followed.
    Case("games-folder-is-a-symlink-on-the-device", "T-STAGE-BENEATH", lambda s: None,
         "'games' is not a plain directory", layout="whole-system", setup=games_folder_behind_symlink, staged=True),
    # --- anti-rollback after a technician's rollback -----------------------------------------------------
    Case("stolen-stick-brings-a-removed-game-below-its-floor", "T-ROLLBACK",
         lambda s: d12(s).only(WHEEL).set_component(WHEEL, sequence=0, version="0.9"),
         ("game/fortune-wheel 0.9 (sequence 0) is older than sequence 1, which this machine had committed before",
          NOTHING), exit=NOT_APPLICABLE, setup=rolled_back_from_release_2),
    # --- work that does not pay for itself ---------------------------------------------------------------
    Case("gzip-recipe-cpu-bomb", "T-WORK", gzip_recipe_cpu_bomb,
         "re-deflating gzip content and applying bsdiff patches took", staged=True, timeout=60),
    Case("files-take-turns-between-blocks", "T-WORK", blocks_taken_in_turn,
         "bytes of base files and blocks to write", staged=True, timeout=120),
    # --- games other local processes could change -------------------------------------------------------
    Case("world-writable-game-file", "T-POLICY", change(WHEEL, "wheel.dat", mode=0o666),
         "'wheel.dat' is writable by every user"),
    Case("world-writable-game-folder-without-sticky-bit", "T-POLICY", change(WHEEL, ".", mode=0o777),
         "'.' is a folder writable by every user without the sticky bit"),
    # --- plausible mistakes in the device's configuration (the stick is honest) ----------------------------
    Case("layout-platform-is-the-host-root", "T-CONFIG", lambda s: None,
         "[layout] platform = '/' must be \".\" or a relative path inside the environment", exit=1,
         setup=configured('platform = "/"')),
    Case("layout-games-climbs-out", "T-CONFIG", lambda s: None,
         "[layout] games = '../../outside' must be \".\" or a relative path", exit=1,
         setup=configured('games = "../../outside"')),
    Case("layout-platform-is-a-number", "T-CONFIG", lambda s: None,
         "[layout] platform must be a string", exit=1, setup=configured("platform = 7")),
    Case("layout-platform-inside-the-games-folder", "T-CONFIG", lambda s: None,
         "[layout] platform = 'games/platform' lies inside games = 'games'", exit=1,
         setup=configured('platform = "games/platform"')),
    Case("layout-preserve-overlaps-the-games", "T-CONFIG", lambda s: None,
         "[layout] preserve: 'usr' overlaps the games folder 'usr/local/games'", exit=1, layout="whole-system",
         setup=configured('preserve = ["usr"]')),
    # --- the medium itself ---------------------------------------------------------------------------------
    # A folder without its marker is an interrupted write, ignored by design (docs/STICK.md).
    Case("no-complete-marker", "T-INCOMPLETE", lambda s: setattr(d12(s), "complete", False), NOTHING,
         exit=NOT_APPLICABLE),
    # A marker that cannot be read at once is no marker: the bundle counts as incomplete.
    Case("complete-marker-is-a-fifo", "T-MEDIUM", after_writing(complete_marker, fifo), NOTHING,
         exit=NOT_APPLICABLE),
    Case("complete-marker-is-a-socket", "T-MEDIUM", after_writing(complete_marker, socket_file), NOTHING,
         exit=NOT_APPLICABLE),
    Case("volume-is-a-socket", "T-MEDIUM", after_writing(first_volume, socket_file),
         lambda s: f"volume {d12(s).manifest.volumes[0].name} is not a regular file"),
    Case("volume-is-a-fifo", "T-MEDIUM", after_writing(first_volume, fifo),
         lambda s: f"volume {d12(s).manifest.volumes[0].name} is not a regular file"),
    Case("volume-is-a-directory", "T-MEDIUM", after_writing(first_volume, into_directory),
         lambda s: f"volume {d12(s).manifest.volumes[0].name} is not a regular file"),
    Case("volume-is-a-device-node", "T-MEDIUM", after_writing(first_volume, into_device_node),
         lambda s: f"volume {d12(s).manifest.volumes[0].name} is not a regular file"),
    Case("manifest-is-a-fifo", "T-MEDIUM", after_writing(manifest_file, fifo),
         "manifest is not a regular file"),
    Case("signature-is-a-fifo", "T-MEDIUM", after_writing(rel1_signature_file, fifo),
         "signature file is not a regular file"),
    Case("root-signature-is-a-fifo", "T-MEDIUM", after_writing(root1_signature_of_root_2, fifo, rotate=True),
         "signature file is not a regular file"),
    # The same genuine bytes, reached through a symlink that could lead anywhere: refused.
    Case("volume-behind-symlink", "T-SYMLINK-READ", after_writing(first_volume, off_the_stick),
         lambda s: f"'payload/{d12(s).manifest.volumes[0].name}' is a symlink"),
    Case("payload-folder-behind-symlink", "T-SYMLINK-READ", after_writing(payload_folder, off_the_stick),
         "'payload' is not a plain directory"),
    Case("trust-folder-behind-symlink", "T-SYMLINK-READ",
         after_writing(product_subfolder(stick.TRUST), off_the_stick),
         "demo-cabinet/trust is not a plain folder (a file or a symlink)"),
    Case("bundles-folder-behind-symlink", "T-SYMLINK-READ",
         after_writing(product_subfolder(stick.BUNDLES), off_the_stick),
         "demo-cabinet/bundles is not a plain folder (a file or a symlink)"),
    # docs/STICK.md: only plain folders reached without a symlink count; this one is not a bundle.
    Case("bundle-folder-behind-symlink", "T-SYMLINK-READ", after_writing(bundle_folder, off_the_stick),
         NOTHING, exit=NOT_APPLICABLE),
    # --- forged sticks that try to exhaust the log, odd names, spool paths ---
    # docs/STICK.md, "Limits": more than 64 bundle folders refuse the stick before a marker is read,
    # with one audit record, not one per folder.
    Case("two-thousand-forged-bundle-folders", "T-LOG", forged_folders(2000),
         "demo-cabinet/bundles holds 2001 bundle folders; a stick may carry at most 64 per product",
         audit_records=1, audit_bytes=1024),
    # At the limit every folder is examined: 64 refusals, one audit record of bounded size.
    Case("sixty-four-forged-bundle-folders", "T-LOG", forged_folders_beside_unsigned_d12(63),
         ("signed by 0 of 2 required release signers (missing: rel1, rel2)", "; and 56 more (in the audit log)"),
         audit_records=1, audit_bytes=16 << 10),
    Case("five-thousand-files-in-bundles-folder", "T-EXHAUST",
         after_writing(product_subfolder(stick.BUNDLES), many_files(5000)),
         "demo-cabinet/bundles holds more than 4096 entries", audit_records=1, audit_bytes=1024),
    Case("manifest-bomb-not-the-marked-one", "T-EXHAUST", manifest_bomb_not_the_marked_one,
         "the manifest is not the one the COMPLETE marker names (changed after writing)", audit_records=1),
    Case("manifest-sparse-4-gib", "T-EXHAUST", after_writing(manifest_file, sparse((4 << 30) - 1)),
         f"manifest is larger than the {MAX_STORED_MANIFEST_BYTES}-byte limit", audit_records=1),
    # Names that are not UTF-8 are carried as they are, printed and logged as \xNN (docs/AGENT.md).
    Case("stick-named-in-latin-1", "T-MEDIUM", lambda s: d12(s).sign_with(),
         lambda s: (LATIN_1_SHOWN, signed_by()(s)), stick=LATIN_1_STICK, audit_records=1),
    Case("bundle-directory-named-in-latin-1", "T-MEDIUM", lambda s: d12(s).sign_with(),
         lambda s: (LATIN_1_SHOWN, signed_by()(s)), stick=LATIN_1_STICK, medium="d12", audit_records=1),
    Case("names-not-utf-8-on-stick", "T-MEDIUM", names_not_utf_8, signed_by("rel1"), audit_records=1),
    # The spool is named by the manifest's hash: `install BUNDLE/payload/..` spools nothing into
    # STATE/payload (the spool is filled, then staging fails and everything is removed).
    Case("install-bundle-via-payload-dotdot", "T-MEDIUM", change("platform", "etc/cabinet.conf", sha256="0" * 64),
         "'etc/cabinet.conf' decoded to content that does not match its SHA-256", staged=True, medium="d12",
         via="payload/.."),
    # --- trust roots a stick may carry ---
    # docs/TRUST.md, "Rotations per insertion": a device reads only the root files named for the 32
    # versions after its own. Here root-2.json .. root-201.json hold 1 MiB of zeros each (sparse: no
    # disk used), and root-34.json, the first past the window, is one byte over the 1 MiB limit:
    # reading it would refuse the stick for its size. The refusal is root-2.json's content instead:
    # nothing past the window was opened, and at most 32 roots were held.
    Case("two-hundred-root-files-of-1-mib", "T-EXHAUST",
         after_writing(product_subfolder(stick.TRUST), lambda trust, root: [
             os.truncate(shutil.copyfile(os.devnull, trust / stick.root_name(n)), (1 << 20) + (n == 34))
             for n in range(2, 202)]),
         "trust/root-2.json: not a valid trust root", audit_records=1),
    # Junk named for versions past the window is not read at all, so not refused either: the
    # device stays at root 1 and examines the bundles (unsigned here, so the stick is refused for them).
    Case("root-files-past-the-next-32-versions", "T-EXHAUST",
         lambda s: (d12(s).sign_with(), after_writing(product_subfolder(stick.TRUST), lambda trust, root: [
             os.truncate(shutil.copyfile(os.devnull, trust / stick.root_name(n)), 1 << 20)
             for n in range(34, 234)])(s)),
         signed_by(), audit_records=1),
    # --- names that would drive the technician's terminal ---
    # A volume label with ESC sequences (set the window title, clear the screen): printed and
    # logged as \xNN, never sent to the terminal (keys/printable.py).
    Case("stick-named-with-escape-sequences", "T-MEDIUM", lambda s: d12(s).sign_with(),
         lambda s: ("stick-\\x1b]0;all good\\x07\\x1b[2J", signed_by()(s)),
         stick="stick-\x1b]0;all good\x07\x1b[2J", audit_records=1),
]


# --- the device and the run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    world = World(tmp_path_factory.mktemp("hostile-world"))
    world.make("d12-vols", "r2", "r1", ("rel1", "rel2"), "--volume-size", "16K")
    return world


# The layouts docs/AGENT.md documents: components side by side, and the whole system as the
# platform with the games nested inside it and machine-local files kept across updates.
LAYOUTS = {"separate": None,
           "whole-system": {"platform": ".", "games": "usr/local/games", "preserve": ["etc/ssh"]}}


@pytest.fixture(scope="module")
def provisioned_by_layout(world, tmp_path_factory) -> dict[str, Cabinet]:
    """Per layout, one cabinet provisioned with release 1 by the real agent (made on first use);
    each case gets a copy of it. The whole-system one holds a machine-local host key."""
    cabinets: dict[str, Cabinet] = {}

    def get(layout: str) -> Cabinet:
        if layout not in cabinets:
            cabinet = Cabinet(world, tmp_path_factory.mktemp(f"provisioned-{layout}") / "device",
                              layout=LAYOUTS[layout])
            cabinet.provision()
            if layout == "whole-system":
                (cabinet.dir / "envs/env-1/etc/ssh").mkdir()
                (cabinet.dir / "envs/env-1/etc/ssh/host_key").write_text("machine secret\n")
            cabinets[layout] = cabinet
        return cabinets[layout]
    return get


@pytest.fixture(scope="module")
def provisioned(provisioned_by_layout) -> Cabinet:
    return provisioned_by_layout("separate")


def _copy(provisioned: Cabinet, world: World, directory: Path) -> Cabinet:
    """A cabinet in exactly the provisioned state: its environments and agent state copied (they
    hold no absolute paths), its own configuration pointing at them."""
    cabinet = Cabinet(world, directory, layout=provisioned.layout)
    for part in ("envs", "state"):
        shutil.copytree(provisioned.dir / part, directory / part, symlinks=True)
    return cabinet


def _everything_but_state(cabinet: Cabinet) -> str:
    """The whole device folder but the agent's state: environments, boot record, configuration,
    health hook, and any folder beside them a hostile symlink could point to. Modification
    times count too (a write that restores the content still shows). Left out with the state:
    ``envs/made``, the dirs backend's count of the names it made, which a staging that began
    advances (a name once used is never made again, agent/boot/dirs.py)."""
    return tree_digest(replace(e, size=(e.size, e.mtime)) if e.type == "file" else e
                       for e in scan_tree(cabinet.dir, exclude=("state", "envs/made")))


def _trust_files(cabinet: Cabinet) -> dict[str, bytes]:
    directory = cabinet.dir / "state/trust"
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.is_dir() else {}


def _pending(cabinet: Cabinet):
    journal = cabinet.dir / "state/journal.json"
    return json.loads(journal.read_bytes()).get("pending") if journal.exists() else None


def _spool(cabinet: Cabinet) -> Path:
    return cabinet.dir / "state/spool"


def _audit_lines(cabinet: Cabinet) -> list[str]:
    return (cabinet.dir / "state/audit.log").read_text().splitlines()


def _audit_log(cabinet: Cabinet) -> Path:
    return cabinet.dir / "state/audit.log"


def _state_dirs(cabinet: Cabinet) -> set[str]:
    return {p.name for p in (cabinet.dir / "state").iterdir() if p.is_dir()}


def _run_agent(cabinet: Cabinet, command: str, medium: Path, timeout: int = AGENT_TIMEOUT) -> tuple[int | None, str]:
    """The real bundle-agent, with a deadline: a stick must never make it wait."""
    try:
        result = subprocess.run(cabinet.command(command, medium), capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    except subprocess.TimeoutExpired:
        return None, f"bundle-agent {command} was still running after {timeout} s and was killed"
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_stick(case: Case, world: World, provisioned_by_layout, tmp_path: Path) -> None:
    cabinet = _copy(provisioned_by_layout(case.layout), world, tmp_path / "device")
    sim = StickSim(world)
    sim.add("d12")
    if case.setup:
        case.setup(cabinet, sim, tmp_path)
    case.attack(sim)
    medium = sim.write(tmp_path / case.stick)
    if case.medium is not None:
        medium = sim.bundle_dir(medium, case.medium)
    medium = medium / case.via if case.via else medium
    expected = case.expect(sim) if callable(case.expect) else case.expect
    expected = (expected,) if isinstance(expected, str) else expected

    before, trust_before, logged = cabinet.snapshot(), _trust_files(cabinet), len(_audit_lines(cabinet))
    everything_before = _everything_but_state(cabinet)
    state_dirs, log_size = _state_dirs(cabinet), _audit_log(cabinet).stat().st_size
    code, output = _run_agent(cabinet, "on-insert" if case.medium is None else "install", medium, case.timeout)
    events = {json.loads(line)["event"] for line in _audit_lines(cabinet)[logged:]}

    if case.staged:  # visible only while staging: staging began, failed, and was discarded
        in_time = "staging-failed" in events and "trial-armed" not in events
    else:  # refused before anything was written
        in_time = not events & {"staging", "staging-failed", "trial-armed"}
    # Refused: the right exit code and text, at the right moment. Unchanged: the device's state.
    refused = code == case.exit and all(text in output for text in expected) and in_time
    unchanged = (cabinet.snapshot() == before and _pending(cabinet) is None and not _spool(cabinet).exists()
                 and (case.rotates or _trust_files(cabinet) == trust_before)
                 and _everything_but_state(cabinet) == everything_before)
    count_summary("hostile", "hostile sticks: {refused} refused of {total}, device unchanged in {unchanged}",
                  total=1, refused=int(refused), unchanged=int(unchanged))

    assert code == case.exit, f"exit {code}, expected {case.exit}:\n{output}"
    for text in expected:
        assert text in output, f"expected {text!r} in:\n{output}"
    assert cabinet.snapshot() == before, "the running environment, the committed state or the environments changed"
    # Nothing written outside the new environment, which is gone again: every environment, the boot
    # record, and the folders beside them (where a symlink could lead) are as they were.
    assert _everything_but_state(cabinet) == everything_before, "something outside the agent's state changed"
    assert _pending(cabinet) is None, "an install was left pending"
    assert not _spool(cabinet).exists(), "the spool was left behind"
    assert case.rotates or _trust_files(cabinet) == trust_before, "the device's trust roots changed"
    assert in_time, (f"audit events {sorted(events)}: expected "
                     + ("a discarded staging" if case.staged else "a refusal before anything was written"))
    # Nothing the medium names chooses where the agent writes: no new folder in STATE (T-MEDIUM).
    new_dirs = _state_dirs(cabinet) - state_dirs - ({"trust"} if case.rotates else set())
    assert not new_dirs, f"the agent left new folders in its state directory: {sorted(new_dirs)}"
    # However much a stick carries, what it costs the audit log is bounded (T-LOG).
    added = _audit_lines(cabinet)[logged:]
    assert case.audit_records is None or len(added) == case.audit_records, f"audit records added: {added}"
    grown = _audit_log(cabinet).stat().st_size - log_size
    assert case.audit_bytes is None or grown <= case.audit_bytes, f"the audit log grew by {grown} bytes"


# --- the corpus and the simulator themselves ----------------------------------------------------------------


def test_at_least_sixty_named_cases():
    names = [c.name for c in CASES]
    assert len(names) >= 60 and len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", n) for n in names)


def test_every_case_names_its_threat_in_the_threat_model():
    text = THREAT_MODEL.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (T-[A-Z0-9-]+) \|", text, re.MULTILINE))
    missing = [c.name for c in CASES if c.name not in rows]
    assert not missing, f"cases missing from docs/THREAT-MODEL.md: {missing}"
    wrong = [(c.name, c.threat, rows[c.name]) for c in CASES if rows[c.name] != c.threat]
    assert not wrong, f"cases mapped to another threat in docs/THREAT-MODEL.md: {wrong}"
    stale = sorted(set(rows) - {c.name for c in CASES})
    assert not stale, f"docs/THREAT-MODEL.md lists cases the corpus does not have: {stale}"
    defined = set(re.findall(r"^\| (T-[A-Z0-9-]+) \|", text, re.MULTILINE))
    assert {c.threat for c in CASES} <= defined, sorted({c.threat for c in CASES} - defined)


def test_the_unchanged_model_writes_what_bundle_write_writes(world, tmp_path):
    """The simulator is faithful: with no attack its stick is, byte for byte, the real tool's. A
    difference on a hostile stick is the attack and nothing else."""
    real = world.stick(tmp_path / "real", "d12", "full-2")
    sim = StickSim(world)
    sim.add("d12")
    sim.add("full-2")
    simulated = sim.write(tmp_path / "simulated")

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert files(simulated) == files(real)


def test_the_unchanged_model_installs(world, provisioned, tmp_path):
    """The honest starting point of every case is accepted, so each refusal is the attack's doing."""
    cabinet = _copy(provisioned, world, tmp_path / "device")
    sim = StickSim(world)
    sim.add("d12")
    code, output = _run_agent(cabinet, "on-insert", sim.write(tmp_path / "stick"))
    assert code == STAGED and "staged game/fortune-wheel, game/lucky-sevens, platform in env-2" in output, output


# --- names that are not UTF-8, and paths that climb: an honest medium still installs ------------------------


def _agent_bytes(cabinet: Cabinet, *args: str) -> subprocess.CompletedProcess:
    """The real bundle-agent with its output as bytes: whatever it prints must be UTF-8 as it is."""
    return subprocess.run(cabinet.command(*args), capture_output=True, timeout=AGENT_TIMEOUT,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})


def _installed(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == STAGED, result.stdout.decode() + result.stderr.decode()
    report = json.loads(result.stdout.decode("utf-8"))  # strict: no raw byte of a name leaks out
    assert report["message"].startswith("staged "), report
    return report


def test_a_stick_named_in_a_legacy_code_page_installs(world, provisioned, tmp_path):
    """A mount point named b"stick-\\xe9" (a FAT label in Latin-1), files named in no UTF-8 on it:
    ``on-insert --json`` installs; the name is printed and logged as ``\\xe9``, the lock file holds
    its own bytes, and every audit line is JSON."""
    cabinet = _copy(provisioned, world, tmp_path / "device")
    sim = StickSim(world)
    foreign_names(sim)
    medium = sim.write(tmp_path / LATIN_1_STICK)
    logged = len(_audit_lines(cabinet))
    _installed(_agent_bytes(cabinet, "on-insert", "--json", str(medium)))
    assert b"stick-\xe9" in StateDir(cabinet.dir / "state").lock.read_bytes()
    records = [json.loads(line) for line in _audit_lines(cabinet)[logged:]]
    assert records[0]["event"] == "examined" and records[0]["source"].endswith(LATIN_1_SHOWN), records[0]
    status = _agent_bytes(cabinet, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout.decode("utf-8"))["pending"], status.stderr


def test_a_bundle_folder_named_in_a_legacy_code_page_installs(world, provisioned, tmp_path):
    cabinet = _copy(provisioned, world, tmp_path / "device")
    bundle = tmp_path / LATIN_1_STICK / "d12"
    shutil.copytree(world.bundles / "d12", bundle)
    report = _installed(_agent_bytes(cabinet, "install", "--json", str(bundle)))
    assert {d["bundle"] for d in report["decisions"]} == {"d12"}


def test_install_through_payload_dotdot_spools_under_the_manifest_hash(world, provisioned, tmp_path):
    """``install BUNDLE/payload/..`` is BUNDLE: it installs, and writes nothing into STATE/payload."""
    cabinet = _copy(provisioned, world, tmp_path / "device")
    before = _state_dirs(cabinet)
    report = _installed(_agent_bytes(cabinet, "install", "--json", str(world.bundles / "d12" / PAYLOAD / "..")))
    assert {d["bundle"] for d in report["decisions"]} == {"d12"}
    assert _state_dirs(cabinet) == before and not _spool(cabinet).exists()
