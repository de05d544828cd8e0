"""Coverage-guided fuzzing of the parsers a device runs on stick content (``make fuzz``).

The first input byte picks the parser, the rest is its input; anything but a result or the
parser's documented error - or a broken invariant (assert) - is a crash. The same parsers and
invariants run for a short while in every ``make test`` (tests/test_fuzz_formats.py); this is
for long runs:

    make fuzz                      # 300 s
    make fuzz FUZZ_SECONDS=3600
    .venv/bin/python tests/fuzz/fuzz_formats.py -max_total_time=60 [CORPUS_DIR...] [libFuzzer flags]

Without a corpus directory the run starts from seeds made here (the valid manifest of the
property tests, the golden-vector stick in tests/vectors) in a temporary directory. libFuzzer
writes a crashing input to ``./crash-<sha1>``; replay it with
``.venv/bin/python tests/fuzz/fuzz_formats.py ./crash-<sha1>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `tests` importable for the seeds
    sys.path.insert(0, str(REPO))

from agent import medium
from agent.format import codec, elf_tables, gzip_recipe, paths, stick  # noqa: E402
from agent.format.manifest import ENCODINGS, MalformedManifest, Manifest  # noqa: E402
from agent.medium import read_bundle  # noqa: E402
from keys.detached import load_root_candidate  # noqa: E402
from keys.errors import Failed, MalformedKey, MalformedSignature, MalformedTrustRoot, UpdateError  # noqa: E402
from keys.minisign import PublicKey, Signature  # noqa: E402
from keys.trust_root import TrustRoot  # noqa: E402

VECTORS = REPO / "tests" / "vectors"


class _Input:
    """Reads fields off the front of the fuzzer's bytes (empty once exhausted, never an error)."""

    def __init__(self, data: bytes):
        self.data = data

    def byte(self) -> int:
        value, self.data = (self.data[0] if self.data else 0), self.data[1:]
        return value

    def number(self, limit: int) -> int:
        """0 .. limit - 1 from up to four bytes."""
        value = int.from_bytes(self.data[:4], "little")
        self.data = self.data[4:]
        return value % limit

    def take(self, count: int) -> bytes:
        value, self.data = self.data[:count], self.data[count:]
        return value

    def text(self, count: int) -> str:
        return self.take(count).decode("utf-8", "surrogateescape")


# --- one target per parser ---------------------------------------------------------------------------------


def manifest_json(data: bytes) -> None:
    try:
        manifest = Manifest.from_bytes(data)
    except (MalformedManifest, codec.UnsupportedCodec):
        return
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


def manifest_stored(data: bytes) -> None:
    try:
        manifest = Manifest.from_stored(data)
    except (MalformedManifest, codec.UnsupportedCodec):
        return
    assert Manifest.from_bytes(manifest.to_bytes()) == manifest


def delta_decoder(data: bytes) -> None:
    """encoding, size, optional prefix, then the stored object."""
    given = _Input(data)
    encoding = ENCODINGS[given.byte() % len(ENCODINGS)]
    size = 1 + given.number(1 << 17)
    with_prefix = given.byte() & 1
    prefix = given.take(given.byte() * 4) if with_prefix else None
    try:
        decoded = codec.decode(encoding, given.data, size, prefix)
    except codec.CorruptObject:
        return
    assert len(decoded) == size


def elf_tables_codec(data: bytes) -> None:
    """piece size, a base range, then a file's content (any bytes: a bundle's new content, a base
    file that is not what its header says). Re-coding and back gives the same bytes, and so does
    a device's rebuild re-coded again; a base region is cut at its range."""
    given = _Input(data)
    piece, start, length = 1 + given.number(1 << 12), given.number(1 << 12), given.number(1 << 12)
    content = given.data
    recoded = bytearray(content)
    elf_tables.encode(recoded)
    restored = bytearray(recoded)
    elf_tables.decode(restored)
    assert restored == content and len(recoded) == len(content)
    pieces = [content[at:at + piece] for at in range(0, len(content), piece)]
    written: list[bytes] = []
    rebuilder = elf_tables.Rebuilder(len(content), written.append)
    for block in pieces:
        rebuilder.feed(block)
    rebuilder.finish()
    rebuilt = bytearray(b"".join(written))
    elf_tables.encode(rebuilt)  # decoding is the inverse on any bytes too: what the bundler could have sent
    assert rebuilt == content
    blocks = iter(pieces)
    region = elf_tables.base_content(lambda: next(blocks, b""), start, start + length)
    assert region == recoded[start:start + length]


def gzip_recipes(data: bytes) -> None:
    from tests.test_fuzz_formats import check_gzip_recipe_on_any_bytes  # imported once, then cached
    check_gzip_recipe_on_any_bytes(data[1:], data[0] * 64 if data else 0)


def gunzip_prefix(data: bytes) -> None:
    """end, block size, then the stream."""
    given = _Input(data)
    end, block = given.number(1 << 16), 1 + given.byte()
    stream = given.data
    blocks = [stream[i:i + block] for i in range(0, len(stream), block)]
    try:
        content = gzip_recipe.gunzip_prefix(lambda: blocks.pop(0) if blocks else b"", end)
    except ValueError:
        return
    assert len(content) <= end


def path_rules(data: bytes) -> None:
    """Lines: a path, then ``link<TAB>target`` pairs for resolve_within."""
    lines = data.decode("utf-8", "surrogateescape").split("\n")
    path = lines[0]
    try:
        paths.check_path(path)
    except paths.PathError:
        pass
    else:
        assert path == paths.ROOT or ".." not in path.split("/") and not path.startswith("/")
        paths.collision_key(path, fold_case=True)
    for inside in (False, True):
        try:
            paths.check_link_target("link", path, must_stay_inside=inside)
        except paths.PathError:
            pass
    symlinks = dict(line.split("\t", 1) for line in lines[1:] if "\t" in line)
    try:
        resolved = paths.resolve_within(path, symlinks)
    except paths.PathError:
        return
    parts = resolved.split("/")
    assert resolved == paths.ROOT or (not resolved.startswith("/") and all(p not in ("", ".", "..") for p in parts))


def stick_names(data: bytes) -> None:
    given = _Input(data)
    folder = given.text(given.byte() % 70)
    marker = given.data
    named = stick.marked_sha256(marker, folder)
    assert named is None or (named.startswith(folder) and marker == named.encode() + b"\n")
    product = folder
    stick.is_junk(product)
    try:
        stick.product_folder(product)
    except stick.StickLayoutError:
        pass


_NAMES = ["demo", "trust", "bundles", "root-1.json", "root-2.json", "root-01.json", "0123456789abcdef",
          "fedcba9876543210", "COMPLETE", "._0123456789abcdef", "Thumbs.db", "manifest.json.zst",
          "manifest.json.zst.0123456789ABCDEF.minisig", "root-1.json.0123456789ABCDEF.minisig", "payload"]
_PLACES = ["", "demo", "demo/trust", "demo/bundles", "demo/bundles/0123456789abcdef",
           "demo/bundles/fedcba9876543210"]


def _stick_entry(place: str, name: str, kind: int, content: bytes = b"") -> bytes:
    """One entry of a ``stick_layout`` input (kind: 0 folder, 1 symlink, 2 FIFO, 3 file)."""
    return bytes([_PLACES.index(place), _NAMES.index(name), kind, len(content)]) + content


def stick_layout(data: bytes) -> None:
    """Entries of a stick (place, name, kind, content), then what the device lists and reads of it."""
    given = _Input(data)
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory).resolve()
        for _ in range(24):
            if not given.data:
                break
            place = _PLACES[given.byte() % len(_PLACES)]
            choice = given.byte()
            name = _NAMES[choice % len(_NAMES)] if choice < 200 else given.text(1 + choice % 8)
            if name in ("", ".", "..") or "/" in name or "\0" in name:
                continue
            kind, content = given.byte() % 5, given.take(given.byte() % 80)
            if content[:1] == b"\x00":  # a marker that fits its folder, most of the time
                content = (place[-16:] + hashlib.sha256(content).hexdigest()[16:] + "\n").encode()
            path = root / place / name
            # Only inside real folders of this stick: a symlink made earlier must not lead the writes out.
            if os.path.realpath(path.parent) != str(path.parent) or not path.parent.is_dir() or os.path.lexists(path):
                continue
            if kind == 0:
                path.mkdir()
            elif kind == 1:
                path.symlink_to(content.decode("utf-8", "replace").replace("\0", "") or ".")
            elif kind == 2:
                os.mkfifo(path)
            else:
                path.write_bytes(content)
        try:
            for found in medium.root_files(root, "demo"):
                assert stat.S_ISREG(os.lstat(found.path).st_mode)
                assert found.path.name == stick.root_name(found.version)
                with contextlib.suppress(UpdateError):  # then what the agent reads: the root, its signatures
                    load_root_candidate(found.path)
        except (stick.StickLayoutError, Failed):
            pass
        try:
            for bundle in medium.complete_bundles(root, "demo"):
                assert stat.S_ISDIR(os.lstat(bundle.path).st_mode)
                marker = bundle.path / stick.COMPLETE
                assert stat.S_ISREG(os.lstat(marker).st_mode)
                assert marker.read_bytes() == bundle.manifest_sha256.encode() + b"\n"
                assert bundle.manifest_sha256.startswith(bundle.id)
                with contextlib.suppress(UpdateError):  # the manifest and its signatures
                    Manifest.from_stored(read_bundle(bundle.path).manifest_bytes)
        except (stick.StickLayoutError, Failed):
            pass


def trust_root(data: bytes) -> None:
    try:
        root = TrustRoot.from_bytes(data)
    except MalformedTrustRoot:
        return
    assert TrustRoot.from_bytes(root.to_bytes()) == root


def minisign_files(data: bytes) -> None:
    for parse, error in ((Signature.from_bytes, MalformedSignature), (PublicKey.from_bytes, MalformedKey)):
        try:
            parse(data)
        except error:
            pass


TARGETS = [manifest_json, manifest_stored, delta_decoder, gzip_recipes, gunzip_prefix, path_rules, stick_names,
           stick_layout, trust_root, minisign_files, elf_tables_codec]


def one_input(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


# --- seeds and the libFuzzer entry point -------------------------------------------------------------------


def seeds() -> list[bytes]:
    """A starting input for every target: valid documents, frames and streams to mutate."""
    from tests.sim.elf import module
    from tests.test_fuzz_formats import VALID_BYTES, VALID_STORED

    def seed(target, data: bytes) -> bytes:
        return bytes([TARGETS.index(target)]) + data

    content = b"fuzzing the delta decoder " * 8
    member = zlib.compressobj(9, zlib.DEFLATED, 31, 8)
    gz = member.compress(content) + member.flush()
    found = [
        seed(manifest_json, VALID_BYTES), seed(manifest_stored, VALID_STORED),
        seed(delta_decoder, bytes([1]) + (len(content) - 1).to_bytes(4, "little") + b"\0" + codec.compress(content, 3)),
        seed(delta_decoder, bytes([2]) + (len(content) - 1).to_bytes(4, "little") + b"\x01\x08" + content[:32]
             + codec.compress(content, 3, content[:32])),
        seed(gzip_recipes, b"\x10" + gz), seed(gunzip_prefix, (300).to_bytes(4, "little") + b"\x20" + gz + gz),
        seed(path_rules, b"a/b/../c\na\tb/..\nb\t../x"),
        seed(elf_tables_codec, b"\x00\x02\x00\x00" + (100).to_bytes(4, "little") + (300).to_bytes(4, "little")
             + module(3, edits=2, rows=40)),
        seed(stick_names, b"\x10" + b"0123456789abcdef" + b"0123456789abcdef" * 4 + b"\n"),
        seed(stick_layout, b"".join(_stick_entry(*entry) for entry in (
            ("", "demo", 0), ("demo", "trust", 0), ("demo", "bundles", 0),
            ("demo/trust", "root-1.json", 3, b"{}"),
            ("demo/trust", "root-1.json.0123456789ABCDEF.minisig", 3, b"sig"),
            ("demo/bundles", "0123456789abcdef", 0),
            ("demo/bundles/0123456789abcdef", "COMPLETE", 3, b"\0"),
            ("demo/bundles/0123456789abcdef", "manifest.json.zst", 3, VALID_STORED[:40]),
            ("demo/bundles/0123456789abcdef", "manifest.json.zst.0123456789ABCDEF.minisig", 3, b"sig")))),
    ]
    stick_files = sorted((VECTORS / "stick").rglob("*")) if (VECTORS / "stick").is_dir() else []
    for path in stick_files:
        if path.name.endswith(".minisig"):
            found.append(seed(minisign_files, path.read_bytes()))
        elif path.name.startswith("root-") and path.suffix == ".json":
            found.append(seed(trust_root, path.read_bytes()))
        elif path.name == "manifest.json.zst":
            found.append(seed(manifest_stored, path.read_bytes()))
    if (VECTORS / "manifest.json").is_file():
        found.append(seed(manifest_json, (VECTORS / "manifest.json").read_bytes()))
    return found


def main() -> int:
    arguments = sys.argv[1:]
    if not any(a.startswith("-timeout=") for a in arguments):
        arguments.append("-timeout=10")  # a read that blocks (a FIFO on the stick) is a finding too
    if any(not a.startswith("-") for a in arguments):  # a corpus directory, or inputs to replay
        import atheris  # only `make fuzz` needs it (it installs it into the venv)

        atheris.instrument_all()
        atheris.Setup([sys.argv[0], *arguments], one_input)
        atheris.Fuzz()
        return 0
    # libFuzzer ends the process without Python's clean-up, so it runs in a child and the seed
    # corpus is removed here.
    with tempfile.TemporaryDirectory(prefix="fuzz-corpus-") as corpus:
        for data in seeds():
            Path(corpus, hashlib.sha1(data).hexdigest()).write_bytes(data)
        return subprocess.call([sys.executable, __file__, *arguments, corpus])


if __name__ == "__main__":
    sys.exit(main())
