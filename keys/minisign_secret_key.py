"""minisign's secret-key file format: read and write it, so `minisign -S` signs with our keys and
`bundle` signs with keys `minisign -G` made. Vendor side only: the device never imports this
module (tests/test_device_cannot_sign.py).

Layout (https://jedisct1.github.io/minisign/, ``SeckeyStruct`` in minisign's src/minisign.h)::

    untrusted comment: <anything>
    base64( sig_alg "Ed" || kdf_alg "Sc" or 0x0000 || chk_alg "B2" || salt(32)
            || opslimit(u64 LE) || memlimit(u64 LE) || keynum_sk )
    keynum_sk = key_id(8) || ed25519 secret key(64: seed || public key) || checksum(32)
    checksum  = BLAKE2b-256(sig_alg || key_id || secret key)

With kdf "Sc", ``keynum_sk`` is XORed with the same number of bytes of libsodium's
``crypto_pwhash_scryptsalsa208sha256(passphrase, salt, opslimit, memlimit)``; a wrong passphrase
therefore shows only as a checksum that does not match. With kdf 0x0000 (``minisign -W``) the key
is stored in clear: minisign then writes a zero checksum and never checks it, so a zero checksum
is accepted here too (the public half of the secret key, rebuilt from the seed, still catches a
damaged key), and the keys we write carry the real checksum, which minisign ignores.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

import nacl.exceptions
import nacl.pwhash.scrypt
import nacl.signing

from keys.errors import MalformedKey, PassphraseUnavailable, WrongPassphrase
from keys.minisign import KEY_ID_BYTES

SIG_ALG = b"Ed"
KDF_SCRYPT = b"Sc"
KDF_NONE = b"\x00\x00"
CHK_ALG = b"B2"
SALT_BYTES = nacl.pwhash.scrypt.SALTBYTES  # 32, as minisign's kdf_salt
SEED_BYTES = 32
SK_BYTES = 64
CHECKSUM_BYTES = 32
KEYNUM_SK_BYTES = KEY_ID_BYTES + SK_BYTES + CHECKSUM_BYTES
_HEADER = struct.Struct("<2s2s2s32sQQ")
FILE_STRUCT_BYTES = _HEADER.size + KEYNUM_SK_BYTES  # 158
# minisign's PASSWORDMAXBYTES: a longer passphrase could not be typed into minisign.
MAX_PASSPHRASE_BYTES = 1024

# scrypt costs (libsodium's names), measured on the 2-core build machine: "sensitive" is what
# `minisign -G` uses (1 GiB, 3.4 s), "moderate" 128 MiB / 0.4 s, "interactive" 16 MiB / 0.05 s -
# the last for test and demo keys only.
KDF_COSTS = {
    "sensitive": (nacl.pwhash.scrypt.OPSLIMIT_SENSITIVE, nacl.pwhash.scrypt.MEMLIMIT_SENSITIVE),
    "moderate": (nacl.pwhash.scrypt.OPSLIMIT_MODERATE, nacl.pwhash.scrypt.MEMLIMIT_MODERATE),
    "interactive": (nacl.pwhash.scrypt.OPSLIMIT_INTERACTIVE, nacl.pwhash.scrypt.MEMLIMIT_INTERACTIVE),
}
# The costs come from the file: a hostile or damaged one must not make us allocate unbounded
# memory or spin for hours. Twice minisign's own default is the most we will pay.
_MAX_MEMLIMIT = 2 * nacl.pwhash.scrypt.MEMLIMIT_SENSITIVE
_MAX_OPSLIMIT = 4 * nacl.pwhash.scrypt.OPSLIMIT_SENSITIVE

_DAMAGED = "the file is truncated or damaged; restore it from your backup"


def checksum(key_id: bytes, sk: bytes) -> bytes:
    """minisign's ``seckey_compute_chk``: BLAKE2b-256 over sig_alg, key id and secret key only."""
    return hashlib.blake2b(SIG_ALG + key_id + sk, digest_size=CHECKSUM_BYTES).digest()


def _keystream(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int, *, where) -> bytes:
    if len(passphrase) > MAX_PASSPHRASE_BYTES:
        raise PassphraseUnavailable(f"the passphrase is longer than minisign's {MAX_PASSPHRASE_BYTES} bytes",
                                    where=where)
    try:
        # pynacl picks N, r, p from the two limits exactly as libsodium's pickparams does, which
        # is what minisign's crypto_pwhash_scryptsalsa208sha256 call uses.
        return nacl.pwhash.scrypt.kdf(KEYNUM_SK_BYTES, passphrase, salt, opslimit=opslimit, memlimit=memlimit)
    except (nacl.exceptions.CryptoError, ValueError, MemoryError) as error:
        raise MalformedKey(f"secret key's scrypt costs cannot be used: {error}", where=where,
                           hint=_DAMAGED) from None


def _xor(data: bytes, stream: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


def encode(key_id: bytes, seed: bytes, passphrase: bytes | None, *, cost: str = "sensitive",
           comment: str) -> bytes:
    """The secret key file for ``key_id`` and the Ed25519 ``seed``; unencrypted when
    ``passphrase`` is None. Raises PassphraseUnavailable (passphrase too long)."""
    sk = seed + bytes(nacl.signing.SigningKey(seed).verify_key)
    keynum_sk = key_id + sk + checksum(key_id, sk)
    if passphrase is None:
        header = _HEADER.pack(SIG_ALG, KDF_NONE, CHK_ALG, bytes(SALT_BYTES), 0, 0)
    else:
        opslimit, memlimit = KDF_COSTS[cost]
        salt = os.urandom(SALT_BYTES)
        header = _HEADER.pack(SIG_ALG, KDF_SCRYPT, CHK_ALG, salt, opslimit, memlimit)
        keynum_sk = _xor(keynum_sk, _keystream(passphrase, salt, opslimit, memlimit, where=None))
    blob = base64.b64encode(header + keynum_sk).decode("ascii")
    return f"untrusted comment: {comment}\n{blob}\n".encode("ascii")


def looks_like(raw: bytes) -> bool:
    """True when decoded base64 has the size and signature algorithm of minisign's secret key."""
    return len(raw) == FILE_STRUCT_BYTES and raw[:2] == SIG_ALG


def decode_line(line: bytes, *, where) -> bytes:
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedKey("secret key is not valid base64", where=where, hint=_DAMAGED) from None


@dataclass(frozen=True)
class MinisignSecretKeyFile:
    """A parsed minisign secret key file, not yet decrypted."""

    kdf: bytes
    salt: bytes
    opslimit: int
    memlimit: int
    keynum_sk: bytes  # encrypted when kdf is "Sc"

    @property
    def encrypted(self) -> bool:
        return self.kdf == KDF_SCRYPT

    @property
    def key_id(self) -> bytes | None:
        """The key id, readable only when the key is stored in clear (minisign encrypts it)."""
        return None if self.encrypted else self.keynum_sk[:KEY_ID_BYTES]

    @classmethod
    def from_raw(cls, raw: bytes, *, where=None) -> "MinisignSecretKeyFile":
        """Parse the decoded base64 line. Raises MalformedKey."""
        if len(raw) != FILE_STRUCT_BYTES:
            raise MalformedKey(f"minisign secret key is {len(raw)} bytes, expected {FILE_STRUCT_BYTES}",
                               where=where, hint=_DAMAGED)
        sig_alg, kdf, chk_alg, salt, opslimit, memlimit = _HEADER.unpack_from(raw)
        if sig_alg != SIG_ALG:
            raise MalformedKey(f"unsupported signature algorithm {sig_alg!r}; only Ed25519 ('Ed') keys exist",
                               where=where)
        if chk_alg != CHK_ALG:
            raise MalformedKey(f"unsupported secret key checksum {chk_alg!r}; minisign uses 'B2'", where=where)
        if kdf == KDF_SCRYPT:
            if not (0 < memlimit <= _MAX_MEMLIMIT and 0 < opslimit <= _MAX_OPSLIMIT):
                raise MalformedKey(f"secret key asks for scrypt costs above the limit (opslimit {opslimit}, "
                                   f"memlimit {memlimit}; at most {_MAX_OPSLIMIT} and {_MAX_MEMLIMIT})",
                                   where=where, hint=_DAMAGED)
        elif kdf != KDF_NONE:
            raise MalformedKey(f"unsupported key-derivation function {kdf!r}; minisign uses 'Sc' or none",
                               where=where)
        return cls(kdf=kdf, salt=salt, opslimit=opslimit, memlimit=memlimit, keynum_sk=raw[_HEADER.size:])

    def decrypt(self, passphrase: bytes | None, *, where=None) -> tuple[bytes, bytes]:
        """The key id and the Ed25519 seed.

        Raises PassphraseUnavailable (encrypted, no passphrase), WrongPassphrase (encrypted: the
        checksum does not match), MalformedKey (damaged).
        """
        plain = self.keynum_sk
        if self.encrypted:
            if passphrase is None:
                raise PassphraseUnavailable("this secret key is encrypted and no passphrase was given",
                                            where=where)
            plain = _xor(plain, _keystream(passphrase, self.salt, self.opslimit, self.memlimit, where=where))
        key_id, sk = plain[:KEY_ID_BYTES], plain[KEY_ID_BYTES:KEY_ID_BYTES + SK_BYTES]
        stored = plain[KEY_ID_BYTES + SK_BYTES:]
        unchecked = not self.encrypted and stored == bytes(CHECKSUM_BYTES)  # minisign -W writes zeros
        if not unchecked and not hmac.compare_digest(stored, checksum(key_id, sk)):
            if self.encrypted:
                raise WrongPassphrase("cannot decrypt the secret key: wrong passphrase, or the file is damaged",
                                      where=where, hint="check the passphrase source (--passphrase-file, "
                                                        "BUNDLE_PASSPHRASE or the prompt)")
            raise MalformedKey("secret key checksum does not match: the file is damaged", where=where,
                               hint="restore the key from your backup")
        seed = sk[:SEED_BYTES]
        if bytes(nacl.signing.SigningKey(seed).verify_key) != sk[SEED_BYTES:]:
            raise MalformedKey("the secret key's public half does not match its seed: the file is damaged",
                               where=where, hint="restore the key from your backup")
        return key_id, seed
