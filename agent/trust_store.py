"""The device's trust root: the one provisioned at the factory, advanced only by verified rotations.

Newer roots accepted from sticks are kept in ``STATE/trust/root-<N>.json`` with their signatures;
on every start the chain is re-walked from the provisioned root, so a tampered store can only
fail, never widen trust. The bundle never chooses the anchor (STYLE.md 5): no root, no install.

A stick's roots are read only from the next ROTATIONS_PER_INSERTION versions (docs/TRUST.md,
"Rotations per insertion"): what one stick makes the device hold stays bounded (T-EXHAUST).
"""

from __future__ import annotations

from pathlib import Path

from agent import medium
from agent.format import stick
from keys.detached import load_root_candidate, signature_path
from keys.errors import Refused
from keys.files import write_atomic
from keys.rotation import RootCandidate, VerifiedRoot, trust_anchor, walk_chain
from keys.trust_root import TrustRoot


# Root files read from one stick: those named for the next 32 versions after the device's. A
# rotation is a ceremony of the root-key holders, a few a year at most, so 32 covers years of
# them; a device further behind advances 32 versions per insertion (insert the stick again).
# What the bound buys: at most 32 x (1 MiB root + 64 signature files of 4 KiB) = 40 MiB held
# by the walk, where a forged stick's 4,096 root files of 1 MiB each would be over 4 GiB.
ROTATIONS_PER_INSERTION = 32


class NoTrustRoot(Refused):
    """The device has no usable trust root; it refuses everything."""


def _stored(directory: Path) -> list[RootCandidate]:
    if not directory.is_dir():
        return []
    return [load_root_candidate(p) for p in sorted(directory.glob("root-*.json"))]


def current_root(provisioned: Path, accepted: Path) -> VerifiedRoot:
    """Raises NoTrustRoot (wrapping the reason) when the provisioned root is missing or invalid."""
    try:
        anchor = trust_anchor(load_root_candidate(provisioned))
    except Exception as error:  # any failure here means: trust nothing
        raise NoTrustRoot(f"the provisioned trust root cannot be used: {error}", where=provisioned,
                          hint="re-provision the machine's trust root") from None
    return walk_chain(anchor, _stored(accepted))


def advance(current: VerifiedRoot, offered: list[RootCandidate], accepted: Path | None) -> VerifiedRoot:
    """Walk rotations offered by a stick; keep every newly accepted version in ``accepted``
    (None: keep nothing, for a look at a stick that changes nothing). Raises rotation errors."""
    newest = walk_chain(current, offered)
    if newest.version > current.version and accepted is not None:
        directory = accepted
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


def stick_roots(mount: Path, product: str, trusted_version: int) -> list[RootCandidate]:
    """The trust roots a stick offers for ``product`` to a device at ``trusted_version``: the
    files named ``root-<N>.json`` for N in trusted_version+1 .. trusted_version+ROTATIONS_PER_INSERTION,
    oldest first (none is fine: the device's root stays).

    Files named for older versions are history (``walk_chain`` would ignore them) and are not
    read at all, nor are files beyond the window (T-EXHAUST). The name only chooses what is read:
    each document's own version decides, so a file whose name lies about its version is still
    caught by ``walk_chain`` (T-ROOT-FORK, T-ROOT-SKIP).
    Raises StickLayoutError, Failed, Refused (a file that is not regular or is too large).
    """
    window = range(trusted_version + 1, trusted_version + 1 + ROTATIONS_PER_INSERTION)
    return [load_root_candidate(root.path) for root in medium.root_files(mount, product) if root.version in window]
