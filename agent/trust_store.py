"""The device's trust root: the one provisioned at the factory, advanced only by verified rotations.

Newer roots accepted from sticks are kept in ``STATE/trust/root-<N>.json`` with their signatures;
on every start the chain is re-walked from the provisioned root, so a tampered store can only
fail, never widen trust. The bundle never chooses the anchor (STYLE.md 5): no root, no install.
"""

from __future__ import annotations

from pathlib import Path

from agent.format import stick
from keys.detached import load_root_candidate, signature_path
from keys.errors import Refused
from keys.files import write_atomic
from keys.rotation import RootCandidate, VerifiedRoot, trust_anchor, walk_chain
from keys.trust_root import TrustRoot


class NoTrustRoot(Refused):
    """The device has no usable trust root; it refuses everything."""


def _stored(directory: Path) -> list[RootCandidate]:
    if not directory.is_dir():
        return []
    return [load_root_candidate(p) for p in sorted(directory.glob("root-*.json"))]


def current_root(provisioned: Path, state_dir: Path) -> VerifiedRoot:
    """Raises NoTrustRoot (wrapping the reason) when the provisioned root is missing or invalid."""
    try:
        anchor = trust_anchor(load_root_candidate(provisioned))
    except Exception as error:  # any failure here means: trust nothing
        raise NoTrustRoot(f"the provisioned trust root cannot be used: {error}", where=provisioned,
                          hint="re-provision the machine's trust root") from None
    return walk_chain(anchor, _stored(state_dir / "trust"))


def advance(current: VerifiedRoot, offered: list[RootCandidate], state_dir: Path) -> VerifiedRoot:
    """Walk rotations offered by a stick; keep every newly accepted version. Raises rotation errors."""
    newest = walk_chain(current, offered)
    if newest.version > current.version:
        directory = state_dir / "trust"
        directory.mkdir(parents=True, exist_ok=True)
        for candidate in offered:
            version = _version(candidate)
            if current.version < version <= newest.version:
                version_path = directory / stick.root_name(version)
                for signature in candidate.signatures:  # signatures first: a stored root is never unsigned
                    write_atomic(signature_path(version_path, signature.key_id_text), signature.to_bytes())
                write_atomic(version_path, candidate.raw)
    return newest


def _version(candidate: RootCandidate) -> int:
    return TrustRoot.from_bytes(candidate.raw, where=candidate.where).version


def stick_roots(mount: Path, product: str) -> list[RootCandidate]:
    """The trust roots a stick carries for ``product`` (none is fine: the device's root stays)."""
    return [load_root_candidate(root.path) for root in stick.root_files(mount, product)]
