"""The device key (agent/identity.py) and ``bundle-agent identity``: made once, mode 0600, never
printed; its public file rebuilt from the secret after a power cut; its signatures count for no
bundle and no trust root; the real minisign verifies what it signs."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess

import pytest

from agent.audit import AuditLog
from agent.identity import (PUBLIC_FILE, SECRET_FILE, DamagedIdentity, NoIdentity, ensure_identity, load_identity,
                            sign_report)
from agent.state_dir import StateDir
from agent.verify import verify_bundle
from keys.errors import ThresholdNotMet
from keys.minisign import PublicKey
from keys.rotation import RootCandidate, accept_next, trust_anchor
from keys.threshold import check_threshold
from tests.sim.device import Cabinet
from tests.test_json_output import schema_errors


@pytest.fixture
def state(tmp_path) -> StateDir:
    return StateDir(tmp_path / "state")


def _records(audit: AuditLog, event: str) -> list[dict]:
    return [r for r in audit.newest() if r["event"] == event]


def test_identity_is_made_once_private_and_published_as_minisign_key(state):
    audit = AuditLog(state.root / "audit.log")
    public_key = ensure_identity(state, audit)
    secret = state.identity / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.identity.stat().st_mode) == 0o700
    assert len(secret.read_bytes()) == 32
    published = (state.identity / PUBLIC_FILE).read_bytes()
    assert PublicKey.from_bytes(published) == public_key == load_identity(state)
    # The key id is derived from the key (docs/AGENT.md): the public file can always be rebuilt.
    assert public_key.key_id == hashlib.blake2b(public_key.key, digest_size=64).digest()[:8]
    assert ensure_identity(state, audit) == public_key  # idempotent: the same key, no second record
    assert [r["key_id"] for r in _records(audit, "identity-created")] == [public_key.id]


def test_a_torn_or_missing_public_file_is_rebuilt_from_the_secret(state):
    public_key = ensure_identity(state)
    public_path = state.identity / PUBLIC_FILE
    public_path.write_bytes(public_path.read_bytes()[:20])  # what a power cut mid-write could leave
    assert ensure_identity(state) == public_key
    assert public_path.read_bytes() == public_key.to_bytes()
    public_path.unlink()  # a power cut between the secret and the public file
    assert ensure_identity(state) == public_key and public_path.read_bytes() == public_key.to_bytes()


def test_a_temporary_secret_left_by_a_killed_writer_is_removed(state):
    state.identity.mkdir(parents=True)
    stale = state.identity / f".{SECRET_FILE}.tmp-{2 ** 22 + 12345}"  # no such process
    stale.write_bytes(os.urandom(32))
    ensure_identity(state)
    assert not stale.exists()


def test_a_widened_mode_is_narrowed_again(state):
    ensure_identity(state)
    (state.identity / SECRET_FILE).chmod(0o644)
    ensure_identity(state)
    assert stat.S_IMODE((state.identity / SECRET_FILE).stat().st_mode) == 0o600


def test_no_identity_and_a_damaged_one_are_told_apart(state):
    with pytest.raises(NoIdentity) as missing:
        load_identity(state)
    assert "--create" in missing.value.hint
    ensure_identity(state)
    (state.identity / SECRET_FILE).write_bytes(b"short")
    with pytest.raises(DamagedIdentity, match="5 bytes"):
        load_identity(state)
    with pytest.raises(DamagedIdentity):
        ensure_identity(state)  # never replaced silently: the vendor registered the old key


# --- the device key signs reports, and counts for nothing else ----------------------------------


def test_device_signature_meets_no_bundle_or_trust_root_threshold(state, keyring):
    ensure_identity(state)
    root = keyring.root(1, ["root1"], 1, signers=["rel1"], threshold=1)
    anchor = trust_anchor(keyring.candidate(root, ["root1"]))
    manifest = b'{"type": "manifest"}'
    signature = sign_report(state, manifest, "SN0001", 1)
    # In no role: ignored as an unknown key, never an error and never counted (T-UNKNOWN).
    result = check_threshold(manifest, [signature], root.release_signers, role_name="release signers")
    assert not result.met and result.unknown == (signature.key_id_text,)
    with pytest.raises(ThresholdNotMet):
        verify_bundle(manifest, [signature], anchor)
    rotated = root.rotated(threshold=1)
    raw = rotated.to_bytes()
    with pytest.raises(ThresholdNotMet, match="root keys"):
        accept_next(anchor, RootCandidate(raw=raw, signatures=[sign_report(state, raw, "SN0001", 2)],
                                          where="root-2.json"))


def test_minisign_verifies_what_the_device_key_signs(state, minisign, tmp_path):
    ensure_identity(state)
    data = b'{"type": "device-report"}\n'
    signature = sign_report(state, data, "SN0001", 7)
    report = tmp_path / "r.json"
    report.write_bytes(data)
    (tmp_path / "r.json.minisig").write_bytes(signature.to_bytes())
    result = subprocess.run([minisign, "-Vm", report, "-p", state.identity / PUBLIC_FILE], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Trusted comment: bundle device report serial=SN0001 counter=7" in result.stdout
    report.write_bytes(data.replace(b"device", b"devic3"))
    assert subprocess.run([minisign, "-Vm", report, "-p", state.identity / PUBLIC_FILE],
                          capture_output=True, timeout=60).returncode != 0


# --- bundle-agent identity ---------------------------------------------------------------------------


@pytest.fixture
def machine(world, tmp_path) -> Cabinet:
    """A configured machine with no device key (as one provisioned before this version)."""
    return Cabinet(world, tmp_path / "device", serial="SN:0042")


def test_identity_command_without_a_key_says_how_to_make_one(machine):
    result = machine.agent("identity")
    assert result.returncode == 1
    assert "no device key" in result.stderr and "bundle-agent identity --create" in result.stderr


def test_identity_create_prints_what_the_registry_needs_and_never_the_secret(machine):
    result = machine.agent("identity", "--create", check=True)
    secret = (machine.dir / "state/identity" / SECRET_FILE).read_bytes()
    public_key = PublicKey.from_bytes((machine.dir / "state/identity" / PUBLIC_FILE).read_bytes())
    assert f"created the device key {public_key.id}" in result.stdout
    assert "serial SN:0042" in result.stdout and "SN:0042.pub" in result.stdout
    assert public_key.to_base64() in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines())
    again = machine.agent("identity", "--create", check=True)
    assert "created" not in again.stdout  # the key is made once
    assert [r for r in (machine.agent("log", "--json", check=True).stdout,)
            if json.loads(r)["records"][0]["event"] == "identity-created"]
    pub = machine.agent("identity", "--pub", check=True).stdout
    assert PublicKey.from_bytes(pub.encode()) == public_key
    document = json.loads(machine.agent("identity", "--json", check=True).stdout)
    assert not schema_errors("identity.schema.json", document), schema_errors("identity.schema.json", document)
    assert document["key_id"] == public_key.id and document["created"] is False
    for output in (result.stdout, again.stdout, pub, json.dumps(document)):
        assert secret.hex() not in output.lower() and secret.hex().upper() not in output


def test_a_power_cut_anywhere_in_identity_create_leaves_one_consistent_key(machine, tmp_path):
    """Killed (SIGKILL, as a power cut) at every crash point of ``identity --create``: the next
    run ends with one key whose public file matches its secret, and no secret lying around."""
    points = machine.crash_points("identity", "--create")
    assert any("device.key" in p for p in points) and any("device.pub" in p for p in points)
    for number in range(1, len(points) + 1):
        copy = machine.copy(tmp_path / f"cut-{number}")
        assert copy.agent("identity", "--create", crash_at=number).returncode == -9
        copy.agent("identity", "--create", check=True)
        identity = copy.dir / "state/identity"
        state = StateDir(copy.dir / "state")
        assert (identity / PUBLIC_FILE).read_bytes() == load_identity(state).to_bytes(), points[number - 1]
        assert sorted(os.listdir(identity)) == sorted([PUBLIC_FILE, SECRET_FILE]), points[number - 1]
