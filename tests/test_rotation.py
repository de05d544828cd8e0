"""Trust-root rotation rules, table-driven like python-tuf's test_updater_key_rotations.py.

Each case starts from a trusted version 1 (root keys r1, r2; threshold 2) and offers the listed
roots in order. A root is (version, root keys, root threshold, revoked, signed by).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from keys.errors import MalformedTrustRoot, Refused, RotationRefused, ThresholdNotMet
from keys.rotation import RootCandidate, accept_next, trust_anchor, walk_chain
from keys.threshold import check_threshold


@dataclass
class R:
    version: int
    root_keys: tuple
    root_threshold: int
    revoked: tuple = ()
    signed_by: tuple = ()
    signers: tuple = ("rel1", "rel2")


V1 = R(1, ("r1", "r2"), 2, signed_by=("r1", "r2"))


@dataclass
class Case:
    offered: list
    accepted_version: int | None = None  # None: refused
    error: type | None = None
    message: str = ""
    start: R = field(default_factory=lambda: V1)


CASES = {
    "old and new keys sign": Case([R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3"))], 2),
    "same keys, new threshold": Case([R(2, ("r1", "r2"), 1, (), ("r1", "r2"))], 2),
    "only old keys sign": Case([R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2"))], error=ThresholdNotMet,
                               message="signed by 1 of 2 required root keys of version 2"),
    "only new keys sign": Case([R(2, ("r3", "r4"), 2, ("r1", "r2"), ("r3", "r4"))], error=ThresholdNotMet,
                               message="signed by 0 of 2 required root keys of the trusted version 1"),
    "below old threshold": Case([R(2, ("r1", "r2", "r3"), 2, (), ("r1", "r3"))], error=ThresholdNotMet,
                                message="signed by 1 of 2 required root keys of the trusted version 1"),
    "skipped version": Case([R(3, ("r1", "r2"), 2, (), ("r1", "r2"))], error=RotationRefused,
                            message="versions 2..2 are missing"),
    "replayed older root": Case([R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3")), V1],
                                error=RotationRefused, message="older than the trusted version 2"),
    "fork of the trusted version": Case([R(1, ("r1", "r2"), 1, (), ("r1", "r2"))], error=RotationRefused,
                                        message="a different trust root claims the trusted version 1"),
    "identical root again": Case([V1], 1),
    "chain of four steps": Case([
        R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3")),
        R(3, ("r3", "r4"), 2, ("r1", "r2"), ("r2", "r3", "r4")),
        R(4, ("r4", "r5", "r6"), 2, ("r1", "r2", "r3"), ("r3", "r4", "r5")),
    ], 4),
    "broken link in a chain": Case([
        R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3")),
        R(3, ("r3", "r4"), 2, ("r1", "r2"), ("r3", "r4")),
    ], error=ThresholdNotMet, message="signed by 1 of 2 required root keys of the trusted version 2"),
    "revoked root key cannot sign a later rotation": Case([
        R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3")),
        R(3, ("r2", "r3"), 1, ("r1",), ("r1", "r2")),
    ], error=ThresholdNotMet, message="ignored, revoked: r1"),
    "un-revoking a key": Case([
        R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3")),
        R(3, ("r1", "r2", "r3"), 2, (), ("r2", "r3")),
    ], error=RotationRefused, message="un-revokes key r1 ("),
    "dropping a key without revoking it": Case([R(2, ("r2", "r3"), 2, (), ("r1", "r2", "r3"))],
                                               error=RotationRefused, message="drops key r1 ("),
}


def _candidate(keyring, spec: R) -> RootCandidate:
    root = keyring.root(spec.version, spec.root_keys, spec.root_threshold, spec.signers, 2, spec.revoked)
    return keyring.candidate(root, spec.signed_by)


@pytest.mark.parametrize("name", CASES)
def test_rotation_step_by_step(keyring, name):
    case = CASES[name]
    trusted = trust_anchor(_candidate(keyring, case.start))
    if case.error is None:
        for spec in case.offered:
            trusted = accept_next(trusted, _candidate(keyring, spec))
        assert trusted.version == case.accepted_version
        return
    with pytest.raises(case.error) as raised:
        for spec in case.offered:
            trusted = accept_next(trusted, _candidate(keyring, spec))
    assert case.message in str(raised.value)


def test_walk_chain_follows_versions_and_ignores_history(keyring):
    specs = CASES["chain of four steps"].offered
    candidates = [_candidate(keyring, s) for s in reversed(specs)] + [_candidate(keyring, V1)]
    trusted = trust_anchor(_candidate(keyring, V1))
    assert walk_chain(trusted, candidates).version == 4
    # A device already at version 3 ignores versions 1 and 2 on the stick (they are history).
    at_three = walk_chain(trusted, candidates[1:])
    assert walk_chain(at_three, candidates).version == 4


def test_walk_chain_stops_at_a_gap(keyring):
    specs = CASES["chain of four steps"].offered
    trusted = trust_anchor(_candidate(keyring, V1))
    assert walk_chain(trusted, [_candidate(keyring, specs[0]), _candidate(keyring, specs[2])]).version == 2


def test_walk_chain_refuses_two_roots_with_one_version(keyring):
    trusted = trust_anchor(_candidate(keyring, V1))
    a = _candidate(keyring, R(2, ("r2", "r3"), 2, ("r1",), ("r1", "r2", "r3")))
    b = _candidate(keyring, R(2, ("r1", "r2"), 1, (), ("r1", "r2")))
    with pytest.raises(RotationRefused, match="two different trust roots claim version 2"):
        walk_chain(trusted, [a, b])


def test_anchor_must_be_signed_by_its_own_threshold(keyring):
    with pytest.raises(ThresholdNotMet, match="signed by 1 of 2 required root keys of version 1"):
        trust_anchor(_candidate(keyring, R(1, ("r1", "r2"), 2, signed_by=("r1",))))


def test_revoked_signer_stays_revoked(keyring):
    """After version 2 drops rel1, its signatures count for nothing, and re-offering version 1
    (which lists rel1) cannot bring it back."""
    v2 = R(2, ("r1", "r2"), 2, ("rel1",), ("r1", "r2"), signers=("rel2", "rel3"))
    trusted = walk_chain(trust_anchor(_candidate(keyring, V1)), [_candidate(keyring, v2)])
    assert [k.name for k in trusted.root.revoked_keys] == ["rel1"]
    manifest = b"a bundle manifest"
    result = check_threshold(manifest, keyring.sign(manifest, ["rel1", "rel2"]), trusted.root.release_signers,
                             role_name="release signers", revoked=trusted.root.revoked_keys)
    assert [k.name for k in result.signed] == ["rel2"] and [k.name for k in result.revoked] == ["rel1"]
    assert walk_chain(trusted, [_candidate(keyring, V1)]) is trusted
    with pytest.raises(RotationRefused, match="older than the trusted version 2"):
        accept_next(trusted, _candidate(keyring, V1))


def test_rotated_refuses_to_re_add_a_revoked_key(keyring):
    v1 = keyring.root(1, ("r1", "r2"), 2)
    v2 = v1.rotated(remove_root_keys=[keyring.key("r1").id], add_root_keys=[keyring.key("r3")])
    assert [k.name for k in v2.revoked_keys] == ["r1"] and v2.version == 2
    with pytest.raises(Refused, match="was revoked by an earlier trust root"):
        v2.rotated(add_signers=[keyring.key("r1")])


def test_rotated_keeps_thresholds_and_refuses_impossible_ones(keyring):
    v1 = keyring.root(1, ("r1", "r2"), 2)
    with pytest.raises(Refused, match="threshold 2 must be between 1 and the number of keys"):
        v1.rotated(remove_root_keys=[keyring.key("r1").id])
    assert v1.rotated(remove_root_keys=[keyring.key("r1").id], root_threshold=1).root_keys.threshold == 1


def test_document_type_is_bound_into_the_signed_bytes(keyring):
    raw = keyring.root(1, ("r1",), 1).to_bytes().replace(b'"trust-root"', b'"bundle-manifest"')
    with pytest.raises(MalformedTrustRoot, match="document type is 'bundle-manifest'"):
        trust_anchor(RootCandidate(raw=raw, signatures=keyring.sign(raw, ["r1"])))
