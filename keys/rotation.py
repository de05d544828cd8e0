"""Deciding which trust root to trust: pure functions over bytes, no files, no clock.

The rules are TUF's root rotation (docs/TRUST.md, "Rotation"), without expiry:

* a root we start from (provisioned, or named with ``--trusted``) must be signed by a threshold
  of its own root keys;
* the holder of version N accepts version N+1 only if N+1 is signed by a threshold of N's root
  keys (T-ROOT-NEWONLY) **and** by a threshold of N+1's root keys (T-ROOT-OLDONLY);
* versions go up by exactly one per step (T-ROOT-SKIP); an older root never replaces a newer
  one (T-ROOT-REPLAY), and a different document with the trusted version is refused (T-ROOT-FORK);
* a key that N+1 stops using is revoked in N+1, and no later root may un-revoke it (T-REVOKED).

Only a :class:`VerifiedRoot` may be used to check release signatures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from keys.errors import RotationRefused
from keys.minisign import Signature
from keys.threshold import ThresholdResult, require_threshold
from keys.trust_root import TrustRoot


@dataclass(frozen=True)
class VerifiedRoot:
    """A trust root that passed verification, with its exact bytes and the evidence."""

    root: TrustRoot
    raw: bytes
    evidence: tuple[ThresholdResult, ...]

    @property
    def version(self) -> int:
        return self.root.version

    @property
    def signatures(self) -> tuple[Signature, ...]:
        """The signatures that counted in ``evidence``, one per key: the ones to store beside it."""
        by_key: dict[bytes, Signature] = {}
        for result in self.evidence:
            for signature in result.counted:
                by_key.setdefault(signature.key_id, signature)
        return tuple(by_key.values())


@dataclass(frozen=True)
class RootCandidate:
    """A trust root as found on disk or on a stick: its bytes, its signatures, where it was."""

    raw: bytes
    signatures: Sequence[Signature]
    where: str | None = None


def trust_anchor(candidate: RootCandidate) -> VerifiedRoot:
    """Accept a root we were told to trust, if a threshold of its own root keys signed it.

    Raises MalformedTrustRoot, ThresholdNotMet.
    """
    # The anchor's keys come from the anchor itself: that is what provisioning means. Its
    # self-signature still catches a damaged or half-signed file before it becomes an anchor.
    root = TrustRoot.from_bytes(candidate.raw, where=candidate.where)
    result = require_threshold(candidate.raw, candidate.signatures, root.root_keys,
                               role_name=f"root keys of version {root.version}",
                               revoked=root.revoked_keys, where=candidate.where)
    return VerifiedRoot(root=root, raw=candidate.raw, evidence=(result,))


def accept_next(trusted: VerifiedRoot, candidate: RootCandidate) -> VerifiedRoot:
    """Accept ``candidate`` as the successor of ``trusted``, or raise.

    Returns ``trusted`` itself when the candidate is byte-identical to it.
    Raises MalformedTrustRoot, RotationRefused, ThresholdNotMet.
    """
    where = candidate.where
    # Parsing first is safe: it is strict, bounded and trusts nothing; no field is used for a
    # decision before both thresholds hold. It lets the version refusals below, which need no
    # keys, give the real reason instead of "not signed by the trusted keys".
    new = TrustRoot.from_bytes(candidate.raw, where=where)
    if new.version == trusted.version:
        if candidate.raw == trusted.raw:
            return trusted
        raise RotationRefused(  # T-ROOT-FORK
            f"a different trust root claims the trusted version {trusted.version}",
            where=where, hint="a trust root version is published once; this file is not the one trusted")
    if new.version < trusted.version:
        raise RotationRefused(  # T-ROOT-REPLAY
            f"trust root version {new.version} is older than the trusted version {trusted.version}; "
            "an older root can never replace a newer one", where=where)
    if new.version != trusted.version + 1:
        raise RotationRefused(  # T-ROOT-SKIP
            f"trust root version {new.version} does not follow the trusted version {trusted.version}: "
            f"versions {trusted.version + 1}..{new.version - 1} are missing", where=where,
            hint="rotations are accepted one version at a time; supply every intermediate root")
    old_result = require_threshold(  # T-ROOT-NEWONLY
        candidate.raw, candidate.signatures, trusted.root.root_keys,
        role_name=f"root keys of the trusted version {trusted.version}",
        revoked=trusted.root.revoked_keys, where=where)
    new_result = require_threshold(  # T-ROOT-OLDONLY
        candidate.raw, candidate.signatures, new.root_keys,
        role_name=f"root keys of version {new.version}", revoked=new.revoked_keys, where=where)
    _check_revocations(trusted.root, new, where)
    return VerifiedRoot(root=new, raw=candidate.raw, evidence=(old_result, new_result))


def _check_revocations(old: TrustRoot, new: TrustRoot, where) -> None:
    """T-REVOKED: revocation is permanent, and a key dropped from every role is revoked."""
    new_revoked = {k.id for k in new.revoked_keys}
    new_active = {k.id for k in (*new.root_keys.keys, *new.release_signers.keys)}
    for key in old.revoked_keys:
        if key.id not in new_revoked:
            raise RotationRefused(f"version {new.version} un-revokes key {key.label()}, revoked in "
                                  f"version {old.version}; revocation is permanent", where=where)
    for key in (*old.root_keys.keys, *old.release_signers.keys):
        if key.id not in new_active and key.id not in new_revoked:
            raise RotationRefused(f"version {new.version} drops key {key.label()} without revoking it",
                                  where=where, hint="make rotations with 'bundle root rotate'")


def walk_chain(trusted: VerifiedRoot, candidates: Iterable[RootCandidate]) -> VerifiedRoot:
    """Follow rotations from ``trusted`` through ``candidates``, one version at a time.

    Candidates at or below the trusted version are ignored: a stick carries the whole chain, and
    older links are history, not offers. The walk stops at the first missing version.
    Raises MalformedTrustRoot, RotationRefused, ThresholdNotMet.
    """
    by_version: dict[int, RootCandidate] = {}
    for candidate in candidates:
        version = TrustRoot.from_bytes(candidate.raw, where=candidate.where).version
        other = by_version.setdefault(version, candidate)
        if other.raw != candidate.raw:
            raise RotationRefused(f"two different trust roots claim version {version} "
                                  f"({other.where} and {candidate.where})", where=candidate.where)
    while (candidate := by_version.get(trusted.version + 1)) is not None:
        trusted = accept_next(trusted, candidate)
    return trusted


def accept_chain(candidates: Sequence[RootCandidate]) -> VerifiedRoot:
    """Trust the first candidate as the anchor, then accept each following one as its successor."""
    assert candidates, "at least the anchor is needed"
    trusted = trust_anchor(candidates[0])
    for candidate in candidates[1:]:
        trusted = accept_next(trusted, candidate)
    return trusted
