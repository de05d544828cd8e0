"""Secret key storage: Ed25519 seeds encrypted at rest with Argon2id + XSalsa20-Poly1305.

Vendor side only: the device never imports this module (tests/test_device_cannot_sign.py).

File format (docs/TRUST.md, "Secret key file")::

    untrusted comment: bundle secret key <KEY ID> (<argon2id|unencrypted>)
    base64( "BSK1" || kdf(1) || opslimit(u64 LE) || memlimit(u64 LE) || salt(16) || key_id(8) || body )

``body`` is ``SecretBox(argon2id(passphrase, salt)).encrypt(key_id || seed)`` (nonce included)
when encrypted, or ``key_id || seed || BLAKE2b-128(key_id || seed)`` when unencrypted. The
plaintext key id is repeated inside the encrypted body, so a header edited to claim another
key is detected; the checksum catches a damaged unencrypted file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.signing
import nacl.utils

from keys.errors import MalformedKey, WrongPassphrase
from keys.minisign import KEY_ID_BYTES, PublicKey, key_id_text

MAGIC = b"BSK1"
KDF_NONE = 0
KDF_ARGON2ID = 1
SEED_BYTES = 32
CHECKSUM_BYTES = 16
SALT_BYTES = nacl.pwhash.argon2id.SALTBYTES
_HEADER = struct.Struct("<4sBQQ16s8s")
MAX_SECRET_KEY_FILE_BYTES = 4096

# Argon2id costs measured here: interactive 0.14 s / 64 MiB, moderate 1.05 s / 256 MiB,
# sensitive 5.7 s / 1 GiB (FIELD-NOTES). Moderate is the default for release keys.
KDF_COSTS = {
    "interactive": (nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE, nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (nacl.pwhash.argon2id.OPSLIMIT_MODERATE, nacl.pwhash.argon2id.MEMLIMIT_MODERATE),
    "sensitive": (nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE, nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE),
}
# A hostile or damaged file must not make us allocate unbounded memory or spin for hours.
_MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE
_MAX_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE * 4


@dataclass(frozen=True)
class SecretKey:
    """An Ed25519 signing key and its minisign key id, decrypted in memory."""

    key_id: bytes
    seed: bytes

    def __post_init__(self) -> None:
        assert len(self.key_id) == KEY_ID_BYTES and len(self.seed) == SEED_BYTES

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

    def to_bytes(self, passphrase: bytes | None, *, cost: str = "moderate") -> bytes:
        """Serialise; ``passphrase=None`` writes the key unencrypted."""
        plain = self.key_id + self.seed
        if passphrase is None:
            header = _HEADER.pack(MAGIC, KDF_NONE, 0, 0, bytes(SALT_BYTES), self.key_id)
            body = plain + hashlib.blake2b(plain, digest_size=CHECKSUM_BYTES).digest()
            label = "unencrypted"
        else:
            opslimit, memlimit = KDF_COSTS[cost]
            salt = nacl.utils.random(SALT_BYTES)
            header = _HEADER.pack(MAGIC, KDF_ARGON2ID, opslimit, memlimit, salt, self.key_id)
            body = bytes(nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit)).encrypt(plain))
            label = "argon2id"
        blob = base64.b64encode(header + body).decode("ascii")
        return f"untrusted comment: bundle secret key {self.id} ({label})\n{blob}\n".encode("ascii")


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt,
                                    opslimit=opslimit, memlimit=memlimit)


@dataclass(frozen=True)
class SecretKeyFile:
    """A parsed secret key file, not yet decrypted."""

    key_id: bytes
    encrypted: bool
    opslimit: int
    memlimit: int
    salt: bytes
    body: bytes

    @property
    def id(self) -> str:
        return key_id_text(self.key_id)

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "SecretKeyFile":
        """Raises MalformedKey (truncated, damaged, or not a secret key file)."""
        hint = "the file is truncated or damaged; restore it from your backup"
        if len(data) > MAX_SECRET_KEY_FILE_BYTES:
            raise MalformedKey("secret key file is too large", where=where)
        lines = data.rstrip(b"\n").split(b"\n")
        if lines[0].startswith(b"untrusted comment: minisign public key"):
            raise MalformedKey("this is a public key file; signing needs the secret .key file", where=where)
        if len(lines) != 2 or not lines[0].startswith(b"untrusted comment: "):
            raise MalformedKey("not a secret key file (expected a comment line and one base64 line)",
                               where=where, hint=hint)
        try:
            raw = base64.b64decode(lines[1], validate=True)
        except (binascii.Error, ValueError):
            raise MalformedKey("secret key is not valid base64", where=where, hint=hint) from None
        if len(raw) < _HEADER.size:
            raise MalformedKey("secret key file is truncated", where=where, hint=hint)
        magic, kdf, opslimit, memlimit, salt, key_id = _HEADER.unpack_from(raw)
        body = raw[_HEADER.size:]
        if magic != MAGIC:
            raise MalformedKey("not a bundle secret key (wrong magic bytes)", where=where)
        if kdf == KDF_NONE:
            expected = KEY_ID_BYTES + SEED_BYTES + CHECKSUM_BYTES
        elif kdf == KDF_ARGON2ID:
            expected = nacl.secret.SecretBox.NONCE_SIZE + KEY_ID_BYTES + SEED_BYTES + nacl.secret.SecretBox.MACBYTES
            if not (0 < memlimit <= _MAX_MEMLIMIT and 0 < opslimit <= _MAX_OPSLIMIT):
                raise MalformedKey("secret key has out-of-range key-derivation costs", where=where, hint=hint)
        else:
            raise MalformedKey(f"unknown key-derivation method {kdf}", where=where)
        if len(body) != expected:
            raise MalformedKey(f"secret key body is {len(body)} bytes, expected {expected}",
                               where=where, hint=hint)
        return cls(key_id=key_id, encrypted=kdf == KDF_ARGON2ID, opslimit=opslimit,
                   memlimit=memlimit, salt=salt, body=body)

    def decrypt(self, passphrase: bytes | None, *, where=None) -> SecretKey:
        """Raises WrongPassphrase (encrypted key) or MalformedKey (damaged unencrypted key)."""
        if not self.encrypted:
            plain, checksum = self.body[:-CHECKSUM_BYTES], self.body[-CHECKSUM_BYTES:]
            if hashlib.blake2b(plain, digest_size=CHECKSUM_BYTES).digest() != checksum:
                raise MalformedKey("secret key checksum does not match: the file is damaged", where=where,
                                   hint="restore the key from your backup")
        else:
            assert passphrase is not None, "caller must obtain a passphrase for an encrypted key"
            box = nacl.secret.SecretBox(_derive(passphrase, self.salt, self.opslimit, self.memlimit))
            try:
                plain = box.decrypt(self.body)
            except nacl.exceptions.CryptoError:
                raise WrongPassphrase(f"cannot decrypt secret key {self.id}: wrong passphrase, "
                                      "or the file is damaged", where=where,
                                      hint="check the passphrase source (--passphrase-file, "
                                           "BUNDLE_PASSPHRASE or the prompt)") from None
        if plain[:KEY_ID_BYTES] != self.key_id:
            raise MalformedKey("secret key id in the header does not match the key", where=where)
        return SecretKey(key_id=self.key_id, seed=plain[KEY_ID_BYTES:])
