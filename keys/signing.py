"""Making minisign signatures. Vendor side only: the device never imports this module.

Signatures are always prehashed ("ED"), so a multi-GiB file is signed while streaming, and
carry no timestamp in the trusted comment: Ed25519 is deterministic, so the same bytes and key
give the same signature file, and bundles stay reproducible.
"""

from __future__ import annotations

from keys.errors import Refused
from keys.minisign import MAX_COMMENT_BYTES, PREHASHED, Signature, prehash
from keys.printable import printable
from keys.secret_key import SecretKey


class BadTrustedComment(Refused):
    """A trusted comment a signature file cannot carry: one line of UTF-8, at most 1024 bytes."""


def trusted_comment_bytes(trusted_comment: str) -> bytes:
    """The comment as signed. Raises BadTrustedComment."""
    try:
        comment = trusted_comment.encode("utf-8")
    except UnicodeEncodeError:  # bytes of a name or an argument that were not UTF-8
        raise BadTrustedComment(f"the trusted comment {printable(trusted_comment)!r} is not valid UTF-8",
                                hint="give a comment in UTF-8") from None
    if len(comment) > MAX_COMMENT_BYTES or b"\n" in comment or b"\r" in comment:
        raise BadTrustedComment(f"the trusted comment must be one line of at most {MAX_COMMENT_BYTES} bytes",
                                hint="shorten it, and leave out line breaks")
    return comment


def file_comment(prefix: str, name: str) -> str:
    """``PREFIX NAME`` with the file's name as a comment can carry it: bytes that are not UTF-8
    and line breaks as ``\\xNN``, cut to fit."""
    text = (prefix + printable(name)).replace("\n", "\\x0a")
    while len(text.encode("utf-8")) > MAX_COMMENT_BYTES:
        text = text[:-1]
    return text


def sign_digest(secret: SecretKey, digest: bytes, trusted_comment: str) -> Signature:
    """Sign a :func:`keys.minisign.prehash` digest. Raises BadTrustedComment."""
    comment = trusted_comment_bytes(trusted_comment)
    signing_key = secret.signing_key
    signature = signing_key.sign(digest).signature
    global_signature = signing_key.sign(signature + comment).signature
    return Signature(algorithm=PREHASHED, key_id=secret.key_id, signature=signature,
                     trusted_comment=trusted_comment, global_signature=global_signature,
                     untrusted_comment=f"signature from bundle secret key {secret.id}")


def sign(secret: SecretKey, data: bytes, trusted_comment: str) -> Signature:
    return sign_digest(secret, prehash(data), trusted_comment)
