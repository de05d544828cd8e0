"""Secret keys: an Ed25519 seed and its minisign key id, and the files that hold them.

Vendor side only: the device never imports this module (tests/test_device_cannot_sign.py).

New keys are written in minisign's own secret-key format (keys/minisign_secret_key.py: scrypt,
BLAKE2b checksum), so `minisign -S -s KEY` signs with them and keys made by `minisign -G` sign
bundles. Keys in the older "bundle secret key" format (keys/legacy_secret_key.py, Argon2id) are
still read. docs/TRUST.md, "Secret keys".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import nacl.signing
import nacl.utils

from keys import legacy_secret_key, minisign_secret_key
from keys.errors import MalformedKey
from keys.minisign import KEY_ID_BYTES, PublicKey, key_id_text
from keys.minisign_secret_key import KDF_COSTS, MinisignSecretKeyFile

SEED_BYTES = 32
MAX_SECRET_KEY_FILE_BYTES = 4096
DEFAULT_COST = "sensitive"  # what `minisign -G` uses
__all__ = ["KDF_COSTS", "DEFAULT_COST", "SEED_BYTES", "MAX_SECRET_KEY_FILE_BYTES", "SecretKey", "SecretKeyFile"]


@dataclass(frozen=True)
class SecretKey:
    """An Ed25519 signing key and its minisign key id, decrypted in memory."""

    key_id: bytes
    seed: bytes

    def __post_init__(self) -> None:
        if len(self.key_id) != KEY_ID_BYTES or len(self.seed) != SEED_BYTES:
            raise ValueError(f"a secret key is a {KEY_ID_BYTES}-byte key id and a {SEED_BYTES}-byte seed")

    @classmethod
    def generate(cls) -> "SecretKey":
        return cls(key_id=os.urandom(KEY_ID_BYTES), seed=nacl.utils.random(SEED_BYTES))

    @property
    def id(self) -> str:
        return key_id_text(self.key_id)

    @property
    def signing_key(self) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(self.seed)

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(key_id=self.key_id, key=bytes(self.signing_key.verify_key))

    def to_bytes(self, passphrase: bytes | None, *, cost: str = DEFAULT_COST) -> bytes:
        """The key file in minisign's format; ``passphrase=None`` writes it unencrypted (like
        ``minisign -G -W``). Raises PassphraseUnavailable (a passphrase minisign could not take)."""
        protection = "unencrypted" if passphrase is None else f"scrypt {cost}"
        return minisign_secret_key.encode(self.key_id, self.seed, passphrase, cost=cost,
                                          comment=f"minisign secret key {self.id} ({protection})")


@dataclass(frozen=True)
class SecretKeyFile:
    """A parsed secret key file of either format, not yet decrypted."""

    format: str  # "minisign" or "bundle" (the older format)
    parsed: MinisignSecretKeyFile | legacy_secret_key.LegacySecretKeyFile

    @property
    def encrypted(self) -> bool:
        return self.parsed.encrypted

    @property
    def key_id(self) -> bytes | None:
        """The key id when it can be read without the passphrase (minisign encrypts it)."""
        return self.parsed.key_id

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "SecretKeyFile":
        """Raises MalformedKey (truncated, damaged, a public key, or not a secret key file)."""
        hint = "the file is truncated or damaged; restore it from your backup"
        if len(data) > MAX_SECRET_KEY_FILE_BYTES:
            raise MalformedKey("secret key file is too large", where=where)
        lines = [line.rstrip(b"\r") for line in data.rstrip(b"\r\n").split(b"\n")]
        if lines[0].startswith(b"untrusted comment: minisign public key"):
            raise MalformedKey("this is a public key file; signing needs the secret .key file", where=where)
        if len(lines) != 2 or not lines[0].startswith(b"untrusted comment: "):
            raise MalformedKey("not a secret key file (expected a comment line and one base64 line)",
                               where=where, hint=hint)
        raw = minisign_secret_key.decode_line(lines[1], where=where)
        if legacy_secret_key.looks_like(raw):
            return cls("bundle", legacy_secret_key.LegacySecretKeyFile.from_raw(raw, where=where))
        if raw[:2] == minisign_secret_key.SIG_ALG or len(raw) == minisign_secret_key.FILE_STRUCT_BYTES:
            return cls("minisign", MinisignSecretKeyFile.from_raw(raw, where=where))
        raise MalformedKey("not a secret key file (neither minisign's format nor the older bundle format)",
                           where=where, hint=hint)

    def decrypt(self, passphrase: bytes | None, *, where=None) -> SecretKey:
        """Raises PassphraseUnavailable (encrypted, no passphrase), WrongPassphrase, MalformedKey."""
        key_id, seed = self.parsed.decrypt(passphrase, where=where)
        return SecretKey(key_id=key_id, seed=seed)
