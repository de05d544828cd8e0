"""Replacing the trust root with a technician token, when the root keys are lost
(docs/TRUST.md, "Replacing the trust root").

A rotation needs a threshold of the old root keys; when too many of them are lost no rotation can
ever be signed, and the machine would be stuck with release signers nobody can change. The vendor
then makes a new root (``bundle root new``, a version above the machine's) and a technician token
allowing "replace-trust-root" that names the SHA-256 of that root's exact bytes
(``bundle token make --allow replace-trust-root --trust-root NEW_ROOT.json``). The token is signed
by the release signers of the machine's *current* root: the keys that remain are what vouch for
the new anchor, and only for exactly that document (T-ANCHOR).

The checks, in order, before anything changes:

1. the stick's ``<product>/trust/root-<N>.json`` files for N above the current version, regular
   files only (a symlink or another non-regular entry named like a root refuses the stick:
   T-SYMLINK-READ), at most ROTATIONS_PER_INSERTION of them (T-EXHAUST), each hashed as read;
2. a token on the stick, verified under the current root, that allows "replace-trust-root" to
   the SHA-256 of one of them (agent/tokens.py; a refusal is audit-logged there);
3. that root must pass a threshold of its own root keys (keys/rotation.trust_anchor), and its
   version must be above the current one: never back (T-ROOT-REPLAY).

Then the token is spent (agent/tokens.spend_token: a power cut after it cannot make the token
work twice), and the new anchor is installed (agent/trust_store.replace_anchor: one rename is the
commit point, so a power cut leaves the old root or the new one trusted, never neither), and the
audit log gets "trust-root-replaced".
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent import medium
from agent.device import Device
from agent.format.stick import StickLayoutError
from agent.tokens import find_token, require_token, spend_token
from agent.trust_store import ROTATIONS_PER_INSERTION, current_root, replace_anchor
from keys.detached import load_root_candidate
from keys.errors import Refused, RotationRefused
from keys.rotation import RootCandidate, trust_anchor

ACTION = "replace-trust-root"


class NoNewerRoot(Refused):
    """The stick offers no trust root above the machine's version: a replacement never goes back."""


def _offered(stick: Path, product: str, current_version: int) -> list[tuple[str, RootCandidate]]:
    """``(SHA-256, candidate)`` of each root file on the stick named for a version above
    ``current_version``, newest first, hashed over the bytes read (those are what gets installed).
    Raises StickLayoutError (a symlinked or non-regular root file, too many roots), Refused, Failed."""
    irregular = medium.irregular_root_files(stick, product)
    if irregular:  # T-SYMLINK-READ: a root is never read through a link, nor quietly passed over
        raise StickLayoutError(f"{', '.join(irregular)} in {product}/trust is not a regular file (a symlink?)",
                               where=stick, hint="copy the new root.json onto the stick as a plain file")
    newer = [root for root in medium.root_files(stick, product) if root.version > current_version]
    if len(newer) > ROTATIONS_PER_INSERTION:  # T-EXHAUST: what a forged stick makes us read stays bounded
        raise StickLayoutError(f"the stick offers {len(newer)} trust roots above version {current_version}; a "
                               f"replacement examines at most {ROTATIONS_PER_INSERTION}", where=stick,
                               hint="put only the new root (and its own rotations) on the stick")
    offered = []
    for root in reversed(newer):
        candidate = load_root_candidate(root.path)
        offered.append((hashlib.sha256(candidate.raw).hexdigest(), candidate))
    return offered


def replace_trust_root(device: Device, stick: Path) -> str:
    """Move this machine to the trust root on ``stick`` that a technician token there names.
    Returns what was done, in words.

    Raises NoTrustRoot (the current root is unusable: nothing can authorise anything),
    StickLayoutError, NoNewerRoot, what agent/tokens.require_token raises (NoToken,
    ActionNotAllowed for a token naming another root, TokenAlreadyUsed, ThresholdNotMet...),
    MalformedTrustRoot or ThresholdNotMet (the new root is not signed by its own root keys),
    RotationRefused (its version is not above the current one), Failed. Nothing changes when it
    raises before the token is spent."""
    stick = Path(stick)
    product = device.config.product
    current = current_root(device.config.trust_root, device.state_dir.trust)
    offered = _offered(stick, product, current.version)
    if not offered:
        device.audit.record("trust-root-refused", stick=str(stick),
                            reason=f"no trust root above version {current.version} on the stick")
        raise NoNewerRoot(f"the stick holds no trust root above this machine's version {current.version}",
                          where=stick, hint=f"put the new root as {product}/trust/root-<N>.json on the stick, N above "
                                            f"{current.version} (bundle root new --version N ...)")
    token = chosen = None
    for sha256, candidate in offered:
        token = find_token(device, stick, ACTION, trust_root_sha256=sha256)
        if token is not None:
            chosen = sha256, candidate
            break
    if token is None:
        # The typed refusal (a token naming another root, none at all...), audit-logged: for the
        # newest root offered, the one a vendor would have put there for this.
        require_token(device, stick, ACTION, trust_root_sha256=offered[0][0])
        raise AssertionError("require_token found a token that find_token did not")  # pragma: no cover
    sha256, candidate = chosen
    new = trust_anchor(candidate)  # its own root keys: an anchor nobody can rotate is no anchor
    if new.version <= current.version:  # the name said newer; the signed document decides (T-ROOT-REPLAY)
        raise RotationRefused(f"the root {candidate.where} is version {new.version}, not above this machine's "
                              f"version {current.version}: a replacement never goes back", where=candidate.where,
                              hint="make the new root with a version above the machine's (bundle root new --version)")
    spend_token(device, token, ACTION)  # first: a power cut after it cannot make the token work twice
    replace_anchor(device.state_dir.trust, candidate, new)
    device.audit.record("trust-root-replaced", **{"from": current.version, "to": new.version}, sha256=sha256,
                        token=token.id, reason=token.token.reason)
    return (f"the trust root is now version {new.version} (SHA-256 {sha256}), replacing version {current.version}; "
            f"bundles must now be signed by its release signers")
