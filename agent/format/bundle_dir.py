"""The on-disk layout of one bundle (docs/FORMAT.md, "Bundle directory").

    BUNDLE/manifest.json.zst                  the signed manifest (canonical JSON, one zstd frame)
    BUNDLE/manifest.json.zst.<KEY ID>.minisig one signature per release signer (keys/detached.py)
    BUNDLE/payload/<sha256>.vol           volumes: the payload cut into files <= 4 GiB - 1

A bundle directory is created under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.format.manifest import MAX_STORED_MANIFEST_BYTES
from keys.detached import load_signatures
from keys.errors import Failed
from keys.files import read_capped
from keys.minisign import Signature

MANIFEST = "manifest.json.zst"
PAYLOAD = "payload"


def manifest_path(bundle: Path) -> Path:
    return Path(bundle) / MANIFEST


def volume_path(bundle: Path, name: str) -> Path:
    return Path(bundle) / PAYLOAD / name


@dataclass(frozen=True)
class BundleFiles:
    """A bundle's manifest bytes and signatures as read from disk - not yet verified."""

    directory: Path
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]


def read_bundle(bundle: Path) -> BundleFiles:
    """Raises Failed (not a bundle), MalformedSignature."""
    bundle = Path(bundle)
    if not os.path.lexists(manifest_path(bundle)):
        raise Failed(f"not a bundle: {MANIFEST} is missing", where=bundle,
                     hint="give the directory that `bundle make --out` created")
    data = read_capped(manifest_path(bundle), MAX_STORED_MANIFEST_BYTES, what="manifest")
    return BundleFiles(directory=bundle, manifest_bytes=data,
                       signatures=tuple(load_signatures(manifest_path(bundle))))
