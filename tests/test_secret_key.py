"""Secret key files: minisign's format (scrypt, BLAKE2b checksum), damage and wrong passphrases, and
the older "bundle secret key" files (tests/vectors/legacy-keys/) that must keep working."""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest

from keys.errors import MalformedKey, PassphraseUnavailable, WrongPassphrase
from keys.minisign import PublicKey, Signature
from keys.minisign_secret_key import FILE_STRUCT_BYTES, checksum
from keys.secret_key import SecretKey, SecretKeyFile
from keys.signing import sign

LEGACY = Path(__file__).parent / "vectors" / "legacy-keys"
LEGACY_PASSPHRASE = b"legacy passphrase"


@pytest.fixture(scope="module")
def secret() -> SecretKey:
    return SecretKey.generate()


def _raw(data: bytes) -> bytearray:
    return bytearray(base64.b64decode(data.split(b"\n")[1]))


def _file(comment: bytes, raw: bytes) -> bytes:
    return comment + b"\n" + base64.b64encode(bytes(raw)) + b"\n"


def test_encrypted_key_has_minisigns_layout(secret):
    data = secret.to_bytes(b"correct horse", cost="interactive")
    raw = _raw(data)
    assert len(raw) == FILE_STRUCT_BYTES == 158
    assert raw[:6] == b"EdScB2"
    opslimit, memlimit = struct.unpack_from("<QQ", raw, 38)
    assert (opslimit, memlimit) == (524288, 16777216)  # libsodium's scrypt "interactive" limits
    assert secret.seed not in raw and secret.key_id not in raw  # minisign encrypts the key id too
    parsed = SecretKeyFile.from_bytes(data)
    assert parsed.format == "minisign" and parsed.encrypted and parsed.key_id is None
    assert parsed.decrypt(b"correct horse") == secret


def test_default_cost_is_minisigns_own():
    """`minisign -G` stores opslimit 2^25 and memlimit 1 GiB; new keys get the same by default."""
    from keys.secret_key import DEFAULT_COST, KDF_COSTS
    assert KDF_COSTS[DEFAULT_COST] == (1 << 25, 1 << 30)


def test_wrong_passphrase_is_a_clear_error(secret):
    parsed = SecretKeyFile.from_bytes(secret.to_bytes(b"right", cost="interactive"))
    with pytest.raises(WrongPassphrase, match="k.key: cannot decrypt the secret key: wrong passphrase"):
        parsed.decrypt(b"wrong", where="k.key")
    with pytest.raises(PassphraseUnavailable):
        parsed.decrypt(None)


def test_unencrypted_key_carries_a_real_checksum(secret):
    data = secret.to_bytes(None)
    raw = _raw(data)
    assert raw[:6] == b"Ed\x00\x00B2"
    assert raw[126:] == checksum(secret.key_id, raw[62:126])
    assert SecretKeyFile.from_bytes(data).decrypt(None) == secret
    raw[70] ^= 1  # inside the seed
    with pytest.raises(MalformedKey, match="checksum does not match"):
        SecretKeyFile.from_bytes(_file(b"untrusted comment: x", raw)).decrypt(None)


def test_zero_checksum_of_minisign_W_is_accepted_but_damage_still_caught(secret):
    """`minisign -G -W` writes a zero checksum and never checks it; the public half catches damage."""
    raw = _raw(secret.to_bytes(None))
    raw[126:] = bytes(32)
    assert SecretKeyFile.from_bytes(_file(b"untrusted comment: x", raw)).decrypt(None) == secret
    raw[70] ^= 1
    with pytest.raises(MalformedKey, match="public half does not match"):
        SecretKeyFile.from_bytes(_file(b"untrusted comment: x", raw)).decrypt(None)


def test_flipped_byte_of_an_encrypted_key_reads_as_wrong_passphrase_or_damage(secret):
    raw = _raw(secret.to_bytes(b"pw", cost="interactive"))
    raw[100] ^= 0x40
    with pytest.raises(WrongPassphrase, match="or the file is damaged"):
        SecretKeyFile.from_bytes(_file(b"untrusted comment: x", raw)).decrypt(b"pw")


@pytest.mark.parametrize("offset, value, message", [
    (0, b"XX", "unsupported signature algorithm"),
    (2, b"Ar", "unsupported key-derivation function"),
    (4, b"B3", "unsupported secret key checksum"),
    (46, struct.pack("<Q", 1 << 40), "scrypt costs above the limit"),  # a 1 TiB memlimit
])
def test_foreign_or_hostile_headers_are_refused(secret, offset, value, message):
    raw = _raw(secret.to_bytes(b"pw", cost="interactive"))
    raw[offset:offset + len(value)] = value
    with pytest.raises(MalformedKey, match=message):
        SecretKeyFile.from_bytes(_file(b"untrusted comment: x", raw))


@pytest.mark.parametrize("cut", [2, 10, 40, 80, 120])
def test_truncated_key_file_is_rejected(secret, cut):
    data = secret.to_bytes(None)
    with pytest.raises(MalformedKey):
        SecretKeyFile.from_bytes(data[:-cut]).decrypt(None)


def test_public_key_file_given_as_secret_key(secret):
    with pytest.raises(MalformedKey, match="this is a public key file"):
        SecretKeyFile.from_bytes(secret.public_key.to_bytes())


def test_crlf_line_ends_are_read(secret):
    data = secret.to_bytes(None).replace(b"\n", b"\r\n")
    assert SecretKeyFile.from_bytes(data).decrypt(None) == secret


# --- the older format: keys vendors made before the switch still sign -----------------------------

@pytest.mark.parametrize("name, passphrase", [("encrypted", LEGACY_PASSPHRASE), ("unencrypted", None)])
def test_legacy_bundle_secret_keys_still_load_and_sign(name, passphrase):
    parsed = SecretKeyFile.from_bytes((LEGACY / f"{name}.key").read_bytes())
    assert parsed.format == "bundle" and parsed.encrypted == (passphrase is not None)
    secret = parsed.decrypt(passphrase)
    public_key = PublicKey.from_bytes((LEGACY / f"{name}.pub").read_bytes())
    assert secret.public_key == public_key
    Signature.from_bytes(sign(secret, b"data", "c").to_bytes()).verify(public_key, b"data")


def test_legacy_wrong_passphrase_and_swapped_key_id():
    data = (LEGACY / "encrypted.key").read_bytes()
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        SecretKeyFile.from_bytes(data).decrypt(b"not it")
    comment, blob = data.rstrip(b"\n").split(b"\n")
    raw = bytearray(base64.b64decode(blob))
    raw[37:45] = bytes(8)  # header key id: after magic(4), kdf(1), ops(8), mem(8), salt(16)
    with pytest.raises(MalformedKey, match="does not match"):
        SecretKeyFile.from_bytes(_file(comment, raw)).decrypt(LEGACY_PASSPHRASE)


# --- hostile input: any edit of an encrypted key gives one of our errors, never another exception ---

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.sim.strategies import edited  # noqa: E402

_ENCRYPTED = SecretKey.generate().to_bytes(b"pw", cost="interactive")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited(_ENCRYPTED))
def test_edited_encrypted_key_gives_only_our_errors(data):
    try:
        SecretKeyFile.from_bytes(data).decrypt(b"pw")
    except (MalformedKey, WrongPassphrase, PassphraseUnavailable):
        pass


@pytest.mark.parametrize("write", ["create_exclusive", "write_atomic"])
def test_a_temporary_name_someone_else_made_is_never_written_into(tmp_path, write):
    """A key written into a folder others may write to: a file planted at the temporary name,
    held open by its owner, must not receive the secret (it is removed, and a new one made)."""
    from keys import files
    if os.geteuid() != 0:
        pytest.skip("making a file owned by another user needs root")
    key = tmp_path / "signer.key"
    planted = tmp_path / f".{key.name}.tmp-{os.getpid()}"
    planted.touch()
    os.chown(planted, 65534, 65534)
    with open(planted, "rb") as held:
        getattr(files, write)(key, b"the secret\n", mode=0o600)
        assert held.read() == b""  # nothing reached the planted file
    status = key.stat()
    assert key.read_bytes() == b"the secret\n" and (status.st_uid, status.st_mode & 0o777) == (0, 0o600)
    assert not planted.exists()
