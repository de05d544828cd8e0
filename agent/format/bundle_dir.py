"""The on-disk layout of one bundle (docs/FORMAT.md, "Bundle directory").

    BUNDLE/manifest.json.zst                  the signed manifest (canonical JSON, one zstd frame)
    BUNDLE/manifest.json.zst.<KEY ID>.minisig one signature per release signer (keys/detached.py)
    BUNDLE/payload/<sha256>.vol           volumes: the payload cut into files <= 4 GiB - 1

A bundle directory is created under a temporary name and renamed into place when complete.
Reading one is agent/medium.py.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json.zst"
PAYLOAD = "payload"


def manifest_path(bundle: Path) -> Path:
    return Path(bundle) / MANIFEST


def volume_path(bundle: Path, name: str) -> Path:
    return Path(bundle) / PAYLOAD / name
