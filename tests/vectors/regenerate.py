"""Rebuild the golden vectors: a tiny signed bundle and a trust-root rotation on a stick.

    .venv/bin/python tests/vectors/regenerate.py           # rewrite the vectors in place
    .venv/bin/python tests/vectors/regenerate.py --check   # exit 1 if a rebuild would change a byte

Every input is fixed - key seeds, the release tree with its modes and modification times, and a
game component, whose content is owned by 0:0 whoever builds it - and bundles are reproducible
(bundler/make.py), so a rebuild with the same code and the same libzstd gives the same bytes. A
diff under tests/vectors/ after running this script therefore means the wire format changed:
review it, and raise the format version if devices in the field cannot read the new bytes.
tests/test_golden_vectors.py checks that the current code still reads, verifies and applies these
exact files, and - with the libzstd recorded here - still writes them byte for byte.

    stick/demo-vector/trust/root-1.json (+ signature)     version 1: root key root-a, signers rel1+rel2 of 2
    stick/demo-vector/trust/root-2.json (+ signatures)    version 2: rotates to root-b and revokes root-a
    stick/demo-vector/bundles/<ID>/                       the bundle (manifest, 2 signatures, 1 volume), COMPLETE
    manifest.json                                         its stored manifest, decompressed, for readable diffs
    delta/                                                a delta from that release to the next (bsdiff,
                                                          elf-tables, gzip-blocks, gzip-recipe, gzip-shape,
                                                          zstd-patch)
    delta-manifest.json                                   its stored manifest, decompressed
    delta-format-2/                                       that delta as the format-2 bundler made it: frozen,
                                                          not rebuilt (format-2 sticks are still read)
    libzstd-version                                       the libzstd that compressed them
    inputs/                                               GNU gzip files the releases hold (not rebuilt)

The keys' seeds are in this file: no device may ever trust them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

VECTORS = Path(__file__).resolve().parent
REPO = VECTORS.parents[1]
if str(REPO) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO))

from zstandard import backend_cffi  # noqa: E402

from agent.format import codec  # noqa: E402
from bundler.make import MakeOptions, make_bundle  # noqa: E402
from bundler.release import load_release  # noqa: E402
from bundler.stick_write import write_stick  # noqa: E402
from keys.detached import signature_path  # noqa: E402
from keys.minisign import KEY_ID_BYTES, prehash  # noqa: E402
from keys.secret_key import SEED_BYTES, SecretKey  # noqa: E402
from keys.signing import sign_digest  # noqa: E402
from keys.trust_root import NamedKey, Role, TrustRoot  # noqa: E402
from tests.sim.elf import module  # noqa: E402

# Made once by GNU gzip 1.12 (`gzip -9n`) from changelog-like text of 250,000 and 254,000 bytes,
# and news-level6.gz by `gzip -6n` from 250,000 bytes (tests/test_gzip_shape.py changelog(6, 250_000)):
# kept as they are, since another gzip may write other bytes for the same text.
INPUTS = VECTORS / "inputs"
PRODUCT = "demo-vector"
HARDWARE = ("cab-v1", "cab-v2")
COMPONENT = "game/vector"
MTIME = 1_700_000_000


def _engine(shift: int) -> bytes:
    """An executable-like file: instructions with 32-bit addresses. With ``shift``, 64 bytes are
    inserted halfway and every address past them moves by ``shift``, as a rebuild moves code."""
    rng = random.Random(7)
    code = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    for number in range(12_000):
        address = 0x400000 + 7 * number + (shift if number >= 6_000 else 0)
        if shift and number == 6_000:
            code += bytes(64)
        code += bytes([0xE8, rng.randrange(4), 0x48]) + address.to_bytes(4, "little")
    return bytes(code)
# The release tree: path -> (kind, content or link target, mode). Small, but every entry type, a
# stored-raw file, small files compressed together in a block and a file over 1 MiB in its own
# zstd frame.
RELEASE = {
    ".": ("dir", None, 0o755),
    "README": ("file", b"golden vector bundle\n", 0o644),
    "bin": ("dir", None, 0o755),
    "bin/start": ("file", b"#!/bin/sh\necho vector\n", 0o755),
    "data": ("dir", None, 0o750),
    "data/empty": ("file", b"", 0o644),
    "data/table.bin": ("file", bytes(range(256)) * 4 + b"0123456789abcdef" * 64, 0o644),
    "data/table-copy.bin": ("hardlink", "data/table.bin", None),
    "data/log.txt": ("file", b"coin accepted\n" * 80_000, 0o644),
    "latest": ("symlink", "data/table.bin", None),
    "bin/engine": ("file", _engine(0), 0o755),
    "share": ("dir", None, 0o755),
    "share/changes.gz": ("file", (INPUTS / "changes-1.gz").read_bytes(), 0o644),
    "lib": ("dir", None, 0o755),
    "lib/cabinet.ko": ("file", module(11, rows=600), 0o644),
}
# The next release, which the delta vector takes the first to: an executable rebuilt with its
# code moved (bsdiff), a kernel module rebuilt after three edits (elf-tables), a GNU gzip file with an entry added on top (gzip-blocks), a new one that
# gzip -6 made in a block zlib cannot end where gzip did (gzip-shape), a changed script.
RELEASE_2 = {
    **RELEASE,
    "bin/start": ("file", b"#!/bin/sh\necho vector 2\n", 0o755),
    "bin/engine": ("file", _engine(64), 0o755),
    "share/changes.gz": ("file", (INPUTS / "changes-2.gz").read_bytes(), 0o644),
    "share/news.gz": ("file", (INPUTS / "news-level6.gz").read_bytes(), 0o644),
    "lib/cabinet.ko": ("file", module(11, edits=3, rows=600), 0o644),
}
OUTPUTS = ("stick", "manifest.json", "delta", "delta-manifest.json", "libzstd-version")


def secret(name: str) -> SecretKey:
    """A test key that is the same on every machine."""
    digest = hashlib.sha256(f"golden vector key {name}".encode()).digest()
    seed = hashlib.sha256(digest).digest()
    return SecretKey(key_id=digest[:KEY_ID_BYTES], seed=seed[:SEED_BYTES])


def named(name: str) -> NamedKey:
    return NamedKey(public_key=secret(name).public_key, name=name)


def libzstd_version() -> str:
    number = backend_cffi.lib.ZSTD_versionNumber()
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}\n"


def _write_release(directory: Path, release: dict = RELEASE, version: int = 1) -> Path:
    tree = directory / "vector"
    for path, (kind, content, mode) in release.items():
        target = tree / path
        if kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif kind == "file":
            target.write_bytes(content)
        elif kind == "hardlink":
            os.link(tree / content, target)
        else:
            target.symlink_to(content)
    # Modes and times last, deepest first: creating an entry changes its directory's mtime.
    for path in sorted(release, key=lambda p: (p.count("/"), p), reverse=True):
        kind, _, mode = release[path]
        if mode is not None:
            os.chmod(tree / path, mode)
        os.utime(tree / path, (MTIME, MTIME), follow_symlinks=False)
    release = directory / "release.toml"
    release.write_text(f'product = "{PRODUCT}"\nhardware = {list(HARDWARE)!r}\n'.replace("'", '"')
                       + f'[components."{COMPONENT}"]\npath = "vector"\nversion = "{version}.0"\n'
                       + f"sequence = {version}\n")
    return release


def _write_roots(directory: Path) -> list[Path]:
    signers = Role((named("rel1"), named("rel2")), 2)
    roots = [
        (TrustRoot(version=1, root_keys=Role((named("root-a"),), 1), release_signers=signers), ["root-a"]),
        (TrustRoot(version=2, root_keys=Role((named("root-b"),), 1), release_signers=signers,
                   revoked_keys=(named("root-a"),)), ["root-a", "root-b"]),  # old and new root keys sign
    ]
    written = []
    for root, signed_by in roots:
        path = directory / f"root-{root.version}.json"
        raw = root.to_bytes()
        path.write_bytes(raw)
        for name in signed_by:  # as `bundle root sign` does
            key = secret(name)
            signature = sign_digest(key, prehash(raw), f"trust-root version:{root.version} file:{path.name}")
            signature_path(path, key.id).write_bytes(signature.to_bytes())
        written.append(path)
    return written


def build(out: Path) -> None:
    """Write the vectors (OUTPUTS) into ``out``, which must exist."""
    with tempfile.TemporaryDirectory(prefix="vectors-") as work:
        work = Path(work)
        release = load_release(_write_release(work))
        bundle = work / "bundle"
        make_bundle(release, None, [secret("rel1"), secret("rel2")], bundle, MakeOptions(threads=1))
        (out / "stick").mkdir()
        write_stick(out / "stick", [bundle], _write_roots(work))
        stored = (bundle / "manifest.json.zst").read_bytes()
        (out / "manifest.json").write_bytes(codec.decompress(stored, codec.declared_size(stored)))
        second = load_release(_write_release(work / "second", RELEASE_2, 2))
        delta = out / "delta"
        make_bundle(second, release, [secret("rel1"), secret("rel2")], delta, MakeOptions(threads=1))
        stored = (delta / "manifest.json.zst").read_bytes()
        (out / "delta-manifest.json").write_bytes(codec.decompress(stored, codec.declared_size(stored)))
        (out / "libzstd-version").write_text(libzstd_version())


def files(directory: Path) -> dict[str, bytes]:
    """Every vector file under ``directory`` by relative path."""
    found = {}
    for name in OUTPUTS:
        path = directory / name
        for item in sorted([path, *path.rglob("*")] if path.is_dir() else [path]):
            if item.is_file():
                found[item.relative_to(directory).as_posix()] = item.read_bytes()
    return found


def differences(expected: Path, actual: Path) -> list[str]:
    """Relative paths that are missing, extra or different between two vector directories."""
    old, new = files(expected), files(actual)
    return sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 if a byte would change")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vectors-new-") as fresh:
        fresh = Path(fresh)
        build(fresh)
        changed = differences(VECTORS, fresh)
        if arguments.check:
            for name in changed:
                print(f"would change: tests/vectors/{name}")
            return 1 if changed else 0
        for name in OUTPUTS:
            target = VECTORS / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            shutil.move(fresh / name, target)
        for name in changed:
            print(f"changed: tests/vectors/{name}")
        print(f"tests/vectors: {len(files(VECTORS))} files, {len(changed)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
