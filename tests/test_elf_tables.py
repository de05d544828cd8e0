"""The elf-tables codec: relocation and symbol tables re-coded as differences (agent/format/elf_tables.py)."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import nacl
import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from agent.apply import StagingError, apply_component
from agent.format import elf_tables
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import MAX_CHUNK_BYTES, Manifest, MalformedManifest
from agent.format.tree import tree_digest
from agent.payload import Payload
from agent.scan import scan_tree
from tests.fuzz import fuzz_formats
from tests.sim.elf import module, relocatable
from tests.sim.releases import put, write_release
from tests.sim.tools import run_cli


def _real_programs() -> list[Path]:
    """ELF files every test machine has: the interpreter and the compiled modules of two dependencies."""
    found = [Path(sys.executable).resolve()]
    for package in (zstandard, nacl):
        found += sorted(Path(package.__file__).parent.rglob("*.so"))
    return [path for path in found if elf_tables.tables(path.read_bytes())]


def _recoded(data: bytes) -> bytes:
    copy = bytearray(data)
    elf_tables.encode(copy)
    return bytes(copy)


def _restored(data: bytes) -> bytes:
    copy = bytearray(data)
    elf_tables.decode(copy)
    return bytes(copy)


def test_real_programs_are_restored_exactly_and_only_their_tables_change():
    programs = _real_programs()
    assert programs, "no ELF file with relocation or symbol tables on this machine"
    for path in programs:
        data = path.read_bytes()
        recoded = _recoded(data)
        assert recoded != data and len(recoded) == len(data)
        assert _restored(recoded) == data, path
        inside = {at for offset, size, _ in elf_tables.tables(data) for at in range(offset, offset + size)}
        assert all(at in inside for at in range(len(data)) if recoded[at] != data[at]), path


def test_after_an_edit_moved_the_code_offsets_and_values_differ_only_where_it_moved():
    old, new = module(5), module(5, edits=1)
    recoded_old, recoded_new = _recoded(old), _recoded(new)

    def differing(data_old: bytes, data_new: bytes, table: int, column: int) -> int:
        """Rows of a table whose 8-byte word ``column`` differs between the two builds."""
        (at_old, size, _), (at_new, _, _) = elf_tables.tables(data_old)[table], elf_tables.tables(data_new)[table]
        return sum(data_old[at_old + row + column:at_old + row + column + 8]
                   != data_new[at_new + row + column:at_new + row + column + 8] for row in range(0, size, 24))
    relocations, symbols = 0, 1
    assert differing(old, new, relocations, 0) > 1000  # every r_offset after the edit
    assert differing(recoded_old, recoded_new, relocations, 0) == 1  # the first one after it
    assert differing(old, new, symbols, 8) > 100  # every st_value after it
    assert differing(recoded_old, recoded_new, symbols, 8) == 1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 1000), edits=st.integers(0, 8), rows=st.integers(1, 300))
def test_any_module_is_restored_exactly(seed, edits, rows):
    data = module(seed, min(edits, rows), rows)
    assert _restored(_recoded(data)) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048), st.binary(max_size=64))
def test_any_bytes_are_restored_exactly(tail, head):
    """Malformed files included: whatever the header says, decoding finds what encoding found."""
    base = bytearray(module(1, rows=8))
    base[:len(head)] = head[:64]
    data = bytes(base) + tail
    assert _restored(_recoded(data)) == data


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 50), damage=st.lists(st.tuples(st.integers(0, 1 << 14), st.binary(min_size=1, max_size=8)),
                                             max_size=8), piece=st.integers(1, 4096), start=st.integers(0, 4096))
def test_a_damaged_module_is_restored_rebuilt_and_cut_like_any_file(seed, damage, piece, start):
    """A bundle's content or a base file need not be the ELF file its header says: header fields,
    section headers and rows overwritten anywhere. The device's rebuild and its base region behave
    as for a well-formed module (tests/fuzz/fuzz_formats.py, elf_tables_codec, explores further)."""
    data = bytearray(module(seed, edits=2, rows=60))
    for at, patch in damage:
        at %= len(data)
        data[at:at + len(patch)] = patch[:len(data) - at]
    fuzz_formats.elf_tables_codec((piece - 1).to_bytes(4, "little") + start.to_bytes(4, "little")
                                  + (300).to_bytes(4, "little") + bytes(data))


def test_slices_do_not_change_the_encoding_and_high_symbols_keep_their_addends(monkeypatch):
    data = module(4, edits=5, rows=2000)
    whole = _recoded(data)
    monkeypatch.setattr(elf_tables, "SLICE_ROWS", 7)
    assert _recoded(data) == whole
    monkeypatch.setattr(elf_tables, "ADDEND_SYMBOLS", 100)  # the module's calls go to symbols up to 500
    capped = _recoded(data)
    assert capped != whole and _restored(capped) == data
    (rela, size, _), = [t for t in elf_tables.tables(data) if t[2] == elf_tables.SHT_RELA]
    for row in range(rela, rela + size, 24):
        info, addend = struct.unpack_from("<Qq", data, row + 8)
        if info >> 32 >= 100:
            assert capped[row + 16:row + 24] == data[row + 16:row + 24]


def _with_section(data: bytes, number: int, **fields) -> bytes:
    """``data`` with fields (offset, size, entsize, type) of section header ``number`` rewritten."""
    out = bytearray(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    at = shoff + number * 64
    layout = {"type": (4, "<I"), "offset": (0x18, "<Q"), "size": (0x20, "<Q"), "entsize": (0x38, "<Q")}
    for name, value in fields.items():
        where, kind = layout[name]
        struct.pack_into(kind, out, at + where, value)
    return bytes(out)


def test_tables_that_do_not_fit_the_rules_are_left_as_they_are():
    data = module(2, rows=40)
    (rela, rela_size, _), (symtab, symtab_size, _) = elf_tables.tables(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    assert elf_tables.tables(_with_section(data, 3, offset=rela + 24)) == [(rela, rela_size, 4)]  # overlaps
    assert elf_tables.tables(_with_section(data, 2, entsize=16)) == [(symtab, symtab_size, 2)]
    assert elf_tables.tables(_with_section(data, 2, size=rela_size + 1)) == [(symtab, symtab_size, 2)]
    assert elf_tables.tables(_with_section(data, 2, size=len(data))) == [(symtab, symtab_size, 2)]  # past the end
    assert elf_tables.tables(_with_section(data, 2, offset=24)) == [(symtab, symtab_size, 2)]  # in the ELF header
    assert elf_tables.tables(_with_section(data, 2, offset=shoff - 24)) == [(symtab, symtab_size, 2)]
    assert elf_tables.tables(data[:4] + b"\x01" + data[5:]) == []  # ELF32
    assert elf_tables.tables(data[:5] + b"\x02" + data[6:]) == []  # big-endian
    assert elf_tables.tables(data[:len(data) - 64]) == []  # the section header table cut short


def test_a_file_larger_than_the_limit_has_no_tables(monkeypatch):
    data = module(3, rows=40)
    monkeypatch.setattr(elf_tables, "MAX_ELF_BYTES", len(data) - 1)
    assert elf_tables.tables(data) == []


# --- in bundles ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def delta(tmp_path_factory):
    """A delta of a module rebuilt with its code moved, next to one made without the codec."""
    from tests.sim.releases import make_trust
    work = tmp_path_factory.mktemp("elf")
    trust = make_trust(run_cli, work / "trust", threshold=1)
    releases = []
    for number, edits in ((1, 0), (2, 30)):
        release = write_release(work / f"r{number}", {"platform": (str(number), number)})
        put(work / f"r{number}/platform", "lib/modules/cabinet.ko", module(9, edits, rows=20_000), 0o644)
        put(work / f"r{number}/platform", "etc/release", f"{number}\n")
        releases.append(release)
    run_cli("bundle", "make", "--release", releases[1], "--base", releases[0], "--key", trust.key("rel1"),
            "--out", work / "delta", check=True)
    return work, work / "delta", trust


def _manifest_json(bundle: Path) -> dict:
    return json.loads(zstandard.ZstdDecompressor().decompress(manifest_path(bundle).read_bytes()))


def test_a_rebuilt_module_is_carried_re_coded_and_installs_exactly(delta, tmp_path):
    work, bundle, _ = delta
    document = _manifest_json(bundle)
    entry = next(e for e in document["components"][0]["entries"] if e["path"] == "lib/modules/cabinet.ko")
    assert entry["elf_tables"] is True and all(c["prefix"]["elf_tables"] for c in entry["chunks"])
    assert "elf-tables" in document["codecs"]
    manifest = Manifest.from_stored(manifest_path(bundle).read_bytes())
    component = manifest.component("platform")
    with Payload(bundle, manifest) as payload:
        apply_component(component, payload, tmp_path / "out", base=work / "r1/platform", set_owner=False)
    assert (tmp_path / "out/lib/modules/cabinet.ko").read_bytes() == (work / "r2/platform/lib/modules/cabinet.ko"
                                                                       ).read_bytes()
    assert tree_digest(scan_tree(tmp_path / "out")) == component.tree_digest


def test_the_codec_makes_the_delta_smaller(delta):
    """What the codec is for: the same rebuild patched as plain bytes costs more."""
    from bundler import encoders

    def cost(data: bytes, region: bytes) -> int:  # what the bundler ranks by: a block member by its frame
        name, stored = encoders.smallest(data, 19, region)
        return len(encoders.compress(stored, 9)) if encoders.ENCODERS[name].in_block else len(stored)
    work, bundle, _ = delta
    old = (work / "r1/platform/lib/modules/cabinet.ko").read_bytes()
    new = (work / "r2/platform/lib/modules/cabinet.ko").read_bytes()
    assert cost(_recoded(new), _recoded(old)) * 5 < cost(new, old) * 4  # measured: 11 KB against 16 KB


def test_a_base_module_other_than_the_one_patched_is_named(delta, tmp_path):
    work, bundle, _ = delta
    base = tmp_path / "base"
    shutil.copytree(work / "r1/platform", base, symlinks=True)
    (base / "lib/modules/cabinet.ko").write_bytes(module(10, rows=20_000))
    manifest = Manifest.from_stored(manifest_path(bundle).read_bytes())
    with Payload(bundle, manifest) as payload, pytest.raises(StagingError, match="differs from the one this delta"):
        apply_component(manifest.component("platform"), payload, tmp_path / "out", base=base, set_owner=False)


def _broken(bundle: Path, change) -> Exception:
    document = _manifest_json(bundle)
    entry = next(e for e in document["components"][0]["entries"] if e["path"] == "lib/modules/cabinet.ko")
    change(document, entry)
    with pytest.raises(MalformedManifest) as refused:
        Manifest.from_bytes(json.dumps(document).encode())
    return refused.value


@pytest.mark.parametrize("change, message", [
    (lambda d, e: e.update(elf_tables=False), "elf_tables must be true or absent"),
    (lambda d, e: e.update(gzip={"header": "1f8b08000000000000ff", "level": 9, "size": e["size"],
                                 "sha256": e["sha256"]}), "re-coded ELF tables come only with chunks"),
    (lambda d, e: d["components"][0].pop("base"), "only allowed in a delta"),
    (lambda d, e: e["chunks"][0]["prefix"].update(gunzip=True), "not both"),
    (lambda d, e: e["chunks"][0]["prefix"].update(offset=elf_tables.MAX_ELF_BYTES),
     f"must end within {elf_tables.MAX_ELF_BYTES}"),
    (lambda d, e: d["codecs"].remove("elf-tables"), "which its codecs list does not name"),
])
def test_a_manifest_breaking_the_codec_rules_is_refused(delta, change, message):
    assert message in str(_broken(delta[1], change))


def test_files_larger_than_the_limit_are_refused(delta):
    def larger(document, entry):
        missing = elf_tables.MAX_ELF_BYTES + 1 - entry["size"]  # in chunks within the limit of one
        entry["chunks"] += [dict(entry["chunks"][-1], size=min(MAX_CHUNK_BYTES, missing - done))
                            for done in range(0, missing, MAX_CHUNK_BYTES)]
        entry["size"] = elf_tables.MAX_ELF_BYTES + 1
    assert "only in files of at most" in str(_broken(delta[1], larger))


def test_a_program_without_tables_is_left_as_it_is():
    data = relocatable(b"\x90" * 64, [], [], b"\0")
    without = _with_section(_with_section(data, 2, type=1), 3, type=1)
    assert elf_tables.tables(without) == [] and _recoded(without) == without
