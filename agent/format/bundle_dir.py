"""The on-disk layout of one bundle (docs/FORMAT.md, "Bundle directory").

    BUNDLE/manifest.json.zst                  the signed manifest (canonical JSON, one zstd frame)
    BUNDLE/manifest.json.zst.<KEY ID>.minisig one signature per release signer (keys/detached.py)
    BUNDLE/payload/<sha256>.vol           volumes: the payload cut into files <= 4 GiB - 1

A bundle directory is created under a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from agent.beneath import EscapingPath, NotRegularFile, open_beneath
from agent.format.manifest import MAX_STORED_MANIFEST_BYTES
from keys.detached import load_signatures
from keys.errors import Failed, Refused
from keys.files import read_capped_fd
from keys.minisign import Signature

MANIFEST = "manifest.json.zst"
PAYLOAD = "payload"


def manifest_path(bundle: Path) -> Path:
    return Path(bundle) / MANIFEST


def volume_path(bundle: Path, name: str) -> Path:
    return Path(bundle) / PAYLOAD / name


class ManifestChanged(Refused):
    """The manifest file is not the one the bundle's COMPLETE marker names (T-TAMPER)."""


@dataclass(frozen=True)
class BundleFiles:
    """A bundle's manifest bytes and signatures as read from disk - not yet verified."""

    directory: Path
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    manifest_sha256: str = ""  # of ``manifest_bytes``, computed as they were read


def read_bundle(bundle: Path, *, manifest_sha256: str | None = None) -> BundleFiles:
    """The manifest file and its signatures, read without following a symlink.

    With ``manifest_sha256`` (what a stick's COMPLETE marker names) the manifest must hash to
    it, checked on the bytes as read and before its signatures are even loaded: a forged
    folder costs one capped read, never a decompression or a parse (T-EXHAUST). The size is
    refused from fstat, before a byte is read.

    Raises Failed (not a bundle, unreadable), Refused (not a regular file, a symlink, over
    the size limit), ManifestChanged, MalformedSignature.
    """
    bundle = Path(bundle)
    try:
        fd = open_beneath(bundle, MANIFEST, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
    except FileNotFoundError:
        raise Failed(f"not a bundle: {MANIFEST} is missing", where=bundle,
                     hint="give the directory that `bundle make --out` created") from None
    except NotRegularFile:
        raise Refused("manifest is not a regular file", where=manifest_path(bundle)) from None
    except EscapingPath as error:
        raise Refused(f"manifest cannot be reached without following a symlink ({error.message})",
                      where=bundle) from None
    except OSError as error:
        raise Failed(f"cannot open manifest: {error.strerror}", where=manifest_path(bundle)) from None
    digest = hashlib.sha256()
    data = read_capped_fd(fd, MAX_STORED_MANIFEST_BYTES, what="manifest", where=manifest_path(bundle), digest=digest)
    if manifest_sha256 is not None and digest.hexdigest() != manifest_sha256:
        raise ManifestChanged("the manifest is not the one the COMPLETE marker names (changed after writing)",
                              where=bundle, hint="write the bundle to the stick again (bundle write)")
    return BundleFiles(directory=bundle, manifest_bytes=data, signatures=tuple(load_signatures(manifest_path(bundle))),
                       manifest_sha256=digest.hexdigest())
