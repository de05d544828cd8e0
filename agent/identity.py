"""The device's own key pair: it signs the device's reports, and nothing else (docs/STICK.md,
"Device identity").

    STATE/identity/device.key   the Ed25519 seed: exactly 32 raw bytes, mode 0600, never printed
    STATE/identity/device.pub   its public key as a minisign .pub file (for the vendor's registry)

The key id is the first 8 bytes of BLAKE2b-512 of the public key: derived, not random, so the
public file can always be rebuilt from the secret alone. The secret is written first and the
public file derived from it, so a power cut leaves either no identity, or a secret whose public
file the next :func:`ensure_identity` (re)writes.

Why the device may hold a signing key although it "cannot sign" (STYLE.md 9): this key is in no
trust root, so nothing it signs can count towards a bundle's or a trust root's threshold, and it
is made with nacl.signing directly - the vendor's signing and key-storage modules
(keys.signing, keys.secret_key) stay out of the agent (tests/test_device_cannot_sign.py). Its
signatures carry a trusted comment naming a device report (agent/format/device_report.py).
"""

from __future__ import annotations

import hashlib
import os

import nacl.signing

from agent.format.device_report import trusted_comment
from agent.state_dir import StateDir, StateUnusable, unusable
from keys.errors import AlreadyExists, Failed, Refused
from keys.files import create_exclusive, read_capped, remove_stale_temporaries, write_atomic
from keys.minisign import KEY_ID_BYTES, PREHASHED, PublicKey, Signature, key_id_text, prehash

SECRET_FILE = "device.key"
PUBLIC_FILE = "device.pub"
SEED_BYTES = 32


class NoIdentity(Failed):
    """The machine has no device key yet (provisioned before this version)."""


class DamagedIdentity(Failed):
    """The device key file is not a device key."""


def key_id_of(public_key: bytes) -> bytes:
    return hashlib.blake2b(public_key, digest_size=64).digest()[:KEY_ID_BYTES]


def _public_key(signing_key: nacl.signing.SigningKey) -> PublicKey:
    raw = bytes(signing_key.verify_key)
    return PublicKey(key_id=key_id_of(raw), key=raw)


def _signing_key(state_dir: StateDir) -> nacl.signing.SigningKey:
    """Raises NoIdentity, DamagedIdentity, Failed, StateUnusable."""
    path = state_dir.identity / SECRET_FILE
    if not os.path.lexists(path):
        raise NoIdentity("this machine has no device key yet (it was provisioned before device reports existed)",
                         where=state_dir.identity, hint="run bundle-agent identity --create (as root)")
    try:
        seed = read_capped(path, SEED_BYTES, what="device key")
    except Failed as error:
        raise DamagedIdentity(f"cannot read the device key: {error.message}", where=path,
                              hint="run bundle-agent as root") from None
    except Refused as error:  # larger than a seed, or not a regular file
        raise DamagedIdentity(f"the device key is not a {SEED_BYTES}-byte seed ({error})", where=path,
                              hint=_DAMAGED_HINT) from None
    if len(seed) != SEED_BYTES:
        raise DamagedIdentity(f"the device key is {len(seed)} bytes, not {SEED_BYTES}", where=path,
                              hint=_DAMAGED_HINT)
    return nacl.signing.SigningKey(seed)


_DAMAGED_HINT = ("move the identity folder aside and run bundle-agent identity --create; then register the new "
                 "public key with the vendor (reports signed by the old key can no longer be made)")


def load_identity(state_dir: StateDir) -> PublicKey:
    """The device's public key, derived from its secret (the .pub file is only a copy for people).
    Reads only. Raises NoIdentity, DamagedIdentity."""
    return _public_key(_signing_key(state_dir))


def ensure_identity(state_dir: StateDir, audit=None) -> PublicKey:
    """The device's public key, the key pair created first if there is none. Idempotent and safe
    against power cuts: the secret is created exclusively (two callers cannot make two keys), then
    the public file is (re)written from it whenever it is missing or differs. ``audit`` (an
    agent.audit.AuditLog) records a creation. Raises DamagedIdentity, StateUnusable."""
    directory = state_dir.identity
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        remove_stale_temporaries(directory)  # a temporary secret left by a killed writer
    except OSError as error:
        raise unusable(error, state_dir.root, "create the identity folder") from None
    created = False
    if not os.path.lexists(directory / SECRET_FILE):
        try:
            # The seed is never held anywhere but here and in the file, mode 0600 from its first byte.
            create_exclusive(directory / SECRET_FILE, os.urandom(SEED_BYTES), mode=0o600)
            created = True
        except AlreadyExists:
            pass  # another agent made it first: use that one
        except Failed as error:
            raise StateUnusable(f"cannot create the device key: {error.message}", where=error.where,
                                hint="run bundle-agent as root, on a writable state directory") from None
    public_key = _public_key(_signing_key(state_dir))
    public_path = directory / PUBLIC_FILE
    wanted = public_key.to_bytes()
    try:
        current = public_path.read_bytes() if not public_path.is_symlink() else None
    except OSError:
        current = None
    if current != wanted:
        write_atomic(public_path, wanted, mode=0o644)
    secret = directory / SECRET_FILE
    if secret.lstat().st_mode & 0o077:  # widened by hand since: the seed is for this agent only
        secret.chmod(0o600)
    if created and audit is not None:
        audit.record("identity-created", key_id=public_key.id)
    return public_key


def sign_report(state_dir: StateDir, data: bytes, serial: str, counter: int) -> Signature:
    """A minisign signature (prehashed, "ED") of a device report by the device key, its trusted
    comment binding ``serial`` and ``counter`` (agent/format/device_report.py). Nothing else is
    ever signed with this key. Raises NoIdentity, DamagedIdentity."""
    signing_key = _signing_key(state_dir)
    key_id = key_id_of(bytes(signing_key.verify_key))
    comment = trusted_comment(serial, counter)
    signature = signing_key.sign(prehash(data)).signature
    global_signature = signing_key.sign(signature + comment.encode("utf-8")).signature
    return Signature(algorithm=PREHASHED, key_id=key_id, signature=signature, trusted_comment=comment,
                     global_signature=global_signature,
                     untrusted_comment=f"device report signed by the device key {key_id_text(key_id)}")
