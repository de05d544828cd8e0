"""Technician tokens on the device: reading them from a stick, deciding with
:func:`agent.format.token.verify_token`, and recording the ids already used (docs/TRUST.md,
"Technician tokens").

    STICK/<product>/tokens/<id>.json                     a token (agent/format/token.py)
    STICK/<product>/tokens/<id>.json.<KEY ID>.minisig    one signature per release signer
    STATE/tokens-used.json                               the ids this machine has spent

The stick is read like the rest of it (STYLE.md 10): the tokens folder is opened once without
following any symlink and every file is opened relative to it, regular files only, each capped,
at most MAX_STICK_TOKENS token files (T-SYMLINK-READ, T-EXHAUST).

The record of used ids is its own file, written with write_atomic *before* the action it allows
proceeds (T-TOKEN-REPLAY): a power cut after the write leaves the token spent, never reusable, and
a damaged or quarantined state.json (agent/state.py) leaves it untouched. It is never rebuilt
or reset by the agent: a damaged record refuses every token rather than forget what was spent.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from agent.beneath import Beneath, EscapingPath
from agent.format.stick import MAX_FOLDER_ENTRIES, StickLayoutError, is_junk, product_folder
from agent.format.token import (MAX_STICK_TOKENS, MAX_TOKEN_BYTES, STICK_FOLDER, TokenAlreadyUsed, VerifiedToken,
                                id_of_file_name, is_token_id, verify_token)
from agent.state_dir import unusable
from agent.trust_store import current_root
from keys import strict_json
from keys.detached import MAX_SIGNATURE_FILES, SUFFIX
from keys.errors import Failed, Refused
from keys.files import read_capped, read_capped_fd, write_atomic
from keys.minisign import MAX_SIGNATURE_FILE_BYTES, Signature
from keys.strict_json import JSONShapeError, field

if TYPE_CHECKING:
    from agent.device import Device

RECORD_FORMAT = 1
# Ids kept in STATE/tokens-used.json. A token is a technician's visit: 4,096 is decades of them,
# and keeps the record (~100 bytes an id) well under its read limit.
MAX_USED_IDS = 4096
MAX_RECORD_BYTES = 1 << 20
_SIGNATURE_KEY_ID = re.compile(r"[0-9A-F]{16}")


class TooManyTokens(StickLayoutError):
    """The tokens folder holds more token files than a device examines (T-EXHAUST)."""


class NoToken(Refused):
    """No token on the stick allows the action on this machine."""


class TokenRecordDamaged(Failed):
    """STATE/tokens-used.json cannot be read: which tokens were used is unknown, so none is accepted."""


class TokenRecordFull(Refused):
    """The record of used tokens holds MAX_USED_IDS ids; no further token can be spent."""


@dataclass(frozen=True)
class StickToken:
    """A token file and its signatures as read from a stick - not yet verified. ``problem`` is
    set instead when the file could not be taken (not a regular file, too large, a malformed
    signature file...)."""

    path: Path
    raw: bytes = b""
    signatures: tuple[Signature, ...] = ()
    problem: Refused | None = None


# --- reading a stick -------------------------------------------------------------------------------


def _open_folder(stick: Path, product: str) -> Beneath | None:
    """The product's tokens folder, held open, reached without following a symlink; None if absent.
    Raises StickLayoutError (a symlink or a file in its place), Failed."""
    relative = f"{product_folder(product)}/{STICK_FOLDER}"
    try:
        with Beneath.open_root(Path(stick), follow_root=True) as mount:
            return mount.directory(relative)
    except FileNotFoundError:
        return None
    except (EscapingPath, NotADirectoryError):
        raise StickLayoutError(f"{relative} is not a plain folder (a file or a symlink)", where=stick,
                               hint="copy the token folder made by `bundle token make` to the stick") from None
    except OSError as error:
        raise Failed(f"cannot open {relative}: {error.strerror}", where=stick,
                     hint="the stick may have been removed") from None


def _listing(folder: Beneath) -> dict[str, bool]:
    """``{name: is a regular file}`` of the folder's non-junk entries, symlinks never followed.
    Raises StickLayoutError (more than MAX_FOLDER_ENTRIES entries), Failed."""
    found = {}
    try:
        with os.scandir(folder.fd) as entries:
            for count, entry in enumerate(entries, 1):
                if count > MAX_FOLDER_ENTRIES:  # T-EXHAUST: the listing itself stays bounded
                    raise StickLayoutError(f"the tokens folder holds more than {MAX_FOLDER_ENTRIES} entries",
                                           where=folder.where, hint="this is not a folder made by bundle token make")
                if not is_junk(entry.name):
                    found[entry.name] = entry.is_file(follow_symlinks=False)
    except OSError as error:
        raise Failed(f"cannot list the tokens folder: {error.strerror}", where=folder.where,
                     hint="the stick may have been removed") from None
    return found


def _read(folder: Beneath, name: str, limit: int, what: str) -> bytes:
    """A regular file of the folder, opened relative to it without following a symlink, capped.
    Raises Refused (a symlink, not a regular file, over ``limit``), Failed."""
    where = f"{folder.where}/{name}"
    try:
        fd = folder.open(name, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not hang us
    except EscapingPath:
        raise Refused(f"{what} is not a regular file (a symlink, a folder or a device)", where=where) from None
    except FileNotFoundError:
        raise Refused(f"{what} disappeared while the stick was read", where=where) from None
    except OSError as error:
        raise Failed(f"cannot open {what}: {error.strerror}", where=where,
                     hint="the stick may have been removed") from None
    return read_capped_fd(fd, limit, what=what, where=where)


def _signature_names(name: str, listing: dict[str, bool]) -> list[str]:
    """The names of ``name``'s signature files (keys/detached.py naming), in name order."""
    found = []
    for other in sorted(listing):
        if other == name + SUFFIX or (other.startswith(name + ".") and other.endswith(SUFFIX)
                                      and _SIGNATURE_KEY_ID.fullmatch(other[len(name) + 1:-len(SUFFIX)])):
            found.append(other)
    return found


def _read_token(folder: Beneath, name: str, listing: dict[str, bool]) -> StickToken:
    path = Path(f"{folder.where}/{name}")
    try:
        if not listing[name]:
            raise Refused("token is not a regular file (a symlink, a folder or a device)", where=path)
        raw = _read(folder, name, MAX_TOKEN_BYTES, "token")
        names = _signature_names(name, listing)
        if len(names) > MAX_SIGNATURE_FILES:
            raise Refused(f"token has more than {MAX_SIGNATURE_FILES} signature files", where=path)
        signatures = tuple(Signature.from_bytes(_read(folder, n, MAX_SIGNATURE_FILE_BYTES, "signature file"),
                                                where=f"{folder.where}/{n}") for n in names)
    except Refused as problem:
        return StickToken(path=path, problem=problem)
    return StickToken(path=path, raw=raw, signatures=signatures)


def stick_tokens(stick: Path, product: str) -> list[StickToken]:
    """The token files on the stick for ``product``, read but not verified, in name order.

    Only names ``<32 lowercase hex>.json`` are tokens; other names are ignored. More than
    MAX_STICK_TOKENS of them (regular files or not) refuse the folder before any is read.
    Raises StickLayoutError (a symlinked or non-folder tokens folder), TooManyTokens, Failed.
    """
    folder = _open_folder(stick, product)
    if folder is None:
        return []
    with folder:
        listing = _listing(folder)
        names = sorted(name for name in listing if id_of_file_name(name) is not None)
        if len(names) > MAX_STICK_TOKENS:
            raise TooManyTokens(f"the tokens folder holds {len(names)} token files; a device examines at most "
                                f"{MAX_STICK_TOKENS}", where=folder.where,
                                hint="put only the tokens for this visit on the stick (docs/STICK.md, \"Tokens\")")
        return [_read_token(folder, name, listing) for name in names]


# --- the record of used tokens ---------------------------------------------------------------------


def _damaged(path: Path, why: str) -> TokenRecordDamaged:
    return TokenRecordDamaged(
        f"the record of used technician tokens is damaged ({why}); no token is accepted while it is", where=path,
        hint="it is never reset by the agent, since that would make used tokens work again: restore the file "
             "from a backup of this machine, or re-image it (docs/TRUST.md, \"Technician tokens\")")


def used_tokens(device: "Device") -> list[dict]:
    """The entries of STATE/tokens-used.json, ``[{"id", "action"}]`` oldest first ([] if absent).
    Raises TokenRecordDamaged, Failed."""
    path = device.state_dir.tokens_used
    try:
        os.lstat(path)
    except FileNotFoundError:
        return []
    except OSError as error:
        raise Failed(f"cannot read the record of used tokens: {error.strerror}", where=path) from None
    try:
        raw = read_capped(path, MAX_RECORD_BYTES, what="record of used tokens")
    except Refused as error:  # not a regular file, or too large: not something the agent wrote
        raise _damaged(path, error.message) from None
    try:
        document = strict_json.loads(raw, limit=MAX_RECORD_BYTES)
        if field(document, "format", int, context="record") != RECORD_FORMAT:
            raise JSONShapeError(f"format {document['format']} is not {RECORD_FORMAT}")
        entries = field(document, "used", list, context="record")
        for entry in entries:
            if not isinstance(entry, dict) or not is_token_id(field(entry, "id", str, context="entry")) \
                    or not isinstance(field(entry, "action", str, context="entry"), str):
                raise JSONShapeError(f"an entry is not {{\"id\", \"action\"}}: {entry!r:.80}")
    except JSONShapeError as error:
        raise _damaged(path, str(error)) from None
    return entries


def _record_spent(device: "Device", token: VerifiedToken) -> None:
    """Add the token's id to the record, durably. Raises TokenAlreadyUsed, TokenRecordFull,
    TokenRecordDamaged, Failed."""
    entries = used_tokens(device)
    if any(entry["id"] == token.id for entry in entries):  # read again: only what is on disk counts
        raise TokenAlreadyUsed(f"token {token.id} was already used on this machine",
                               hint="each token works once: make a new one (bundle token make ...)")
    if len(entries) >= MAX_USED_IDS:
        raise TokenRecordFull(f"this machine has recorded {MAX_USED_IDS} used technician tokens, the most it keeps",
                              where=device.state_dir.tokens_used,
                              hint="the action cannot be authorised by a token on this machine any more; "
                                   "re-image it (docs/TRUST.md, \"Technician tokens\")")
    entries.append({"id": token.id, "action": token.action})
    try:
        device.state_dir.root.mkdir(parents=True, exist_ok=True)  # a machine whose state was cleared
    except OSError as error:
        raise unusable(error, device.state_dir.root, "create the state directory") from None
    write_atomic(device.state_dir.tokens_used, strict_json.dumps({"format": RECORD_FORMAT, "used": entries}))


# --- what the commands call ------------------------------------------------------------------------


def _search(device: "Device", stick: Path, action: str, detail: Mapping[str, int] | None,
            trust_root_sha256: str | None = None) -> tuple[VerifiedToken | None, list[Refused]]:
    """The first token on the stick (in name order) that allows ``action`` here, and why each one
    before it did not. Raises what :func:`stick_tokens` raises, NoTrustRoot, TokenRecordDamaged."""
    root = current_root(device.config.trust_root, device.state_dir.trust)
    used = {entry["id"] for entry in used_tokens(device)}
    refusals: list[Refused] = []
    for found in stick_tokens(stick, device.config.product):
        if found.problem is not None:
            refusals.append(found.problem)
            continue
        try:
            return verify_token(found.raw, found.signatures, root, device.facts, action, used, detail=detail,
                                trust_root_sha256=trust_root_sha256, where=found.path), refusals
        except Refused as refusal:
            refusals.append(refusal)
    return None, refusals


def find_token(device: "Device", stick: Path, action: str, detail: Mapping[str, int] | None = None, *,
               trust_root_sha256: str | None = None) -> VerifiedToken | None:
    """A verified token on the stick that allows ``action`` (for "downgrade", to exactly the
    sequences ``detail`` names; for "replace-trust-root", to exactly the root whose SHA-256 is
    ``trust_root_sha256``) on this machine and was not used here, or None. Changes nothing.

    Raises StickLayoutError (a symlinked tokens folder), TooManyTokens, NoTrustRoot,
    TokenRecordDamaged, Failed.
    """
    return _search(device, Path(stick), action, detail, trust_root_sha256)[0]


def require_token(device: "Device", stick: Path, action: str, detail: Mapping[str, int] | None = None, *,
                  trust_root_sha256: str | None = None) -> VerifiedToken:
    """:func:`find_token`, raising when there is none: the one token's own refusal when the stick
    holds one (ThresholdNotMet, TokenNotForThisMachine, ActionNotAllowed, TokenAlreadyUsed,
    MalformedToken...), else NoToken naming every token's reason. A refusal is audit-logged (one
    record, whatever the stick holds: T-LOG). Spend the token with :func:`spend_token`."""
    token, refusals = _search(device, Path(stick), action, detail, trust_root_sha256)
    if token is not None:
        return token
    device.audit.record("token-refused", action=action, stick=str(stick), reasons=[str(r) for r in refusals])
    if len(refusals) == 1:
        raise refusals[0]
    serial = device.config.serial
    found = "no technician token" if not refusals else \
        f"none of the {len(refusals)} technician tokens (" + "; ".join(str(r) for r in refusals) + ")"
    raise NoToken(f"{found} on the stick allows {action} for serial {serial}", where=stick,
                  hint=f"put a technician token allowing {action} for serial {serial} on the stick, in "
                       f"{device.config.product}/{STICK_FOLDER}/ (bundle token make ...)")


def spend_token(device: "Device", token: VerifiedToken, action: str) -> None:
    """Record the token as used, durably, then audit-log it: call it *before* the action it allows
    proceeds, so a power cut never leaves the action done and the token still usable.

    Raises TokenAlreadyUsed (spent since it was verified), TokenRecordFull, TokenRecordDamaged, Failed.
    """
    assert token.action == action, f"token verified for {token.action}, spent for {action}"
    _record_spent(device, token)
    device.audit.record("token-used", token=token.id, action=action, product=token.token.product,
                        serials=list(token.token.serials), downgrade=token.token.downgrade_to() or None,
                        reason=token.token.reason, signers=[k.name for k in token.signers.signed])
