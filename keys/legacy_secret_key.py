"""The "bundle secret key" format that `bundle keys new` wrote before it switched to minisign's own
format: read only, so no key a vendor already holds is lost. `bundle keys passphrase KEY`
rewrites such a key in minisign's format. Vendor side only (tests/test_device_cannot_sign.py).

Layout (docs/TRUST.md, "Older secret keys")::

    untrusted comment: bundle secret key <KEY ID> (<argon2id|unencrypted>)
    base64( "BSK1" || kdf(1) || opslimit(u64 LE) || memlimit(u64 LE) || salt(16) || key_id(8) || body )

``body`` is ``SecretBox(argon2id(passphrase, salt)).encrypt(key_id || seed)`` (nonce included)
when encrypted, or ``key_id || seed || BLAKE2b-128(key_id || seed)`` when unencrypted. The key
id is repeated inside the body, so a header edited to claim another key is detected.
tests/vectors/legacy-keys/ holds files made by that code.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash
import nacl.secret

from keys.errors import MalformedKey, PassphraseUnavailable, WrongPassphrase
from keys.minisign import KEY_ID_BYTES, key_id_text

MAGIC = b"BSK1"
KDF_NONE = 0
KDF_ARGON2ID = 1
SEED_BYTES = 32
CHECKSUM_BYTES = 16
_HEADER = struct.Struct("<4sBQQ16s8s")
# A hostile or damaged file must not make us allocate unbounded memory or spin for hours.
_MAX_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_SENSITIVE
_MAX_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_SENSITIVE * 4
_DAMAGED = "the file is truncated or damaged; restore it from your backup"


def looks_like(raw: bytes) -> bool:
    return raw[:len(MAGIC)] == MAGIC


@dataclass(frozen=True)
class LegacySecretKeyFile:
    """A parsed "bundle secret key" file, not yet decrypted."""

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
    def from_raw(cls, raw: bytes, *, where=None) -> "LegacySecretKeyFile":
        """Parse the decoded base64 line. Raises MalformedKey."""
        if len(raw) < _HEADER.size:
            raise MalformedKey("secret key file is truncated", where=where, hint=_DAMAGED)
        magic, kdf, opslimit, memlimit, salt, key_id = _HEADER.unpack_from(raw)
        body = raw[_HEADER.size:]
        if magic != MAGIC:
            raise MalformedKey("not a bundle secret key (wrong magic bytes)", where=where)
        if kdf == KDF_NONE:
            expected = KEY_ID_BYTES + SEED_BYTES + CHECKSUM_BYTES
        elif kdf == KDF_ARGON2ID:
            expected = nacl.secret.SecretBox.NONCE_SIZE + KEY_ID_BYTES + SEED_BYTES + nacl.secret.SecretBox.MACBYTES
            if not (0 < memlimit <= _MAX_MEMLIMIT and 0 < opslimit <= _MAX_OPSLIMIT):
                raise MalformedKey("secret key has out-of-range key-derivation costs", where=where, hint=_DAMAGED)
        else:
            raise MalformedKey(f"unknown key-derivation method {kdf}", where=where)
        if len(body) != expected:
            raise MalformedKey(f"secret key body is {len(body)} bytes, expected {expected}",
                               where=where, hint=_DAMAGED)
        return cls(key_id=key_id, encrypted=kdf == KDF_ARGON2ID, opslimit=opslimit,
                   memlimit=memlimit, salt=salt, body=body)

    def decrypt(self, passphrase: bytes | None, *, where=None) -> tuple[bytes, bytes]:
        """The key id and the Ed25519 seed. Raises PassphraseUnavailable, WrongPassphrase, MalformedKey."""
        if not self.encrypted:
            plain, stored = self.body[:-CHECKSUM_BYTES], self.body[-CHECKSUM_BYTES:]
            if hashlib.blake2b(plain, digest_size=CHECKSUM_BYTES).digest() != stored:
                raise MalformedKey("secret key checksum does not match: the file is damaged", where=where,
                                   hint="restore the key from your backup")
        else:
            if passphrase is None:
                raise PassphraseUnavailable("this secret key is encrypted and no passphrase was given",
                                            where=where)
            try:
                key = nacl.pwhash.argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, self.salt,
                                               opslimit=self.opslimit, memlimit=self.memlimit)
            except (nacl.exceptions.CryptoError, ValueError):  # costs below libsodium's minimum
                raise MalformedKey("secret key has unusable key-derivation costs", where=where,
                                   hint=_DAMAGED) from None
            try:
                plain = nacl.secret.SecretBox(key).decrypt(self.body)
            except nacl.exceptions.CryptoError:
                raise WrongPassphrase(f"cannot decrypt secret key {self.id}: wrong passphrase, "
                                      "or the file is damaged", where=where,
                                      hint="check the passphrase source (--passphrase-file, "
                                           "BUNDLE_PASSPHRASE or the prompt)") from None
        if plain[:KEY_ID_BYTES] != self.key_id:
            raise MalformedKey("secret key id in the header does not match the key", where=where)
        return self.key_id, plain[KEY_ID_BYTES:]
