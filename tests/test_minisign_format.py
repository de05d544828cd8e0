"""minisign key and signature files: round trips and malformed input."""

from __future__ import annotations

import pytest

from keys.errors import BadSignature, MalformedKey, MalformedSignature
from keys.minisign import PublicKey, Signature, key_id_from_text, key_id_text
from keys.signing import sign


def test_public_key_round_trip(keyring):
    public_key = keyring.secret("a").public_key
    text = public_key.to_bytes()
    assert text.startswith(f"untrusted comment: minisign public key {public_key.id}\nRW".encode())
    assert PublicKey.from_bytes(text) == public_key
    assert PublicKey.from_base64(public_key.to_base64()) == public_key


def test_key_id_is_shown_as_minisign_shows_it():
    raw = bytes.fromhex("0102030405060708")
    assert key_id_text(raw) == "0807060504030201"
    assert key_id_from_text("0807060504030201") == raw


def test_signature_round_trip_and_verify(keyring):
    secret = keyring.secret("a")
    signature = sign(secret, b"data", "file:data")
    parsed = Signature.from_bytes(signature.to_bytes())
    assert parsed == signature
    parsed.verify(secret.public_key, b"data")


def test_signature_is_deterministic(keyring):
    """Reproducible bundles need reproducible signatures: no timestamp, deterministic Ed25519."""
    secret = keyring.secret("a")
    assert sign(secret, b"x", "c").to_bytes() == sign(secret, b"x", "c").to_bytes()


def test_wrong_key_is_named(keyring):
    signature = sign(keyring.secret("a"), b"data", "c")
    with pytest.raises(BadSignature, match=f"signature is by key {keyring.secret('a').id}"):
        signature.verify(keyring.secret("b").public_key, b"data")


MALFORMED_SIGNATURES = {
    "empty": b"",
    "truncated after two lines": b"untrusted comment: x\nRUQ=\n",
    "no trusted comment prefix": None,
    "bad base64": None,
    "wrong algorithm": None,
    "short global signature": None,
    "oversized": b"untrusted comment: " + b"x" * 5000 + b"\n",
}


def _mutate(text: bytes, case: str, signature: Signature) -> bytes:
    lines = text.split(b"\n")
    if case == "no trusted comment prefix":
        lines[2] = lines[2].replace(b"trusted comment: ", b"comment: ")
    elif case == "bad base64":
        lines[1] = lines[1][:-4] + b"!!!!"
    elif case == "wrong algorithm":
        import base64
        lines[1] = base64.b64encode(b"XX" + base64.b64decode(lines[1])[2:])
    elif case == "short global signature":
        lines[3] = lines[3][:40]
    return b"\n".join(lines)


@pytest.mark.parametrize("case", MALFORMED_SIGNATURES)
def test_malformed_signature_files_are_rejected_clearly(keyring, case):
    signature = sign(keyring.secret("a"), b"data", "c")
    data = MALFORMED_SIGNATURES[case]
    if data is None:
        data = _mutate(signature.to_bytes(), case, signature)
    with pytest.raises(MalformedSignature) as raised:
        Signature.from_bytes(data, where="f.minisig")
    assert str(raised.value).startswith("f.minisig: ")


@pytest.mark.parametrize("data, message", [
    (b"", "must have 2 lines"),
    (b"untrusted comment: k\nRWQ\n", "not valid base64"),
    (b"untrusted comment: k\nRWQAAAAA\n", "decodes to 6 bytes"),
    (b"comment\nRWQAAAAA\n", "expected a line starting with 'untrusted comment: '"),
])
def test_malformed_public_keys(data, message):
    with pytest.raises(MalformedKey, match=message):
        PublicKey.from_bytes(data)


def test_truncated_public_key_file(keyring):
    text = keyring.secret("a").public_key.to_bytes()
    with pytest.raises(MalformedKey):
        PublicKey.from_bytes(text[:-10])
