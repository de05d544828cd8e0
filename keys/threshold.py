"""Counting signatures against a role's threshold: pure functions over bytes.

Two forms, as in python-tuf: :func:`check_threshold` returns a :class:`ThresholdResult` for
reports (who signed, who did not); :func:`require_threshold` raises ThresholdNotMet for
decisions. Rules (docs/TRUST.md, "Counting signatures"):

* only distinct keys count: the same key twice counts once (T-DUPSIG);
* signatures by keys the role does not list are ignored, never an error (T-UNKNOWN);
* signatures by revoked keys are ignored and reported as such (T-REVOKED);
* a signature by a listed key that does not verify does not count and is reported.

Malformed signature files never get this far: ``Signature.from_bytes`` rejects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from keys.errors import BadSignature, ThresholdNotMet
from keys.minisign import PREHASHED, Signature, key_id_text, prehash
from keys.trust_root import NamedKey, Role


@dataclass(frozen=True)
class ThresholdResult:
    """Who signed what, against one role. ``role_name`` reads like "root keys of version 2"."""

    role_name: str
    threshold: int
    signed: tuple[NamedKey, ...]
    missing: tuple[NamedKey, ...]
    invalid: tuple[tuple[NamedKey, str], ...]
    revoked: tuple[NamedKey, ...]
    unknown: tuple[str, ...]
    # The signatures that counted, one per key: what is worth storing beside the document. The
    # others (a stick's second file under a signer's key id, say) must never replace one of them.
    counted: tuple[Signature, ...] = ()

    @property
    def met(self) -> bool:
        return len(self.signed) >= self.threshold

    def describe(self) -> str:
        text = f"signed by {len(self.signed)} of {self.threshold} required {self.role_name}"
        details = []
        if self.signed:
            details.append("signed: " + ", ".join(k.name for k in self.signed))
        if self.missing and not self.met:
            details.append("missing: " + ", ".join(k.name for k in self.missing))
        if self.invalid:
            details.append("invalid: " + ", ".join(f"{k.name} ({why})" for k, why in self.invalid))
        if self.revoked:
            details.append("ignored, revoked: " + ", ".join(k.name for k in self.revoked))
        if self.unknown:
            details.append("ignored, keys not in this role: " + ", ".join(self.unknown))
        return text + (f" ({'; '.join(details)})" if details else "")

    def to_json(self) -> dict:
        return {
            "role": self.role_name, "threshold": self.threshold, "met": self.met,
            "signed": [k.to_json() for k in self.signed],
            "missing": [k.to_json() for k in self.missing],
            "invalid": [{**k.to_json(), "reason": why} for k, why in self.invalid],
            "revoked": [k.to_json() for k in self.revoked],
            "unknown": list(self.unknown),
        }


def check_threshold(data: bytes, signatures: Sequence[Signature], role: Role, *, role_name: str,
                    revoked: Iterable[NamedKey] = ()) -> ThresholdResult:
    """Count the distinct keys of ``role`` whose signature over ``data`` verifies."""
    revoked_by_id = {k.id: k for k in revoked}
    digest = prehash(data) if any(s.algorithm == PREHASHED for s in signatures) else None
    signed: dict[str, NamedKey] = {}
    counted: dict[str, Signature] = {}
    invalid: dict[str, tuple[NamedKey, str]] = {}
    revoked_seen: dict[str, NamedKey] = {}
    unknown: list[str] = []
    for signature in signatures:
        key_id = key_id_text(signature.key_id)
        key = role.get(key_id)
        if key is None:
            if key_id in revoked_by_id:
                revoked_seen[key_id] = revoked_by_id[key_id]
            elif key_id not in unknown:
                unknown.append(key_id)
            continue
        if key_id in signed:
            continue  # T-DUPSIG: a second signature by the same key adds nothing
        try:
            signature.verify(key.public_key, data, digest=digest)
        except BadSignature as error:
            invalid[key_id] = (key, error.message)
            continue
        signed[key_id] = key
        counted[key_id] = signature
        invalid.pop(key_id, None)
    return ThresholdResult(
        role_name=role_name, threshold=role.threshold,
        signed=tuple(k for k in role.keys if k.id in signed),
        missing=tuple(k for k in role.keys if k.id not in signed),
        invalid=tuple(invalid.values()),
        revoked=tuple(revoked_seen.values()),
        unknown=tuple(unknown),
        counted=tuple(counted[k.id] for k in role.keys if k.id in counted),
    )


def require_threshold(data: bytes, signatures: Sequence[Signature], role: Role, *, role_name: str,
                      revoked: Iterable[NamedKey] = (), where=None) -> ThresholdResult:
    """:func:`check_threshold`, raising ThresholdNotMet when too few keys signed."""
    result = check_threshold(data, signatures, role, role_name=role_name, revoked=revoked)
    if not result.met:
        raise ThresholdNotMet(result, where=where,
                              hint=f"collect signatures from {result.threshold - len(result.signed)} more "
                                   f"of the {role_name}")
    return result
