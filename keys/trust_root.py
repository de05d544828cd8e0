"""The trust-root document (``root.json``): who may change trust, who may sign releases.

This module owns the document's layout (docs/TRUST.md, "root.json"); parsing is pure and strict.
Accepting a root is a separate decision made over its bytes and signatures in
``keys/rotation.py``.

Rules enforced here, for every root whether signed or not:

* thresholds are between 1 and the number of keys of the role;
* a key id names one key only, and key names are unique labels;
* a revoked key is not active in any role (T-REVOKED);
* no expiry field: freshness comes from ``version``, never from a clock (T-FREEZE in TRUST.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable

from keys import strict_json
from keys.errors import MalformedKey, MalformedTrustRoot, Refused
from keys.minisign import PublicKey
from keys.strict_json import JSONShapeError, field

DOCUMENT_TYPE = "trust-root"
# Major format version. Unknown fields are tolerated (and covered by the signatures) so that a
# device in the field can still follow a rotation written by a newer bundler; a different
# major version is refused.
FORMAT = 1
MAX_ROOT_BYTES = 1 << 20
MAX_KEYS_PER_ROLE = 256
# A stick names a root by its version (root-<N>.json, agent/format/stick.py): nine digits.
MAX_VERSION = 999_999_999
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")


@dataclass(frozen=True)
class NamedKey:
    """A public key with the human label the trust root gives it (e.g. ``rel1``)."""

    public_key: PublicKey
    name: str

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"key name {self.name!r} must be 1-64 letters, digits or ._@+- "
                             "and start with a letter or digit")

    @property
    def id(self) -> str:
        return self.public_key.id

    def label(self) -> str:
        return f"{self.name} ({self.id})"

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "public_key": self.public_key.to_base64()}

    @classmethod
    def from_json(cls, value: Any, *, context: str) -> "NamedKey":
        if not isinstance(value, dict):
            raise JSONShapeError(f"{context}: each key must be an object")
        try:
            public_key = PublicKey.from_base64(field(value, "public_key", str, context=context))
        except MalformedKey as error:
            raise JSONShapeError(f"{context}: {error.message}") from None
        declared_id = field(value, "id", str, context=context)
        if declared_id != public_key.id:
            raise JSONShapeError(f"{context}: id {declared_id!r} does not match its public key "
                                 f"(key id {public_key.id})")
        try:
            return cls(public_key=public_key, name=field(value, "name", str, context=context))
        except ValueError as error:
            raise JSONShapeError(f"{context}: {error}") from None


@dataclass(frozen=True)
class Role:
    """The keys allowed to sign one kind of document, and how many must."""

    keys: tuple[NamedKey, ...]
    threshold: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(sorted(self.keys, key=lambda k: (k.name, k.id))))
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("a key is listed twice")
        if not self.keys:
            raise ValueError("at least one key is required")
        if len(self.keys) > MAX_KEYS_PER_ROLE:
            raise ValueError(f"more than {MAX_KEYS_PER_ROLE} keys")
        if not 1 <= self.threshold <= len(self.keys):
            raise ValueError(f"threshold {self.threshold} must be between 1 and the number of "
                             f"keys ({len(self.keys)})")

    def get(self, key_id: str) -> NamedKey | None:
        return next((k for k in self.keys if k.id == key_id), None)

    def to_json(self) -> dict[str, Any]:
        return {"keys": [k.to_json() for k in self.keys], "threshold": self.threshold}

    @classmethod
    def from_json(cls, value: Any, *, context: str) -> "Role":
        if not isinstance(value, dict):
            raise JSONShapeError(f"{context} must be an object")
        keys = field(value, "keys", list, context=context)
        if len(keys) > MAX_KEYS_PER_ROLE:
            raise JSONShapeError(f"{context}: more than {MAX_KEYS_PER_ROLE} keys")
        parsed = [NamedKey.from_json(k, context=f"{context} key {i + 1}") for i, k in enumerate(keys)]
        try:
            return cls(keys=tuple(parsed), threshold=field(value, "threshold", int, context=context))
        except ValueError as error:
            raise JSONShapeError(f"{context}: {error}") from None


@dataclass(frozen=True)
class TrustRoot:
    """One version of the trust root. Constructing one validates it (raises ValueError)."""

    version: int
    root_keys: Role
    release_signers: Role
    revoked_keys: tuple[NamedKey, ...] = ()
    extra_fields: tuple[tuple[str, Any], ...] = ()  # unknown fields of a newer minor format

    def __post_init__(self) -> None:
        if not 1 <= self.version <= MAX_VERSION:
            raise ValueError(f"version must be 1 to {MAX_VERSION}, not {self.version}")
        object.__setattr__(self, "revoked_keys", tuple(sorted(self.revoked_keys, key=lambda k: k.id)))
        by_id: dict[str, NamedKey] = {}
        by_name: dict[str, str] = {}
        for key in (*self.root_keys.keys, *self.release_signers.keys, *self.revoked_keys):
            known = by_id.setdefault(key.id, key)
            if known.public_key != key.public_key:
                raise ValueError(f"key id {key.id} names two different public keys")
            if by_name.setdefault(key.name, key.id) != key.id:
                raise ValueError(f"two different keys are both named {key.name!r}")
        revoked = {k.id for k in self.revoked_keys}
        if len(revoked) != len(self.revoked_keys):
            raise ValueError("a revoked key is listed twice")
        for key in (*self.root_keys.keys, *self.release_signers.keys):
            if key.id in revoked:
                raise ValueError(f"key {key.label()} is revoked and cannot also be active (T-REVOKED)")

    def all_keys(self) -> dict[str, NamedKey]:
        return {k.id: k for k in (*self.revoked_keys, *self.root_keys.keys, *self.release_signers.keys)}

    # --- serialisation ------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        document = dict(self.extra_fields)
        document.update({
            "type": DOCUMENT_TYPE,
            "format": FORMAT,
            "version": self.version,
            "root_keys": self.root_keys.to_json(),
            "release_signers": self.release_signers.to_json(),
            "revoked_keys": [k.to_json() for k in self.revoked_keys],
        })
        return strict_json.dumps(document)

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "TrustRoot":
        """Parse and validate. Raises MalformedTrustRoot."""
        try:
            document = strict_json.loads(data, limit=MAX_ROOT_BYTES)
            doc_type = field(document, "type", str, context="trust root")
            if doc_type != DOCUMENT_TYPE:
                # Binds the document type into the signed bytes: a signed manifest or any other
                # signed JSON can never be taken for a trust root.
                raise JSONShapeError(f"document type is {doc_type!r}, not {DOCUMENT_TYPE!r}")
            major = field(document, "format", int, context="trust root")
            if major != FORMAT:
                raise JSONShapeError(f"format version {major} is not supported (this tool reads {FORMAT})")
            revoked = field(document, "revoked_keys", list, context="trust root")
            if len(revoked) > 4 * MAX_KEYS_PER_ROLE:
                raise JSONShapeError("too many revoked keys")
            known = {"type", "format", "version", "root_keys", "release_signers", "revoked_keys"}
            return cls(
                version=field(document, "version", int, context="trust root"),
                root_keys=Role.from_json(field(document, "root_keys", dict, context="trust root"),
                                         context="root_keys"),
                release_signers=Role.from_json(field(document, "release_signers", dict, context="trust root"),
                                               context="release_signers"),
                revoked_keys=tuple(NamedKey.from_json(k, context=f"revoked key {i + 1}")
                                   for i, k in enumerate(revoked)),
                extra_fields=tuple(sorted((k, v) for k, v in document.items() if k not in known)),
            )
        except (JSONShapeError, ValueError) as error:
            raise MalformedTrustRoot(f"not a valid trust root: {error}", where=where) from None

    # --- rotation -----------------------------------------------------------------------

    def rotated(self, *, add_root_keys: Iterable[NamedKey] = (), remove_root_keys: Iterable[str] = (),
                add_signers: Iterable[NamedKey] = (), remove_signers: Iterable[str] = (),
                root_threshold: int | None = None, threshold: int | None = None) -> "TrustRoot":
        """The next version with the given changes (unsigned). Removed keys that no role still
        uses become revoked, so no later root can bring them back (T-REVOKED).

        Raises Refused with a hint when a change is impossible.
        """
        revoked = {k.id: k for k in self.revoked_keys}

        def change(role: Role, role_name: str, add: Iterable[NamedKey],
                   remove: Iterable[str]) -> tuple[NamedKey, ...]:
            keys = {k.id: k for k in role.keys}
            for key_id in remove:
                if keys.pop(key_id, None) is None:
                    raise Refused(f"key {key_id} is not one of the {role_name} of version {self.version}",
                                  hint="list the role's keys with 'bundle root verify'")
            for key in add:
                if key.id in revoked:
                    raise Refused(f"key {key.label()} was revoked by an earlier trust root and cannot "
                                  "be added again", hint="generate a new key with 'bundle keys new'")
                if key.id in keys:
                    raise Refused(f"key {key.label()} is already one of the {role_name}")
                keys[key.id] = key
            return tuple(keys.values())

        new_root_keys = change(self.root_keys, "root keys", add_root_keys, remove_root_keys)
        new_signers = change(self.release_signers, "release signers", add_signers, remove_signers)
        still_active = {k.id for k in (*new_root_keys, *new_signers)}
        for key in (*self.root_keys.keys, *self.release_signers.keys):
            if key.id not in still_active:
                revoked[key.id] = key
        try:
            return replace(
                self,
                version=self.version + 1,
                # A threshold never drops silently when keys are removed: it is kept unless given.
                root_keys=Role(new_root_keys, root_threshold or self.root_keys.threshold),
                release_signers=Role(new_signers, threshold or self.release_signers.threshold),
                revoked_keys=tuple(revoked.values()),
            )
        except ValueError as error:
            raise Refused(f"the rotated trust root would be invalid: {error}",
                          hint="adjust --root-threshold/--threshold or the keys added and removed") from None
