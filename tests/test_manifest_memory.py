"""Memory of the largest manifest the parser accepts (T-EXHAUST; docs/FORMAT.md, "Limits").

An insider or a build machine gone wrong can sign anything the limits allow, so the limits are
what keeps a cabinet's memory: the agent must stay under 256 MiB of peak RSS with any manifest
within them. Here the costliest such manifest, grown from the honest delta d12, is signed by the
release keys, written on a stick and inserted into a provisioned cabinet with the real
``bundle-agent on-insert``; its peak RSS is read with os.wait4. Once it is installed in full
(parsing, then staging, which scans the staged tree), once refused after parsing the costliest
listing to parse. The bundler refuses to make what devices would refuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent.format import bsdiff, codec, elf_tables
from agent.format.manifest import (MAX_CHUNK_BYTES, MAX_CHUNKS, MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_PREFIX_BYTES,
                                   MAX_STORED_MANIFEST_BYTES, MAX_STORED_OBJECT_BYTES, MAX_VOLUME_BYTES, StoredObject)
from agent.format.tree import Chunk, Entry, Prefix, tree_digest
from bundler import make
from bundler.release import load_release
from tests.sim.device import STAGED, Cabinet
from tests.sim.elf import relocatable
from tests.sim.stick import StickSim, file_entry
from tests.sim.summary import count_summary
from tests.sim.tools import BIN

PEAK_LIMIT = 256 << 20  # the agent's whole process (docs/FORMAT.md, "Limits")
AGENT_TIMEOUT = 120  # seconds; an install of the largest manifest takes ~20 here
GAME = "game/memory"
ELSEWHERE = "game/memory-elsewhere"  # targeted at another machine: parsed and kept, never staged
FILES = 8  # ELSEWHERE's files of chunks, MAX_CHUNKS each at most


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _tree_digest(entries: list[dict]) -> str:
    return tree_digest(Entry(path=e["path"], type=e["type"], mode=int(e["mode"], 8) if "mode" in e else None,
                             uid=e["uid"], gid=e["gid"], size=e.get("size"), sha256=e.get("sha256"),
                             target=e.get("target")) for e in entries)


def largest_manifest(document: dict, kind: str) -> tuple[bytes, bytes]:
    """``document`` (d12's) grown to MAX_MANIFEST_BYTES the costliest way; returns its JSON and the
    payload it adds.

    Parsed, entries and removed paths cost ~5 bytes per byte of JSON, objects and chunks ~2.5, so:
    MAX_ENTRIES removed paths (in the platform delta, where they are informational); entries up to
    MAX_ENTRIES in all, GAME's, named in upper case so each keeps a case-folded key too, with
    distinct modification times (an int object each) and of ``kind``: "dir" (the quickest to stage)
    or "symlink" (each also in the symlink map while parsing); then objects of 3 distinct bytes up
    to MAX_ENTRIES; then chunks of one object, in ELSEWHERE (reading each chunk's object while
    staging would take minutes, not memory); then spaces after the closing brace.
    """
    platform = next(c for c in document["components"] if c["name"] == "platform")
    platform["removed"] = [f"zz/{n:06x}" for n in range(MAX_ENTRIES)]
    root = {"path": ".", "type": "dir", "mode": "0755", "uid": 0, "gid": 0, "mtime": 0}
    count = MAX_ENTRIES - sum(len(c["entries"]) for c in document["components"]) - 2 - FILES
    if kind == "dir":
        entries = [{"path": f"D{n:06X}", "type": "dir", "mode": "0755", "uid": 0, "gid": 0,
                    "mtime": 1_700_000_000 + n} for n in range(count)]
    else:
        entries = [{"path": f"L{n:06X}", "type": "symlink", "uid": 0, "gid": 0, "mtime": 1_700_000_000 + n,
                    "target": "."} for n in range(count)]
    game = {"name": GAME, "version": "1.0", "sequence": 1, "policy": "content", "entries": [root, *entries]}
    game["tree_digest"] = _tree_digest(game["entries"])
    elsewhere = {"name": ELSEWHERE, "version": "1.0", "sequence": 1, "policy": "content", "targets": ["SN0002"],
                 "entries": [root], "tree_digest": ""}
    volume = {"name": "", "size": 0, "sha256": ""}
    document["components"] += [game, elsewhere]
    document["volumes"].append(volume)

    room = MAX_MANIFEST_BYTES - len(_compact(document)) - 300 * (FILES + 1)  # files; volume and digest to come
    offset, contents = sum(v["size"] for v in document["volumes"]), []
    while len(document["objects"]) < MAX_ENTRIES:
        content = len(contents).to_bytes(3, "big")
        stored = {"id": hashlib.sha256(content).hexdigest(), "offset": offset + 3 * len(contents), "size": 3,
                  "encoding": "raw"}
        room -= len(_compact(stored)) + 1
        if room < 0:
            break
        document["objects"].append(stored)
        contents.append(content)
    document["codecs"] = sorted({*document["codecs"], "raw"})  # the objects added are raw
    added = b"".join(contents)
    digest = hashlib.sha256(added).hexdigest()
    volume.update(name=f"{digest}.vol", size=len(added), sha256=digest)

    chunk = {"object": document["objects"][-1]["id"], "size": 3}
    chunks = max(0, room) // (len(_compact(chunk)) + 1)
    assert chunks <= FILES * MAX_CHUNKS, "more chunks than the files hold: raise FILES"
    for number in range(FILES):
        count = max(1, min(MAX_CHUNKS, chunks - number * MAX_CHUNKS))
        elsewhere["entries"].append({"path": f"M{number}", "type": "file", "mode": "0644", "uid": 0, "gid": 0,
                                     "mtime": 0, "size": 3 * count, "chunks": [chunk] * count,
                                     "sha256": hashlib.sha256(contents[-1] * count).hexdigest()})
    elsewhere["tree_digest"] = _tree_digest(elsewhere["entries"])
    data = _compact(document)
    assert sum(len(c["entries"]) for c in document["components"]) == MAX_ENTRIES
    assert len(data) <= MAX_MANIFEST_BYTES
    return data + b" " * (MAX_MANIFEST_BYTES - len(data)), added


def stick_with_largest_manifest(world, path: Path, kind: str, sim: StickSim | None = None, **changes) -> Path:
    """A stick with d12 (``sim``'s, as it may have been changed) grown by ``largest_manifest``, its
    top level then changed by ``changes``."""
    sim = sim or StickSim(world)
    model = sim.bundle("d12")
    document = json.loads(model.manifest.to_bytes())
    document.update(changes)
    model.manifest_json, added = largest_manifest(document, kind)
    model.level = 3
    model.volume_bytes.append(added)
    assert len(model.manifest_file()) <= MAX_STORED_MANIFEST_BYTES
    return sim.write(path)


# Runs the command it is given and writes its exit code and peak RSS. The agent is forked from this
# small process, not from pytest: Linux counts in a child's peak RSS the parent's from before the
# child's exec, so wait4 in pytest would report pytest's own peak whenever that is higher.
_MEASURE = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(process.pid, 0)
process.returncode = os.waitstatus_to_exitcode(status)
open(sys.argv[1], "w").write(f"{process.returncode} {usage.ru_maxrss * 1024}")
"""


def on_insert_peak(cabinet: Cabinet, medium: Path, report: Path) -> tuple[int, int, str]:
    """The real ``bundle-agent on-insert``: its exit code, its peak RSS in bytes and its output."""
    agent = cabinet.command("on-insert", medium)
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(report), *agent], capture_output=True, text=True,
                            timeout=AGENT_TIMEOUT, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    code, peak = map(int, report.read_text().split())
    return code, peak, result.stdout + result.stderr


def files_at_the_chunk_limits(model, base_tree: Path) -> list[tuple[str, bytes]]:
    """Add to d12's platform delta the costliest chunks to decode (MAX_CHUNK_BYTES of random
    bytes each, so their stored objects are as large), their base files written in ``base_tree``: a
    zstd-patch against a region of MAX_PREFIX_BYTES, a bsdiff patch of one ``add`` as long as the
    chunk against that region, and a MAX_ELF_BYTES module carried with its tables re-coded (the
    device holds the re-coded base and the file being rebuilt). Returns the new files' paths and
    bytes."""
    rng = random.Random(7)
    region = rng.randbytes(MAX_PREFIX_BYTES)
    (base_tree / "limits-region.bin").write_bytes(region)
    code_bytes = elf_tables.MAX_ELF_BYTES - (1 << 20)  # room for the tables and headers
    tables = [(16 * n, 1, 2, -4) for n in range(1000)], [(1, 0x12, 1, 0, 64)], b"\0f\0"
    base_module = relocatable(rng.randbytes(code_bytes), *tables)
    new_module = relocatable(rng.randbytes(code_bytes), *tables)
    assert len(new_module) <= elf_tables.MAX_ELF_BYTES and elf_tables.tables(new_module)
    (base_tree / "limits-base.ko").write_bytes(base_module)

    objects, files = [], []

    def chunk(stored: bytes, encoding: str, size: int, prefix: Prefix) -> Chunk:
        assert len(stored) <= MAX_STORED_OBJECT_BYTES
        object_id = hashlib.sha256(stored).hexdigest()
        objects.append((StoredObject(id=object_id, offset=0, size=len(stored), encoding=encoding), stored))
        return Chunk(object=object_id, size=size, prefix=prefix)

    whole_region = Prefix("limits-region.bin", 0, MAX_PREFIX_BYTES)
    content = rng.randbytes(MAX_CHUNK_BYTES)
    files.append(("limits-patched.bin", content,
                  (chunk(codec.compress(content, 1, region), "zstd-patch", MAX_CHUNK_BYTES, whole_region),)))
    patch = bsdiff.pack([(MAX_CHUNK_BYTES, 0, 0)], rng.randbytes(MAX_CHUNK_BYTES), b"")
    files.append(("limits-bsdiff.bin", bsdiff.apply(region, patch, MAX_CHUNK_BYTES),
                  (chunk(patch, "bsdiff", MAX_CHUNK_BYTES, whole_region),)))
    recoded_base, recoded_new = bytearray(base_module), bytearray(new_module)
    elf_tables.encode(recoded_base)
    elf_tables.encode(recoded_new)
    module_region = Prefix("limits-base.ko", 0, len(base_module), elf_tables=True)
    pieces = [recoded_new[at:at + MAX_CHUNK_BYTES] for at in range(0, len(recoded_new), MAX_CHUNK_BYTES)]
    files.append(("limits.ko", new_module, tuple(
        chunk(codec.compress(piece, 1, recoded_base), "zstd-patch", len(piece), module_region) for piece in pieces)))
    model.repack([*model.objects(), *objects], volume_size=MAX_VOLUME_BYTES)
    model.edit("platform", add=[file_entry(path, data, chunks=chunks, elf_tables=path.endswith(".ko"))
                                for path, data, chunks in files])
    return [(path, data) for path, data, _ in files]


def test_the_largest_manifest_with_chunks_at_every_limit_is_installed_in_under_256_mib(world, cabinet, tmp_path):
    sim = StickSim(world)
    model = sim.bundle("d12")
    base_tree = cabinet.environments_dir / "env-1" / "platform"
    written = files_at_the_chunk_limits(model, base_tree)
    medium = stick_with_largest_manifest(world, tmp_path / "stick", "dir", sim=sim)
    code, peak, output = on_insert_peak(cabinet, medium, tmp_path / "peak")
    count_summary("memory-installed", "largest manifest and chunks at the limits installed: peak RSS {mib} MiB",
                  mib=peak >> 20)
    assert peak < PEAK_LIMIT, f"peak RSS {peak >> 20} MiB:\n{output[-2000:]}"
    assert code == STAGED and f"staged game/fortune-wheel, game/lucky-sevens, {GAME}, platform in env-2" in output, output
    assert cabinet.status()["pending"]["environment"] == "env-2"
    staged = cabinet.environments_dir / "env-2" / "platform"
    for path, data in written:
        assert (staged / path).read_bytes() == data, path


def test_the_costliest_listing_to_parse_is_refused_later_in_under_256_mib(world, cabinet, tmp_path):
    """Symlinks cost more than folders to parse (the symlink map): here the bundle is for another
    product, which the agent only learns once the manifest is parsed."""
    before = cabinet.snapshot()
    medium = stick_with_largest_manifest(world, tmp_path / "stick", "symlink", product="other-cabinet")
    code, peak, output = on_insert_peak(cabinet, medium, tmp_path / "peak")
    count_summary("memory-parsed", "costliest listing parsed, then refused: peak RSS {mib} MiB", mib=peak >> 20)
    assert peak < PEAK_LIMIT, f"peak RSS {peak >> 20} MiB:\n{output[-2000:]}"
    assert code == 0 and "bundle is for product other-cabinet" in output, output
    assert cabinet.snapshot() == before


@pytest.mark.parametrize("limit, value, message", [
    ("MAX_ENTRIES", 5, r"the bundle would list \d+ entries; devices accept at most 5 in one bundle \(MAX_ENTRIES"),
    ("MAX_MANIFEST_BYTES", 1000, r"the manifest would be \d+ bytes of JSON; devices accept at most 1000 "
                                 r"\(MAX_MANIFEST_BYTES"),
])
def test_bundle_make_refuses_what_devices_would_refuse(world, tmp_path, monkeypatch, limit, value, message):
    monkeypatch.setattr(make, limit, value)
    with pytest.raises(make.MakeRefused, match=message):
        make.make_bundle(load_release(world.release("r2")), None, [], tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
