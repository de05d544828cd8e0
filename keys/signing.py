"""Making minisign signatures. Vendor side only: the device never imports this module.

Signatures are always prehashed ("ED"), so a multi-GiB file is signed while streaming, and
carry no timestamp in the trusted comment: Ed25519 is deterministic, so the same bytes and key
give the same signature file, and bundles stay reproducible.
"""

from __future__ import annotations

from keys.minisign import MAX_COMMENT_BYTES, PREHASHED, Signature, prehash
from keys.secret_key import SecretKey


def sign_digest(secret: SecretKey, digest: bytes, trusted_comment: str) -> Signature:
    """Sign a :func:`keys.minisign.prehash` digest."""
    comment = trusted_comment.encode("utf-8")
    assert len(comment) <= MAX_COMMENT_BYTES and b"\n" not in comment and b"\r" not in comment
    signing_key = secret.signing_key
    signature = signing_key.sign(digest).signature
    global_signature = signing_key.sign(signature + comment).signature
    return Signature(algorithm=PREHASHED, key_id=secret.key_id, signature=signature,
                     trusted_comment=trusted_comment, global_signature=global_signature,
                     untrusted_comment=f"signature from bundle secret key {secret.id}")


def sign(secret: SecretKey, data: bytes, trusted_comment: str) -> Signature:
    return sign_digest(secret, prehash(data), trusted_comment)
