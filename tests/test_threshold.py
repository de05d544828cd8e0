"""Counting signatures against a threshold: table-driven, like python-tuf's key tests."""

from __future__ import annotations

from dataclasses import replace

import pytest

from keys.errors import ThresholdNotMet
from keys.threshold import check_threshold, require_threshold

DATA = b'{"type": "bundle-manifest"}\n'

# (case, role keys, threshold, signers, revoked, expected signed names, met)
CASES = [
    ("threshold met", ["a", "b", "c"], 2, ["a", "c"], [], ["a", "c"], True),
    ("all signed", ["a", "b"], 2, ["a", "b"], [], ["a", "b"], True),
    ("threshold not met", ["a", "b", "c"], 2, ["b"], [], ["b"], False),
    ("nobody signed", ["a", "b"], 1, [], [], [], False),
    ("duplicate signer counts once", ["a", "b"], 2, ["a", "a"], [], ["a"], False),
    ("unknown key ignored", ["a", "b"], 2, ["a", "stranger"], [], ["a"], False),
    ("unknown key does not spoil a met threshold", ["a"], 1, ["stranger", "a"], [], ["a"], True),
    ("revoked key ignored", ["a", "b"], 2, ["a", "old"], ["old"], ["a"], False),
]


@pytest.mark.parametrize("case, names, threshold, signers, revoked, expected, met", CASES,
                         ids=[c[0] for c in CASES])
def test_counting(keyring, case, names, threshold, signers, revoked, expected, met):
    role = keyring.role(names, threshold)
    result = check_threshold(DATA, keyring.sign(DATA, signers), role, role_name="release signers",
                             revoked=[keyring.key(n) for n in revoked])
    assert [k.name for k in result.signed] == expected
    assert result.met is met
    assert sorted(k.name for k in result.missing) == sorted(set(names) - set(expected))
    if "stranger" in signers:
        assert result.unknown == (keyring.key("stranger").id,)
    if revoked:
        assert [k.name for k in result.revoked] == revoked
    if met:
        assert require_threshold(DATA, keyring.sign(DATA, signers), role, role_name="x").met
    else:
        with pytest.raises(ThresholdNotMet) as raised:
            require_threshold(DATA, keyring.sign(DATA, signers), role, role_name="release signers",
                              revoked=[keyring.key(n) for n in revoked])
        assert f"signed by {len(expected)} of {threshold} required release signers" in str(raised.value)
        assert raised.value.result.signed == result.signed


def test_message_names_who_is_missing(keyring):
    role = keyring.role(["rel1", "rel2"], 2)
    with pytest.raises(ThresholdNotMet) as raised:
        require_threshold(DATA, keyring.sign(DATA, ["rel1"]), role, role_name="release signers")
    assert str(raised.value) == ("signed by 1 of 2 required release signers "
                                 "(signed: rel1; missing: rel2)")
    assert "1 more" in raised.value.hint


def test_flipped_byte_in_document_invalidates_every_signature(keyring):
    role = keyring.role(["a", "b"], 1)
    signatures = keyring.sign(DATA, ["a", "b"])
    tampered = DATA[:5] + bytes([DATA[5] ^ 1]) + DATA[6:]
    result = check_threshold(tampered, signatures, role, role_name="r")
    assert not result.met and result.signed == ()
    assert [k.name for k, _ in result.invalid] == ["a", "b"]
    assert "does not match the signed bytes" in result.invalid[0][1]


@pytest.mark.parametrize("part", ["signature", "global_signature"])
def test_flipped_bit_in_signature_is_not_counted(keyring, part):
    role = keyring.role(["a"], 1)
    [signature] = keyring.sign(DATA, ["a"])
    raw = bytearray(getattr(signature, part))
    raw[10] ^= 0x40
    result = check_threshold(DATA, [replace(signature, **{part: bytes(raw)})], role, role_name="r")
    assert not result.met and len(result.invalid) == 1


def test_altered_trusted_comment_is_not_counted(keyring):
    role = keyring.role(["a"], 1)
    [signature] = keyring.sign(DATA, ["a"])
    result = check_threshold(DATA, [replace(signature, trusted_comment="other")], role, role_name="r")
    assert not result.met
    assert "trusted comment" in result.invalid[0][1]


def test_a_bad_and_a_good_signature_by_the_same_key_count_once(keyring):
    role = keyring.role(["a", "b"], 1)
    [good] = keyring.sign(DATA, ["a"])
    bad = replace(good, signature=bytes(64))
    result = check_threshold(DATA, [bad, good, good], role, role_name="r")
    assert [k.name for k in result.signed] == ["a"] and result.invalid == ()


def test_signature_for_other_bytes_does_not_count(keyring):
    """Mix-and-match: a valid signature of another document is worthless here."""
    role = keyring.role(["a"], 1)
    result = check_threshold(DATA, keyring.sign(b"another document", ["a"]), role, role_name="r")
    assert not result.met
