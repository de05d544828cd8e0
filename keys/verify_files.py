"""Verify-only checks over files, for the command lines of both sides: reading a public key,
checking a detached minisign signature of any file.

This module must not import signing or secret-key code: the device loads it
(tests/test_device_cannot_sign.py). The commands that print the results are in ``agent/cli/``
and ``bundler/cli/``.
"""

from __future__ import annotations

from pathlib import Path

from keys.errors import Failed
from keys.files import read_capped
from keys.minisign import (MAX_PUBLIC_KEY_FILE_BYTES, MAX_SIGNATURE_FILE_BYTES, PREHASHED, PublicKey, Signature,
                           prehash_stream)

# A legacy signature covers the whole file, which is then held in memory: bounded.
MAX_LEGACY_SIGNED_BYTES = 1 << 30


def load_public_key(path: Path) -> PublicKey:
    """A minisign public key file. Raises MalformedKey, Failed."""
    return PublicKey.from_bytes(read_capped(path, MAX_PUBLIC_KEY_FILE_BYTES, what="public key"), where=path)


def prehash_file(path: Path) -> bytes:
    """The digest a prehashed minisign signature covers, read in blocks. Raises Failed."""
    try:
        with open(path, "rb") as stream:
            return prehash_stream(stream)
    except OSError as error:
        raise Failed(f"cannot read: {error.strerror}", where=path) from None


def verify_detached(file: Path, public_key: PublicKey, signature_path: Path) -> Signature:
    """Check the minisign signature in ``signature_path`` over ``file``, streaming it.

    Returns the signature (its trusted comment is the signer's text, to be printed as such).
    Raises MalformedSignature, BadSignature, Failed.
    """
    signature = Signature.from_bytes(
        read_capped(signature_path, MAX_SIGNATURE_FILE_BYTES, what="signature file"), where=signature_path)
    digest = prehash_file(file)
    # A legacy signature covers the whole file, not its digest (minisign -l): only then is it read.
    data = None if signature.algorithm == PREHASHED else read_capped(file, MAX_LEGACY_SIGNED_BYTES,
                                                                     what="signed file")
    signature.verify(public_key, data, digest=digest, where=file)
    return signature
