"""What a medium offers this device: the trust root after the medium's rotations, and every
bundle on it whose signatures verify under that root (docs/AGENT.md, "What gets installed", steps
1 and 2). The manifests held at once obey the limits of one manifest (T-EXHAUST).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.choice import Choice
from agent.device import Device
from agent.format import codec
from agent.format.bundle_dir import MANIFEST
from agent.format.manifest import MAX_ENTRIES, MAX_MANIFEST_BYTES, MAX_STORED_MANIFEST_BYTES
from agent.medium import complete_bundles, read_bundle
from agent.report import Report
from agent.trust_store import advance, current_root, stick_roots
from agent.verify import VerifiedBundle, verify_bundle
from keys.errors import Refused, UpdateError


@dataclass(frozen=True)
class Found:
    path: Path
    verified: VerifiedBundle
    manifest_sha256: str  # of the manifest file as read: names the bundle's spool (never a medium path)


def read_offer(device: Device, medium: Path, report: Report, *, look_only: bool = False):
    """Trust root (after the medium's rotations) and the verified bundles on a stick or bundle dir.

    Refusals of single bundles go to ``report.refusals`` and are logged once, with the outcome
    (agent/install.py): however many folders a stick holds, it costs the log one record (T-LOG).
    ``look_only``: a technician's look at a stick, which changes nothing - no rotation is kept
    and nothing is logged.
    Raises the medium's layout errors and a refused rotation (the whole medium is refused).
    """
    record = (lambda *args, **kwargs: None) if look_only else device.audit.record
    accepted = device.state_dir.trust
    root = current_root(device.config.trust_root, accepted)
    try:
        if (medium / MANIFEST).is_file():  # a bundle directory, named for people (BUNDLE/payload/.. is BUNDLE)
            folders = [(os.path.basename(os.path.abspath(medium)), medium, None)]
            offered_roots = []
        else:
            product = device.config.product
            folders = [(b.id, b.path, b.manifest_sha256) for b in complete_bundles(medium, product)]
            offered_roots = stick_roots(medium, product, root.version)
    except UpdateError as error:  # the layout itself: too many folders (T-LOG), a symlink (T-SYMLINK-READ)...
        record("refused-medium" if isinstance(error, Refused) else "medium-unreadable",
               source=str(medium), reason=str(error))
        raise
    try:
        newer = advance(root, offered_roots, None if look_only else accepted)
    except UpdateError as error:  # T-ROOT-*: a bad rotation on the stick poisons the whole stick
        report.refusals.append((str(medium), f"trust root rotation refused: {error}"))
        record("refused", source=str(medium), reason=f"trust root rotation: {error}")
        raise
    if newer.version != root.version:
        record("trust-root-rotated", from_version=root.version, to_version=newer.version)
    report.trust_root_version = newer.version
    found: dict[str, Found] = {}
    held = _ManifestsHeld()
    for bundle_id, path, marked in folders:
        try:
            # The marker's hash is checked on the bytes as read, before any parsing (T-TAMPER).
            files = read_bundle(path, manifest_sha256=marked)
            declared = held.check_room(files.manifest_bytes)
            verified = verify_bundle(files.manifest_bytes, files.signatures, newer, where=path / MANIFEST)
            held.hold(verified, declared)
            found[bundle_id] = Found(path, verified, files.manifest_sha256)
        except UpdateError as error:
            report.refusals.append((bundle_id, str(error)))
    return newer, found


class _ManifestsHeld:
    """The verified manifests of one medium are held together while the agent chooses, so together
    they obey the limits of one manifest (docs/FORMAT.md, "Limits"): its stored and decompressed
    bytes and its entries. Memory then stays bounded however many signed bundles a stick carries
    (T-EXHAUST); a bundle past the limits is refused, the ones before it are still considered."""

    def __init__(self) -> None:
        self.stored = self.decompressed = self.entries = 0

    def check_room(self, stored: bytes) -> int:
        """Before parsing: the sizes the stored manifest declares; returns the decompressed size to
        :meth:`hold`. Raises Refused."""
        try:
            declared = codec.declared_size(stored)
        except codec.CorruptObject:
            declared = 0  # not a manifest: the parser says why
        declared = declared if declared <= MAX_MANIFEST_BYTES else 0  # too large alone: the parser says so
        if self.stored + len(stored) > MAX_STORED_MANIFEST_BYTES or \
                self.decompressed + declared > MAX_MANIFEST_BYTES:
            raise Refused(f"with the bundles read before it, the manifests on this medium would exceed "
                          f"{MAX_STORED_MANIFEST_BYTES >> 20} MiB stored or {MAX_MANIFEST_BYTES >> 20} MiB "
                          "decompressed, the limits of one manifest; this bundle was not read",
                          hint="put fewer or smaller bundles on one medium (docs/STICK.md, \"Limits\")")
        return declared

    def hold(self, verified: VerifiedBundle, declared: int) -> None:
        """After parsing: the entries. Raises Refused (the manifest is then dropped)."""
        entries = sum(len(component.entries) for component in verified.manifest.components)
        if self.entries + entries > MAX_ENTRIES:
            raise Refused(f"with the bundles read before it, the manifests on this medium would list more than "
                          f"{MAX_ENTRIES} entries, the limit of one manifest",
                          hint="put fewer or smaller bundles on one medium (docs/STICK.md, \"Limits\")")
        self.stored += len(verified.manifest_bytes)
        self.decompressed += declared
        self.entries += entries


def bundles_used(chosen: dict[str, list[Choice]]) -> list[str]:
    return sorted({step.bundle for route in chosen.values() for step in route})
