"""Blocks (docs/FORMAT.md, "Blocks"): small objects compressed together, filled in staging order,
written where only their members decide, and smaller than one frame per object."""

from __future__ import annotations

import hashlib
import random
from concurrent.futures import Future
from pathlib import Path

import pytest
import zstandard

from agent.format import codec
from agent.format.manifest import Manifest
from bundler import encoders, make
from bundler.blocks import BLOCK_BYTES, BlockPacker
from bundler.make import SOLID_CONTENT_BYTES
from bundler.volumes import VolumeWriter
from tests.sim.releases import put, write_release
from tests.sim.tools import run_cli


def _done(content: bytes, last: bool) -> Future:
    future: Future = Future()
    future.set_result(codec.compress(content, 3))
    return future


def test_members_fill_blocks_in_order_and_each_block_is_written_once_the_next_is_sealed(tmp_path):
    writer = VolumeWriter(tmp_path / "payload", 1 << 30)
    packer = BlockPacker(writer, _done)
    big = [bytes([n]) * (BLOCK_BYTES // 2 - 10) for n in range(5)]
    ids = [packer.add(data, "raw") for data in big]
    # Blocks 1 and 2 are sealed (two members each); only the first is written yet.
    assert [o.encoding for o in writer.objects] == ["block", "raw", "raw"]
    writer.add(b"a file stored on its own", "raw")
    packer.flush()
    writer.close()
    listing = [(o.encoding, o.offset, o.block is not None) for o in writer.objects]
    half = len(big[0])
    at = [o.offset for o in writer.objects]
    assert listing == [("block", 0, False), ("raw", 0, True), ("raw", half, True),
                       ("raw", at[3], False),  # the file stored on its own comes before the next block
                       ("block", at[4], False), ("raw", 0, True), ("raw", half, True),
                       ("block", at[7], False), ("raw", 0, True)]
    blocks = [o.id for o in writer.objects if o.encoding == "block"]
    assert [o.block for o in writer.objects if o.block] == [blocks[0]] * 2 + [blocks[1]] * 2 + [blocks[2]]
    assert [o.id for o in writer.objects if o.block] == ids
    # What the device reads back: each block's frame decodes to its members end to end.
    payload = b"".join(p.read_bytes() for p in sorted((tmp_path / "payload").iterdir()))
    block = writer.objects[4]
    assert codec.decompress(payload[block.offset:block.offset + block.size], len(big[2]) * 2) == big[2] + big[3]


def test_a_member_is_stored_once_and_never_under_two_encodings(tmp_path):
    writer = VolumeWriter(tmp_path / "payload", 1 << 30)
    packer = BlockPacker(writer, _done)
    first = packer.add(b"twice", "raw")
    assert packer.add(b"twice", "raw") == first
    assert packer.add(b"twice", "bsdiff") is None
    assert writer.add(b"twice", "zstd") is None
    packer.flush()
    assert [o.encoding for o in writer.objects] == ["block", "raw"]


def _elf(rng: random.Random, shift: int) -> bytes:
    """A small executable-like file; ``shift`` moves every address past its middle."""
    code = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    for number in range(3_000):
        address = 0x400000 + 7 * number + (shift if number >= 1_500 else 0)
        code += bytes([0xE8, rng.randrange(4), 0x48]) + address.to_bytes(4, "little")
    return bytes(code)


@pytest.fixture(scope="module")
def module_delta(trust, tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A kernel-like release pair: 40 modules rebuilt with their code moved, 30 new small texts."""
    root = tmp_path_factory.mktemp("modules")
    for version in ("1", "2"):
        write_release(root / f"r{version}", {"platform": (version, int(version))})
        for number in range(40):  # each module's code moves its own way: 40 different patches
            shift = 0 if version == "1" else 64 + 8 * number
            put(root / f"r{version}/platform", f"lib/modules/m{number:02}.ko", _elf(random.Random(number), shift))
        if version == "2":
            for number in range(30):
                put(root / "r2/platform", f"share/notes/n{number:02}.txt",
                    "".join(f"note {number} line {line}: coin accepted\n" for line in range(200)))
    run_cli("bundle", "make", "--release", root / "r2/release.toml", "--base", root / "r1/release.toml",
        "--key", trust.key("rel1"), "--key", trust.key("rel2"), "--out", root / "delta", "--level", "19", check=True)
    files = {str(p.relative_to(root / "r2/platform")): p.read_bytes()
             for p in (root / "r2/platform").rglob("*") if p.is_file()}
    return root, files


def _members_bytes(root: Path, manifest: Manifest) -> dict[str, bytes]:
    """Each member's bytes, by id, read from its block as a device reads them."""
    payload = b"".join((root / "delta/payload" / v.name).read_bytes() for v in manifest.volumes)
    found = {}
    for block in [o for o in manifest.objects if o.encoding == "block"]:
        members = [o for o in manifest.objects if o.block == block.id]
        content = codec.decompress(payload[block.offset:block.offset + block.size], sum(m.size for m in members))
        found.update({m.id: content[m.offset:m.offset + m.size] for m in members})
    return found


def test_patches_and_small_new_files_share_blocks_smaller_than_one_frame_each(module_delta):
    root, _ = module_delta
    manifest = Manifest.from_stored((root / "delta/manifest.json.zst").read_bytes())
    assert "block" in manifest.codecs
    members = [o for o in manifest.objects if o.block is not None]
    encodings = [o.encoding for o in members]  # a few modules are smaller as zstd patches, alone
    assert encodings.count("bsdiff") >= 30 and encodings.count("raw") == 30 and len(encodings) <= 70
    found = _members_bytes(root, manifest)
    assert all(hashlib.sha256(found[m.id]).hexdigest() == m.id for m in members)
    one_frame_each = sum(len(encoders.compress(data, 19)) for data in found.values())
    in_blocks = sum(o.size for o in manifest.objects if o.encoding == "block")
    assert in_blocks < 0.8 * one_frame_each, (in_blocks, one_frame_each)


def test_a_delta_with_blocks_applies_to_exactly_the_new_tree(cli, trust, module_delta, tmp_path):
    root, _ = module_delta
    result = cli("bundle", "verify", root / "delta", "--root", trust.root, "--base",
                 f"platform={root / 'r1/platform'}", "--work-dir", tmp_path)
    assert "every file matches" in result.stdout


def test_the_last_block_has_a_small_window_so_it_is_compressed_beside_the_one_before(cli, trust, tmp_path):
    """A component's last two blocks are compressed after its other encodings. The last one's
    window (make.LAST_BLOCK_WINDOW_LOG) lets its tables fit the budget beside the one before's,
    where a full window made one wait for the other; the other blocks keep their full window."""
    write_release(tmp_path / "r1", {"platform": ("1", 1)})
    words = [f"reel{number}" for number in range(500)]
    for number in range(28):  # new content of 1 MiB a file that compresses: stored raw in blocks
        rng = random.Random(number)
        put(tmp_path / "r1/platform", f"share/paytable-{number:02}.txt",
            " ".join(rng.choices(words, k=300_000)).encode()[:SOLID_CONTENT_BYTES])
    cli("bundle", "make", "--release", tmp_path / "r1/release.toml", "--key", trust.key("rel1"),
        "--key", trust.key("rel2"), "--out", tmp_path / "full", "--level", "3")
    manifest = Manifest.from_stored((tmp_path / "full/manifest.json.zst").read_bytes())
    payload = b"".join((tmp_path / "full/payload" / v.name).read_bytes() for v in manifest.volumes)
    blocks = [o for o in manifest.objects if o.encoding == "block"]
    windows = [zstandard.get_frame_parameters(payload[b.offset:b.offset + b.size]).window_size for b in blocks]
    assert windows == [16 << 20, 1 << make.LAST_BLOCK_WINDOW_LOG]  # 16 members of 1 MiB, then 12
    result = cli("bundle", "verify", tmp_path / "full", "--root", trust.root, "--apply", "--work-dir", tmp_path)
    assert "every file matches" in result.stdout
    # The two final blocks of the platform pair (12.4 and 9.2 MiB) fit the budget together only so.
    before, last = encoders.memory_needed(12 << 20, 0, 19), 9 << 20
    assert before + encoders.memory_needed(last, 0, 19, make.LAST_BLOCK_WINDOW_LOG) <= make.ENCODING_MEMORY_BYTES
    assert before + encoders.memory_needed(last, 0, 19) > make.ENCODING_MEMORY_BYTES
