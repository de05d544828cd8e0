"""Trusting a bundle: release-signer threshold over the exact manifest bytes, then parsing.

Pure: no files, no clock. Only a :class:`VerifiedBundle` may be staged or applied. Device
facts (product, hardware, installed sequences) are checked by the installer on top of this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from agent.format.manifest import Manifest
from keys.minisign import Signature
from keys.rotation import VerifiedRoot
from keys.threshold import ThresholdResult, check_threshold, require_threshold


@dataclass(frozen=True)
class VerifiedBundle:
    manifest: Manifest
    manifest_bytes: bytes
    # Who signed; its ``counted`` signatures are kept with the manifest bytes (agent/kept.py).
    signatures: ThresholdResult


def signer_report(manifest_bytes: bytes, signatures: Sequence[Signature], root: VerifiedRoot) -> ThresholdResult:
    """Who signed, against the root's release signers (for reports; decides nothing)."""
    return check_threshold(manifest_bytes, signatures, root.root.release_signers, role_name="release signers",
                           revoked=root.root.revoked_keys)


def verify_bundle(manifest_bytes: bytes, signatures: Sequence[Signature], root: VerifiedRoot, *,
                  where=None) -> VerifiedBundle:
    """Raises ThresholdNotMet (T-THRESHOLD), MalformedManifest."""
    # Signatures first, over the exact stored bytes: an unsigned manifest is never parsed (T-UNSIGNED).
    result = require_threshold(manifest_bytes, signatures, root.root.release_signers,
                               role_name="release signers", revoked=root.root.revoked_keys, where=where)
    return VerifiedBundle(manifest=Manifest.from_stored(manifest_bytes, where=where),
                          manifest_bytes=manifest_bytes, signatures=result)
