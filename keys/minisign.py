"""minisign's public-key and signature file formats, and signature verification.

This module owns those byte layouts (docs/TRUST.md, "File formats"); everything that reads or
writes a ``.pub`` or ``.minisig`` file goes through it. It reads no files and holds no secret:
the device imports it to verify; signing lives in ``keys/signing.py``.

Formats (https://jedisct1.github.io/minisign/):

* public key: ``untrusted comment: ...`` then base64 of ``"Ed" || key_id(8) || pk(32)``;
* signature: ``untrusted comment: ...``, base64 of ``"ED" || key_id(8) || sig(64)``,
  ``trusted comment: ...``, base64 of ``global_sig(64)``. ``sig`` is Ed25519 over the
  BLAKE2b-512 digest of the file ("ED", prehashed) or over the file itself ("Ed", legacy);
  ``global_sig`` is Ed25519 over ``sig || trusted comment`` - so the trusted comment is
  authenticated and the untrusted one is not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import BinaryIO

import nacl.exceptions
import nacl.signing

from keys.errors import BadSignature, MalformedKey, MalformedSignature

KEY_ALGORITHM = b"Ed"
PREHASHED = b"ED"
LEGACY = b"Ed"
KEY_ID_BYTES = 8
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
# minisign's COMMENTMAXBYTES; also keeps a hostile signature file small.
MAX_COMMENT_BYTES = 1024
MAX_SIGNATURE_FILE_BYTES = 4096
MAX_PUBLIC_KEY_FILE_BYTES = 4096
UNTRUSTED_PREFIX = b"untrusted comment: "
TRUSTED_PREFIX = b"trusted comment: "


def key_id_text(raw: bytes) -> str:
    """Key id as minisign prints it: the little-endian 64-bit number in upper-case hex."""
    return raw[::-1].hex().upper()


def key_id_from_text(text: str) -> bytes:
    """Inverse of :func:`key_id_text`. Raises ValueError on anything but 16 hex digits."""
    if len(text) != 2 * KEY_ID_BYTES:
        raise ValueError(f"a key id has {2 * KEY_ID_BYTES} hex digits, got {text!r}")
    return bytes.fromhex(text)[::-1]


def prehash(data: bytes) -> bytes:
    """The digest an "ED" signature covers: unkeyed BLAKE2b-512 of the whole file."""
    return hashlib.blake2b(data, digest_size=64).digest()


def prehash_stream(stream: BinaryIO, chunk_size: int = 1 << 20) -> bytes:
    """:func:`prehash` of a stream, read in chunks so a multi-GiB file costs no memory."""
    digest = hashlib.blake2b(digest_size=64)
    while chunk := stream.read(chunk_size):
        digest.update(chunk)
    return digest.digest()


def _b64decode(line: bytes, expected_length: int, error, what: str, where) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not valid base64", where=where) from None
    if len(raw) != expected_length:
        raise error(f"{what} decodes to {len(raw)} bytes, expected {expected_length}", where=where)
    return raw


def _lines(data: bytes, count: int, error, what: str, where) -> list[bytes]:
    """Split a small text file into exactly ``count`` lines (CR LF tolerated, final LF optional)."""
    if data.endswith(b"\n"):
        data = data[:-1]
    lines = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    if len(lines) != count:
        raise error(f"{what} must have {count} lines, found {len(lines)}", where=where,
                    hint="the file is truncated or is not a minisign file")
    return lines


def _comment(line: bytes, prefix: bytes, error, where) -> str:
    if not line.startswith(prefix):
        raise error(f"expected a line starting with {prefix.decode()!r}", where=where)
    text = line[len(prefix):]
    if len(text) > MAX_COMMENT_BYTES:
        raise error(f"comment longer than {MAX_COMMENT_BYTES} bytes", where=where)
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise error("comment is not valid UTF-8", where=where) from None


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key with minisign's 8-byte key id."""

    key_id: bytes
    key: bytes

    def __post_init__(self) -> None:
        assert len(self.key_id) == KEY_ID_BYTES and len(self.key) == PUBLIC_KEY_BYTES

    @property
    def id(self) -> str:
        return key_id_text(self.key_id)

    def to_base64(self) -> str:
        """The one-line form (``RWQ...``) that ``minisign -P`` accepts."""
        return base64.b64encode(KEY_ALGORITHM + self.key_id + self.key).decode("ascii")

    @classmethod
    def from_base64(cls, text: str | bytes, *, where=None) -> "PublicKey":
        """Raises MalformedKey."""
        if isinstance(text, str):
            text = text.encode("ascii", "replace")
        raw = _b64decode(text, 2 + KEY_ID_BYTES + PUBLIC_KEY_BYTES, MalformedKey, "public key", where)
        if raw[:2] != KEY_ALGORITHM:
            raise MalformedKey(f"unsupported key algorithm {raw[:2]!r}; only Ed25519 ('Ed') keys exist",
                               where=where)
        return cls(key_id=raw[2:2 + KEY_ID_BYTES], key=raw[2 + KEY_ID_BYTES:])

    def to_bytes(self) -> bytes:
        """The ``.pub`` file, exactly as ``minisign -G`` writes it."""
        return (f"untrusted comment: minisign public key {self.id}\n{self.to_base64()}\n").encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "PublicKey":
        """Parse a ``.pub`` file. Raises MalformedKey."""
        if len(data) > MAX_PUBLIC_KEY_FILE_BYTES:
            raise MalformedKey("public key file is too large", where=where)
        comment, blob = _lines(data, 2, MalformedKey, "a public key file", where)
        _comment(comment, UNTRUSTED_PREFIX, MalformedKey, where)
        return cls.from_base64(blob, where=where)


@dataclass(frozen=True)
class Signature:
    """A detached minisign signature (one ``.minisig`` file)."""

    algorithm: bytes
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = "signature from minisign secret key"

    def __post_init__(self) -> None:
        assert self.algorithm in (PREHASHED, LEGACY)
        assert len(self.key_id) == KEY_ID_BYTES and len(self.signature) == SIGNATURE_BYTES
        assert len(self.global_signature) == SIGNATURE_BYTES

    @property
    def key_id_text(self) -> str:
        return key_id_text(self.key_id)

    def to_bytes(self) -> bytes:
        blob = base64.b64encode(self.algorithm + self.key_id + self.signature).decode("ascii")
        return (
            f"untrusted comment: {self.untrusted_comment}\n{blob}\n"
            f"trusted comment: {self.trusted_comment}\n"
            f"{base64.b64encode(self.global_signature).decode('ascii')}\n"
        ).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, where=None) -> "Signature":
        """Parse a ``.minisig`` file. Raises MalformedSignature."""
        if len(data) > MAX_SIGNATURE_FILE_BYTES:
            raise MalformedSignature(f"signature file is larger than {MAX_SIGNATURE_FILE_BYTES} bytes",
                                     where=where)
        untrusted, blob, trusted, global_blob = _lines(data, 4, MalformedSignature, "a signature file", where)
        untrusted_comment = _comment(untrusted, UNTRUSTED_PREFIX, MalformedSignature, where)
        raw = _b64decode(blob, 2 + KEY_ID_BYTES + SIGNATURE_BYTES, MalformedSignature, "signature", where)
        if raw[:2] not in (PREHASHED, LEGACY):
            raise MalformedSignature(f"unsupported signature algorithm {raw[:2]!r}", where=where)
        trusted_comment = _comment(trusted, TRUSTED_PREFIX, MalformedSignature, where)
        global_signature = _b64decode(global_blob, SIGNATURE_BYTES, MalformedSignature,
                                      "global signature", where)
        return cls(algorithm=raw[:2], key_id=raw[2:2 + KEY_ID_BYTES], signature=raw[2 + KEY_ID_BYTES:],
                   trusted_comment=trusted_comment, global_signature=global_signature,
                   untrusted_comment=untrusted_comment)

    def verify(self, public_key: PublicKey, data: bytes | None = None, *,
               digest: bytes | None = None, where=None) -> None:
        """Check this signature over ``data`` (or its precomputed :func:`prehash` ``digest``).

        Both the file signature and the global signature over the trusted comment must hold,
        as minisign requires. Raises BadSignature.
        """
        if self.key_id != public_key.key_id:
            raise BadSignature(f"signature is by key {self.key_id_text}, not by key {public_key.id}",
                               where=where)
        if self.algorithm == PREHASHED:
            message = digest if digest is not None else prehash(data)
        else:
            if data is None:
                raise BadSignature("a legacy (non-prehashed) signature needs the whole file", where=where)
            message = data
        verify_key = nacl.signing.VerifyKey(public_key.key)
        try:
            verify_key.verify(message, self.signature)
        except nacl.exceptions.BadSignatureError:
            raise BadSignature(f"signature by key {public_key.id} does not match the signed bytes",
                               where=where, hint="the file or its signature was altered") from None
        try:
            verify_key.verify(self.signature + self.trusted_comment.encode("utf-8"), self.global_signature)
        except nacl.exceptions.BadSignatureError:
            raise BadSignature(f"trusted comment of the signature by key {public_key.id} was altered",
                               where=where) from None
