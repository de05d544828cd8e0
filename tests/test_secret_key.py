"""Secret keys at rest: Argon2id + SecretBox, checksums, damage and wrong passphrases."""

from __future__ import annotations

import pytest

from keys.errors import MalformedKey, WrongPassphrase
from keys.secret_key import SecretKey, SecretKeyFile


@pytest.fixture(scope="module")
def secret() -> SecretKey:
    return SecretKey.generate()


def test_encrypted_round_trip(secret):
    data = secret.to_bytes(b"correct horse", cost="interactive")
    assert b"(argon2id)" in data.split(b"\n")[0]
    parsed = SecretKeyFile.from_bytes(data)
    assert parsed.encrypted and parsed.key_id == secret.key_id
    assert parsed.decrypt(b"correct horse") == secret


def test_seed_is_not_stored_in_clear(secret):
    import base64
    blob = base64.b64decode(secret.to_bytes(b"pw", cost="interactive").split(b"\n")[1])
    assert secret.seed not in blob


def test_wrong_passphrase_is_a_clear_error(secret):
    parsed = SecretKeyFile.from_bytes(secret.to_bytes(b"right", cost="interactive"))
    with pytest.raises(WrongPassphrase, match=f"cannot decrypt secret key {secret.id}: wrong passphrase"):
        parsed.decrypt(b"wrong", where="k.key")


def test_unencrypted_round_trip_and_checksum(secret):
    data = secret.to_bytes(None)
    assert SecretKeyFile.from_bytes(data).decrypt(None) == secret
    import base64
    comment, blob = data.rstrip(b"\n").split(b"\n")
    raw = bytearray(base64.b64decode(blob))
    raw[-20] ^= 1  # inside the seed
    with pytest.raises(MalformedKey, match="checksum does not match"):
        SecretKeyFile.from_bytes(comment + b"\n" + base64.b64encode(bytes(raw)) + b"\n").decrypt(None)


@pytest.mark.parametrize("cut", [2, 10, 40, 80, 120])
def test_truncated_key_file_is_rejected(secret, cut):
    data = secret.to_bytes(b"pw", cost="interactive")
    with pytest.raises(MalformedKey):
        SecretKeyFile.from_bytes(data[:-cut])


def test_public_key_file_given_as_secret_key(secret):
    with pytest.raises(MalformedKey, match="this is a public key file"):
        SecretKeyFile.from_bytes(secret.public_key.to_bytes())


def test_swapped_key_id_in_header_is_detected(secret):
    import base64
    other = SecretKey.generate()
    comment, blob = secret.to_bytes(b"pw", cost="interactive").rstrip(b"\n").split(b"\n")
    raw = bytearray(base64.b64decode(blob))
    raw[37:45] = other.key_id  # header key id: after magic(4), kdf(1), ops(8), mem(8), salt(16)
    parsed = SecretKeyFile.from_bytes(comment + b"\n" + base64.b64encode(bytes(raw)) + b"\n")
    with pytest.raises(MalformedKey, match="does not match"):
        parsed.decrypt(b"pw")
