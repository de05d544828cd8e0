"""The device's trust root: the one provisioned at the factory, advanced only by verified rotations.

Newer roots accepted from sticks are kept in ``STATE/trust/root-<N>.json`` with their signatures;
on every start the chain is re-walked from the provisioned root, so a tampered store can only
fail, never widen trust. The bundle never chooses the anchor (STYLE.md 5): no root, no install.

A stick's roots are read only from the next ROTATIONS_PER_INSERTION versions (docs/TRUST.md,
"Rotations per insertion"): what one stick makes the device hold stays bounded (T-EXHAUST).

When the root keys are lost, a technician token may replace the anchor (docs/TRUST.md, "Replacing
the trust root"; agent/technician/trust.py decides): the new root is kept in
``STATE/trust-anchor/root-<N>.json`` with its signatures, and from then on it - not the provisioned
root - is where the chain is walked from, after passing its own root-key threshold again on every
start. The anchor folder is always the sibling of the ``trust`` folder callers pass, so every
caller of :func:`current_root` sees a replacement without being told about it.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent import medium
from agent.format import stick
from agent.state_dir import TRUST_ANCHOR_FOLDER
from keys.crashpoint import crashpoint
from keys.detached import SUFFIX, load_root_candidate, signature_path
from keys.errors import Failed, Refused, UpdateError
from keys.files import fsync_directory, write_atomic
from keys.rotation import RootCandidate, VerifiedRoot, accept_next, trust_anchor, walk_chain
from keys.trust_root import TrustRoot


# Root files read from one stick: those named for the next 32 versions after the device's. A
# rotation is a ceremony of the root-key holders, a few a year at most, so 32 covers years of
# them; a device further behind advances 32 versions per insertion (insert the stick again).
# What the bound buys: at most 32 x (1 MiB root + 64 signature files of 4 KiB) = 40 MiB held
# by the walk, where a forged stick's 4,096 root files of 1 MiB each would be over 4 GiB.
ROTATIONS_PER_INSERTION = 32


class NoTrustRoot(Refused):
    """The device has no usable trust root; it refuses everything."""


def anchor_folder(accepted: Path) -> Path:
    """``STATE/trust-anchor`` for ``accepted`` = ``STATE/trust`` (agent/state_dir.py)."""
    return Path(accepted).parent / TRUST_ANCHOR_FOLDER


def _anchor_files(folder: Path) -> list[tuple[int, Path]]:
    """``(version, path)`` of the ``root-<N>.json`` files in the anchor folder, oldest first."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(stick.root_version(name), folder / name) for name in names]
    return sorted((version, path) for version, path in found if version is not None)


def replaced_anchor(accepted: Path) -> Path | None:
    """The replaced anchor's file, or None when the provisioned root is the anchor. The highest
    version there is the one: writing its root file is the replacement's single commit point, and
    anything older left there by a power cut during the clean-up is history (see replace_anchor).
    Raises OSError."""
    files = _anchor_files(anchor_folder(accepted))
    return files[-1][1] if files else None


def anchor_root(provisioned: Path, accepted: Path) -> VerifiedRoot:
    """The root the chain starts from: the replaced anchor if there is one, else the provisioned
    root; either must pass a threshold of its own root keys (keys/rotation.trust_anchor).
    Raises NoTrustRoot (wrapping the reason) when it is missing or invalid."""
    source, what = provisioned, "the provisioned trust root"
    try:
        if (replaced := replaced_anchor(accepted)) is not None:
            source, what = replaced, "the replaced trust root"
        anchor = trust_anchor(load_root_candidate(source))
        if source is not provisioned and stick.root_name(anchor.version) != source.name:
            raise ValueError(f"{source.name} holds version {anchor.version}")  # not written by the agent
    except Exception as error:  # any failure here means: trust nothing
        hint = "re-provision the machine's trust root" if source is provisioned else \
            "replace the trust root again with a technician token, or re-image the machine"
        raise NoTrustRoot(f"{what} cannot be used: {error}", where=source, hint=hint) from None
    return anchor


def current_root(provisioned: Path, accepted: Path) -> VerifiedRoot:
    """The anchor (the replaced one, else the provisioned one) advanced by the rotations kept in
    ``accepted`` (the newest of :func:`device_roots`). Rotations kept before a replacement are at
    or below the old root's version, so below the new anchor's, and never looked at (they are
    also cleared). A kept rotation that no longer verifies (a damaged disk) ends the chain there:
    the machine keeps working under the version before it, and the next stick, which carries the
    chain, stores it again - rather than refusing every update and token until it is re-imaged.
    Raises NoTrustRoot (wrapping the reason) when the anchor is missing or invalid."""
    roots = device_roots(provisioned, accepted)
    return roots[max(roots)]


def replace_anchor(accepted: Path, candidate: RootCandidate, new: VerifiedRoot) -> None:
    """Make ``candidate`` (already verified as ``new`` and authorised by the caller) the anchor and
    forget the rotations accepted under the old one. Raises Failed.

    Power cuts (T-POWER): the old trust (its anchor and STATE/trust chain) stays complete until
    one rename makes the new anchor complete, and only then is anything old removed:

    1. signature files ``root-<N>.json.<KEY ID>.minisig`` first (any left by an earlier attempt
       removed), each with write_atomic. A cut here leaves no ``root-<N>.json``: signature files
       alone are never read, and the old anchor (the provisioned root, or the highest root file
       of an earlier replacement) and its chain are trusted unchanged. The token was spent
       before this function is called: the vendor makes a new one.
    2. ``root-<N>.json`` with write_atomic - temp file, fsync, rename, fsync of the folder. The
       rename is the commit point: before it the old root is trusted, after it the new one,
       never neither and never a torn file (its signatures are durable before it is). The
       folder itself was made and its parent fsynced before step 1, so the rename cannot be
       lost with a folder that vanished.
    3. Clean-up: older anchor files, then the rotations in STATE/trust. Each is at or below the
       old root's version, so below N: walk_chain ignores them and the highest anchor file wins,
       so a cut in the middle of the clean-up leaves the new root trusted, the leftovers inert.
       They are not removed *before* step 2 because the old chain's revocations (T-REVOKED) must
       hold for as long as the old root is the one trusted.
    """
    folder = anchor_folder(accepted)
    version_path = folder / stick.root_name(new.version)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fsync_directory(folder.parent)
        # Signature files an earlier attempt at this version left (cut in step 1, or another
        # document): root-<N>.json cannot exist yet (it would be the anchor, and N is above it),
        # so they belong to nothing, and a stale one must not sit beside the new root.
        for stale in folder.glob(version_path.name + ".*" + SUFFIX):
            stale.unlink()
        for signature in new.signatures:  # those that counted; first: an anchor is never unsigned
            write_atomic(signature_path(version_path, signature.key_id_text), signature.to_bytes())
        write_atomic(version_path, candidate.raw)  # the commit point
        for version, path in _anchor_files(folder):
            if version < new.version:
                _remove_root_file(path)
        for path in sorted(Path(accepted).glob("root-*.json")) if Path(accepted).is_dir() else ():
            _remove_root_file(path)
        if Path(accepted).is_dir():
            fsync_directory(accepted)
        fsync_directory(folder)
    except OSError as error:
        raise Failed(f"cannot install the new trust root: {error.strerror}", where=error.filename or folder,
                     hint="check the state directory; the old root stays trusted until the new one is "
                          "complete") from None


def _remove_root_file(path: Path) -> None:
    """The root file first, then its signatures: never a root without them. Raises OSError."""
    crashpoint(f"remove {path.name}")
    path.unlink(missing_ok=True)
    for signature in path.parent.glob(path.name + ".*" + SUFFIX):
        signature.unlink(missing_ok=True)


def advance(current: VerifiedRoot, offered: list[RootCandidate], accepted: Path | None) -> VerifiedRoot:
    """Walk rotations offered by a stick; keep every newly accepted version in ``accepted``
    (None: keep nothing, for a look at a stick that changes nothing). Raises rotation errors.

    Only the signatures that counted are kept, one per key, under their key's name: a stick may
    add files that fail (a second signature under a root key's id), and stored beside the root
    one would take the name of the good one and leave a stored chain that no longer verifies."""
    newest = walk_chain(current, offered)  # everything checked before anything is kept
    if newest.version > current.version and accepted is not None:
        accepted.mkdir(parents=True, exist_ok=True)
        by_version = {_version(candidate): candidate for candidate in offered}
        trusted = current
        while trusted.version < newest.version:
            candidate = by_version[trusted.version + 1]
            trusted = accept_next(trusted, candidate)
            version_path = accepted / stick.root_name(trusted.version)
            for signature in trusted.signatures:  # signatures first: a stored root is never unsigned
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


def device_roots(provisioned: Path, accepted: Path) -> dict[int, VerifiedRoot]:
    """Every trust-root version this device holds, by version: the anchor (the provisioned root,
    or the one a technician token replaced it with: agent/trust_store.anchor_root) and each one
    accepted since (STATE/trust/, agent/trust_store.py), re-walked from the anchor so a tampered
    store can only shorten the chain. After a replacement the versions before it are not held:
    their keys were given up, so a manifest kept under them no longer verifies (it is reported,
    never trusted). Raises NoTrustRoot when the anchor fails."""
    anchor = anchor_root(provisioned, accepted)
    roots = {anchor.version: anchor}
    candidates = {}
    for path in sorted(accepted.glob("root-*.json")) if accepted.is_dir() else ():
        try:
            candidate = load_root_candidate(path)
            candidates.setdefault(TrustRoot.from_bytes(candidate.raw).version, candidate)
        except UpdateError:
            continue  # a damaged stored root ends the chain there: trust only what still verifies
    trusted = anchor
    while (candidate := candidates.get(trusted.version + 1)) is not None:
        try:
            trusted = accept_next(trusted, candidate)
        except UpdateError:
            break
        roots[trusted.version] = trusted
    return roots
