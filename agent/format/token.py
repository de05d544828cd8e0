"""Technician tokens (docs/TRUST.md, "Technician tokens"): the document, and deciding whether one
allows an action on this machine. Both sides use this module: ``bundle token make|sign`` writes
the bytes, the device verifies them.

A token is a small canonical JSON document signed like a manifest - detached minisign files
``<id>.json.<KEY ID>.minisig`` (keys/detached.py) by a threshold of the release signers of the
device's own trust root::

    {"type": "technician-token", "format": 1, "id": "<32 lowercase hex>", "product": "P",
     "serials": ["SN1", ...] or ["*"], "actions": ["downgrade", ...],
     "downgrade": {"platform": 3}, "trust_root": "<64 lowercase hex>", "reason": "ticket 4711"}

``downgrade`` is present exactly when the token allows "downgrade": it names the exact older
sequence each component may be taken back to, nothing else. ``trust_root`` is present exactly when
the token allows "replace-trust-root": the SHA-256 of the exact bytes of the one new root.json the
machine may be moved to (docs/TRUST.md, "Replacing the trust root"), nothing else. Parsing is strict: the document is
capped, unknown fields are refused, and the ``type`` field inside the signed bytes keeps a signed
manifest or trust root from being taken for a token (T-TYPE).

:func:`verify_token` is pure: no files, no clock. It checks the signatures over the exact bytes
first, parses second (T-UNSIGNED), then the product, the serial, the action and its detail, and
whether the id was used before (T-TOKEN-REPLAY). Reading tokens from a stick and recording used
ids is agent/tokens.py.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any, Collection, Mapping, Protocol, Sequence

from agent.format.manifest import COMPONENT_NAME, LABEL
from keys import strict_json
from keys.errors import Refused
from keys.minisign import Signature
from keys.rotation import VerifiedRoot
from keys.strict_json import JSONShapeError, field
from keys.threshold import ThresholdResult, check_threshold, require_threshold

DOCUMENT_TYPE = "technician-token"
FORMAT = 1
# A token names a product, some serials and a few actions: 64 KiB is room for ~2,000 serials and
# keeps what a forged stick makes the device read small (16 token files, agent/tokens.py).
MAX_TOKEN_BYTES = 64 << 10
MAX_SERIALS = 1024
MAX_REASON_CHARACTERS = 200
ALL_SERIALS = "*"
# What needs a token: everything beyond the unattended path and a rollback to the previous
# committed environment (docs/AGENT.md). Order is the order they are documented and printed in.
ACTIONS = ("downgrade", "provision", "replace-trust-root", "clear-state")
ID_DIGITS = 32  # 128 random bits, lowercase hex
FILE_SUFFIX = ".json"
# On a stick: STICK/<product>/tokens/<id>.json and its signature files (docs/STICK.md, "Tokens").
# A stick carries the tokens of one visit: more than MAX_STICK_TOKENS files named like a token
# refuse the folder before any is read, so a forged stick costs at most 16 capped reads (T-EXHAUST).
STICK_FOLDER = "tokens"
MAX_STICK_TOKENS = 16

_ID = re.compile(rf"[0-9a-f]{{{ID_DIGITS}}}")
_FILE_NAME = re.compile(rf"([0-9a-f]{{{ID_DIGITS}}})\.json")
# Printable text on one line: no C0/C1 control characters, no line or paragraph separators.
_REASON = re.compile(r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"type", "format", "id", "product", "serials", "actions", "downgrade", "trust_root", "reason"}


class MalformedToken(Refused):
    """A token file is not a technician token of the format this agent reads."""


class TokenRefused(Refused):
    """A well-signed token that does not allow what is asked on this machine."""


class TokenNotForThisMachine(TokenRefused):
    """The token names another product, or does not list this machine's serial."""


class ActionNotAllowed(TokenRefused):
    """The token does not allow the action, or not the exact downgrade or trust root asked for."""


class TokenAlreadyUsed(TokenRefused):
    """The token's id is in this machine's record of used tokens (T-TOKEN-REPLAY)."""


class MachineFacts(Protocol):
    """What a token is matched against (agent/choice.py DeviceFacts has these)."""

    product: str
    serial: str


def new_id() -> str:
    """A fresh token id: 128 random bits, so no two tokens ever share one."""
    return secrets.token_hex(ID_DIGITS // 2)


def file_name(token_id: str) -> str:
    """The token's file name on a stick and in ``bundle token make --out``: ``<id>.json``."""
    assert _ID.fullmatch(token_id), token_id
    return token_id + FILE_SUFFIX


def id_of_file_name(name: str) -> str | None:
    """The id a token file's name gives, or None for any other name (never read then)."""
    match = _FILE_NAME.fullmatch(name)
    return match.group(1) if match else None


def is_token_id(text: str) -> bool:
    return _ID.fullmatch(text) is not None


def signature_comment(token: "TechnicianToken") -> str:
    """The trusted comment of a token's signatures: what a person checking one with minisign sees."""
    return f"{DOCUMENT_TYPE} id:{token.id} product:{token.product}"


@dataclass(frozen=True)
class TechnicianToken:
    """A token's content. Constructing one validates it (raises ValueError)."""

    id: str
    product: str
    serials: tuple[str, ...]
    actions: tuple[str, ...]
    downgrade: tuple[tuple[str, int], ...] = ()  # (component, the exact sequence allowed), sorted
    reason: str = ""
    trust_root: str | None = None  # SHA-256 (lowercase hex) of the new root.json's exact bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "serials", tuple(self.serials))
        object.__setattr__(self, "actions", tuple(self.actions))
        object.__setattr__(self, "downgrade", tuple(self.downgrade))
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise ValueError(f"id must be {ID_DIGITS} lowercase hex digits")
        if not LABEL.fullmatch(self.product):
            raise ValueError(f"product {self.product!r} is not a valid product name")
        if not self.serials:
            raise ValueError(f"serials must list at least one serial, or be [{ALL_SERIALS!r}] for every machine")
        if len(self.serials) > MAX_SERIALS:
            raise ValueError(f"more than {MAX_SERIALS} serials")
        for serial in self.serials:
            if serial != ALL_SERIALS and not LABEL.fullmatch(serial):
                raise ValueError(f"serial {serial!r} is not a valid serial")
        if len(set(self.serials)) != len(self.serials):
            raise ValueError("a serial is listed twice")
        if ALL_SERIALS in self.serials and len(self.serials) > 1:
            raise ValueError(f"{ALL_SERIALS!r} (every machine) cannot be listed with serials")
        if not self.actions:
            raise ValueError("actions must list at least one action")
        for action in self.actions:
            if action not in ACTIONS:
                raise ValueError(f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        if len(set(self.actions)) != len(self.actions):
            raise ValueError("an action is listed twice")
        for name, sequence in self.downgrade:
            if not isinstance(name, str) or not COMPONENT_NAME.fullmatch(name):
                raise ValueError(f"downgrade: {name!r} is not a component name")
            if isinstance(sequence, bool) or not isinstance(sequence, int) or not 0 <= sequence < 1 << 63:
                raise ValueError(f"downgrade: the sequence of {name} must be a non-negative integer")
        names = [name for name, _ in self.downgrade]
        if len(set(names)) != len(names):
            raise ValueError("a component is named twice in downgrade")
        # A token that allows "downgrade" says exactly to what; one that does not has no such list.
        if ("downgrade" in self.actions) != bool(self.downgrade):
            raise ValueError("downgrade must name COMPONENT: SEQUENCE exactly when the actions include "
                             "\"downgrade\"")
        # Likewise "replace-trust-root" names the one root it allows, by the hash of its bytes: a
        # token for "any root" would let whoever holds it pick the machine's new anchor (T-ANCHOR).
        if self.trust_root is not None and (not isinstance(self.trust_root, str)
                                            or not _SHA256.fullmatch(self.trust_root)):
            raise ValueError("trust_root must be the 64 lowercase hex digits of a SHA-256")
        if ("replace-trust-root" in self.actions) != (self.trust_root is not None):
            raise ValueError("trust_root must name the new root's SHA-256 exactly when the actions include "
                             "\"replace-trust-root\"")
        if not isinstance(self.reason, str) or len(self.reason) > MAX_REASON_CHARACTERS \
                or not _REASON.fullmatch(self.reason):
            raise ValueError(f"reason must be one line of at most {MAX_REASON_CHARACTERS} printable characters")
        # One order whatever order they were given in: the same token content, the same bytes.
        object.__setattr__(self, "actions", tuple(sorted(self.actions, key=ACTIONS.index)))
        object.__setattr__(self, "downgrade", tuple(sorted(self.downgrade)))
        object.__setattr__(self, "serials", tuple(sorted(self.serials)))

    @property
    def file_name(self) -> str:
        return file_name(self.id)

    def allows_serial(self, serial: str) -> bool:
        return self.serials == (ALL_SERIALS,) or serial in self.serials

    def downgrade_to(self) -> dict[str, int]:
        return dict(self.downgrade)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"type": DOCUMENT_TYPE, "format": FORMAT, "id": self.id, "product": self.product,
                                    "serials": list(self.serials), "actions": list(self.actions),
                                    "reason": self.reason}
        if self.downgrade:
            document["downgrade"] = dict(self.downgrade)
        if self.trust_root is not None:
            document["trust_root"] = self.trust_root
        return document

    def to_bytes(self) -> bytes:
        return strict_json.dumps(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "TechnicianToken":
        """Parse and validate. Raises MalformedToken."""
        try:
            document = strict_json.loads(data, limit=MAX_TOKEN_BYTES)
            doc_type = field(document, "type", str, context="token")
            if doc_type != DOCUMENT_TYPE:  # T-TYPE: no other signed document is ever read as a token
                raise JSONShapeError(f"document type is {doc_type!r}, not {DOCUMENT_TYPE!r}")
            major = field(document, "format", int, context="token")
            if major != FORMAT:
                raise JSONShapeError(f"format version {major} is not supported (this agent reads {FORMAT})")
            # Exact, like a manifest (docs/adr/0002): a field this agent does not know could be a
            # restriction it would silently ignore.
            unknown = set(document) - _FIELDS
            if unknown:
                raise JSONShapeError(f"unknown field(s) {sorted(unknown)}")
            serials = field(document, "serials", list, context="token")
            actions = field(document, "actions", list, context="token")
            if len(serials) > MAX_SERIALS:
                raise JSONShapeError(f"more than {MAX_SERIALS} serials")
            if not all(isinstance(s, str) for s in serials) or not all(isinstance(a, str) for a in actions):
                raise JSONShapeError("serials and actions must be lists of strings")
            downgrade = document.get("downgrade", {})
            if not isinstance(downgrade, dict) or "downgrade" in document and not downgrade:
                raise JSONShapeError("downgrade must be a non-empty object of COMPONENT: SEQUENCE")
            trust_root = field(document, "trust_root", str, context="token") if "trust_root" in document else None
            return cls(id=field(document, "id", str, context="token"),
                       product=field(document, "product", str, context="token"),
                       serials=tuple(serials), actions=tuple(actions), downgrade=tuple(downgrade.items()),
                       reason=field(document, "reason", str, context="token"), trust_root=trust_root)
        except (JSONShapeError, ValueError) as error:
            raise MalformedToken(f"not a valid technician token: {error}", where=where,
                                 hint="make tokens with `bundle token make`") from None


@dataclass(frozen=True)
class VerifiedToken:
    """A token whose signatures met the release-signer threshold of the device's trust root and
    that allows one action on this machine. Only one of these may be spent (agent/tokens.py)."""

    token: TechnicianToken
    raw: bytes
    action: str
    signers: ThresholdResult

    @property
    def id(self) -> str:
        return self.token.id


def signer_report(data: bytes, signatures: Sequence[Signature], root: VerifiedRoot) -> ThresholdResult:
    """Who signed a token, against the root's release signers (for reports; decides nothing)."""
    return check_threshold(data, signatures, root.root.release_signers, role_name="release signers",
                           revoked=root.root.revoked_keys)


def verify_token(data: bytes, signatures: Sequence[Signature], root: VerifiedRoot, facts: MachineFacts,
                 action: str, used_ids: Collection[str], *, detail: Mapping[str, int] | None = None,
                 trust_root_sha256: str | None = None, where=None) -> VerifiedToken:
    """Whether the token in ``data`` allows ``action`` on the machine ``facts`` describes.

    ``detail`` is what a "downgrade" would install: ``{component: sequence}``; each must be a
    sequence the token names for that component, exactly. ``trust_root_sha256`` is what a
    "replace-trust-root" would install: the SHA-256 (lowercase hex) of the offered root's exact
    bytes, which must be the one the token names. ``used_ids``: the ids this machine has already spent.

    Raises ThresholdNotMet (too few release signers, revoked ones never count: T-THRESHOLD,
    T-REVOKED), MalformedToken, TokenNotForThisMachine, ActionNotAllowed, TokenAlreadyUsed.
    """
    assert action in ACTIONS, action
    assert (action == "downgrade") == (detail is not None), "a downgrade, and only it, names what it installs"
    assert (action == "replace-trust-root") == (trust_root_sha256 is not None), \
        "a trust-root replacement, and only it, names the root it installs"
    # Signatures first, over the exact stored bytes: an unsigned token is never parsed (T-UNSIGNED).
    result = require_threshold(data, signatures, root.root.release_signers, role_name="release signers",
                               revoked=root.root.revoked_keys, where=where)
    token = TechnicianToken.from_bytes(data, where=where)
    ask = "put a technician token for this machine on the stick (bundle token make ...)"
    if token.product != facts.product:
        raise TokenNotForThisMachine(f"token {token.id} is for product {token.product}, this machine is "
                                     f"{facts.product}", where=where, hint=ask)
    if not token.allows_serial(facts.serial):
        raise TokenNotForThisMachine(f"token {token.id} does not list this machine's serial {facts.serial}",
                                     where=where, hint=ask)
    if action not in token.actions:
        raise ActionNotAllowed(f"token {token.id} allows {', '.join(token.actions)}, not {action}", where=where,
                               hint=f"put a technician token allowing {action} for serial {facts.serial} on "
                                    "the stick (bundle token make --allow " + action + " ...)")
    if detail is not None:
        allowed = token.downgrade_to()
        for component, sequence in sorted(detail.items()):
            if allowed.get(component) != sequence:
                what = f"allows {component} back to sequence {allowed[component]} only" if component in allowed \
                    else f"allows no downgrade of {component}"
                raise ActionNotAllowed(f"token {token.id} {what}, not to sequence {sequence}", where=where,
                                       hint=f"put a token made with --downgrade {component}={sequence} on the stick")
    if trust_root_sha256 is not None and token.trust_root != trust_root_sha256:  # T-ANCHOR
        raise ActionNotAllowed(f"token {token.id} allows the trust root with SHA-256 {token.trust_root} only, not "
                               f"the one offered ({trust_root_sha256})", where=where,
                               hint="put the root.json the token was made for on the stick, or a token made with "
                                    "--trust-root for this root")
    if token.id in used_ids:  # T-TOKEN-REPLAY: a token works once per machine
        raise TokenAlreadyUsed(f"token {token.id} was already used on this machine", where=where,
                               hint="each token works once: make a new one (bundle token make ...)")
    return VerifiedToken(token=token, raw=data, action=action, signers=result)
