"""Parsers of untrusted bytes: any input gives a result or our documented error, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from keys.errors import MalformedKey, MalformedSignature, MalformedTrustRoot, PassphraseUnavailable, UpdateError
from keys.minisign import PublicKey, Signature
from keys.rotation import RootCandidate, trust_anchor
from keys.secret_key import SecretKey, SecretKeyFile
from keys.signing import sign
from keys.trust_root import NamedKey, Role, TrustRoot
from keys.threshold import check_threshold
from tests.sim.strategies import edited

SECRET = SecretKey.generate()
KEY = NamedKey(public_key=SECRET.public_key, name="r1")
ROOT = TrustRoot(version=1, root_keys=Role((KEY,), 1), release_signers=Role((KEY,), 1))
ROOT_BYTES = ROOT.to_bytes()
SIGNATURE_BYTES = sign(SECRET, ROOT_BYTES, "c").to_bytes()
PUBLIC_BYTES = SECRET.public_key.to_bytes()
SECRET_BYTES = SECRET.to_bytes(None)


def flips(base: bytes):
    """Inputs near a valid one (bytes flipped, cut, inserted, dropped, repeated), plus arbitrary bytes."""
    return st.one_of(edited(base), st.binary(max_size=600))


common = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(flips(SIGNATURE_BYTES))
def test_signature_parser(data):
    try:
        signature = Signature.from_bytes(data)
    except MalformedSignature:
        return
    result = check_threshold(ROOT_BYTES, [signature], ROOT.root_keys, role_name="root keys")
    # Only the untrusted comment may change without breaking the signature.
    signed_parts = lambda s: (s.algorithm, s.key_id, s.signature, s.trusted_comment, s.global_signature)
    assert result.met == (signed_parts(signature) == signed_parts(Signature.from_bytes(SIGNATURE_BYTES)))


@common
@given(flips(PUBLIC_BYTES))
def test_public_key_parser(data):
    try:
        PublicKey.from_bytes(data)
    except MalformedKey:
        pass


@common
@given(flips(SECRET_BYTES))
def test_secret_key_parser(data):
    try:
        SecretKeyFile.from_bytes(data).decrypt(None)
    except (MalformedKey, PassphraseUnavailable):  # the latter: an edit that turned on encryption
        pass


@common
@given(flips(ROOT_BYTES))
def test_trust_root_parser_and_anchor(data):
    try:
        root = TrustRoot.from_bytes(data)
    except MalformedTrustRoot:
        return
    assert TrustRoot.from_bytes(root.to_bytes()) == root
    try:
        trust_anchor(RootCandidate(raw=data, signatures=[Signature.from_bytes(SIGNATURE_BYTES)]))
    except UpdateError:
        pass
    else:
        assert data == ROOT_BYTES  # only the signed bytes themselves can be trusted


@common
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=30))
def test_trust_root_parser_on_arbitrary_json(value):
    import json
    try:
        TrustRoot.from_bytes(json.dumps(value).encode())
    except MalformedTrustRoot:
        pass


def test_deeply_nested_and_oversized_documents_are_refused():
    import pytest
    with pytest.raises(MalformedTrustRoot, match="nested too deeply"):
        TrustRoot.from_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(MalformedTrustRoot, match="larger than the"):
        TrustRoot.from_bytes(b" " * (2 << 20))
    with pytest.raises(MalformedTrustRoot, match="duplicate key 'version'"):
        TrustRoot.from_bytes(ROOT_BYTES.replace(b'"version": 1', b'"version": 1, "version": 2'))
