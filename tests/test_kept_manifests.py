"""The signed manifests of what is installed, kept per environment (agent/kept.py, docs/AGENT.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from agent.format.bundle_dir import MANIFEST
from agent.trust_store import device_roots
from agent.kept import (KeptDamaged, KeptRecord, clean_orphans, environment_records,
                        keep_environment, keep_manifest, verified_kept)
from agent.medium import read_bundle
from agent.state_dir import StateDir
from tests.sim.device import Cabinet


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(cabinet: Cabinet, environment: str) -> dict:
    return json.loads((cabinet.dir / f"state/environments/{environment}.json").read_text())


def _state_dir(cabinet: Cabinet) -> StateDir:
    return StateDir(cabinet.dir / "state")


def _roots(cabinet: Cabinet) -> dict:
    return device_roots(cabinet.dir / "trust/root.json", cabinet.dir / "state/trust")


def test_provisioning_keeps_the_exact_signed_manifest_and_records_it(cabinet, world):
    bundle = world.bundles / "full-1"
    sha256 = _sha256(bundle / MANIFEST)
    record = _record(cabinet, "env-1")
    assert record == {"format": 1, "environment": "env-1",
                      "components": {name: {"manifest_sha256": sha256, "root_version": 1}
                                     for name in ("platform", "game/lucky-sevens")}}
    kept = cabinet.dir / "state/manifests" / sha256
    assert (kept / MANIFEST).read_bytes() == (bundle / MANIFEST).read_bytes()
    signatures = sorted(p.name for p in bundle.glob(MANIFEST + ".*.minisig"))
    assert len(signatures) == 2 and sorted(p.name for p in kept.glob("*.minisig")) == signatures
    for name in signatures:
        assert (kept / name).read_bytes() == (bundle / name).read_bytes()
    verified = verified_kept(_state_dir(cabinet), "env-1", _roots(cabinet))
    assert {n: (v.component.sequence, v.problem) for n, v in verified.items()} == \
        {"platform": (6, None), "game/lucky-sevens": (2, None)}


def test_an_install_records_its_trial_before_it_is_armed_and_commit_keeps_both(cabinet, world):
    cabinet.agent("install", world.bundles / "d12", check=True)
    d12 = _sha256(world.bundles / "d12" / MANIFEST)
    assert {r["manifest_sha256"] for r in _record(cabinet, "env-2")["components"].values()} == {d12}
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    assert sorted(p.name for p in (cabinet.dir / "state/environments").iterdir()) == ["env-1.json", "env-2.json"]


def test_a_failed_trial_takes_its_record_and_manifests_along(cabinet, world):
    cabinet.set_health(False)
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    assert cabinet.agent("boot-check").returncode == 3
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)  # removes the failed trial env-2
    assert not (cabinet.dir / "state/environments/env-2.json").exists()
    cabinet.agent("install", world.bundles / "full-1", check=True)  # nothing to do; cleans orphans first
    assert [p.name for p in (cabinet.dir / "state/manifests").iterdir()] == [_sha256(world.bundles / "full-1" /
                                                                                     MANIFEST)]


def test_a_pruned_environment_takes_its_record_along(cabinet, world, tmp_path):
    stick = world.stick(tmp_path / "stick", "d12")
    for command in (("on-insert", stick), ("boot",), ("boot-check",), ("rollback",), ("boot",), ("on-insert", stick),
                    ("boot",)):
        cabinet.agent(*command, check=True)
    assert cabinet.environments() == ["env-1", "env-2", "env-3"]
    cabinet.agent("boot-check", check=True)  # commits env-3; keep = 2 prunes env-2, rolled back from
    assert cabinet.environments() == ["env-1", "env-3"]
    assert sorted(p.name for p in (cabinet.dir / "state/environments").iterdir()) == ["env-1.json", "env-3.json"]


def test_orphans_and_interrupted_writes_are_cleaned_by_the_next_command(cabinet, world):
    state = cabinet.dir / "state"
    (state / "environments/env-9.json").write_text(json.dumps(_record(cabinet, "env-1")).replace("env-1", "env-9"))
    stray = state / "manifests" / ("0" * 64)
    stray.mkdir()
    (stray / MANIFEST).write_bytes(b"x")
    half = state / "manifests" / f".new-{'1' * 64}-4242"
    half.mkdir()
    cabinet.agent("install", world.bundles / "full-1", check=True)  # up to date: only the cleanup
    assert sorted(p.name for p in (state / "environments").iterdir()) == ["env-1.json"]
    assert [p.name for p in (state / "manifests").iterdir()] == [_sha256(world.bundles / "full-1" / MANIFEST)]


def test_a_new_environment_inherits_the_records_of_what_it_did_not_update(cabinet, world):
    state_dir = _state_dir(cabinet)
    d12 = read_bundle(world.bundles / "d12")
    inherited = {n: r for n, r in environment_records(state_dir, "env-1").items() if n != "platform"}
    keep_environment(state_dir, "env-7", {"platform": (d12.manifest_bytes, d12.signatures, 1)}, inherited)
    records = environment_records(state_dir, "env-7")
    assert records == {"platform": KeptRecord(d12.manifest_sha256, 1),
                       "game/lucky-sevens": environment_records(state_dir, "env-1")["game/lucky-sevens"]}
    verified = verified_kept(state_dir, "env-7", _roots(cabinet))
    assert verified["platform"].component.sequence == 7 and verified["game/lucky-sevens"].component.sequence == 2


def _one_kept(cabinet: Cabinet) -> Path:
    return next((cabinet.dir / "state/manifests").iterdir())


@pytest.mark.parametrize("damage, problem", [
    # The kept bytes changed: the name no longer matches.
    (lambda cabinet, world: (_one_kept(cabinet) / MANIFEST).write_bytes(b"forged"), "does not match its name"),
    # Another signed manifest's bytes, renamed to match: its signatures do not cover it.
    (lambda cabinet, world: _swap_in(cabinet, world), "does not verify"),
    # Signatures removed: below the release signers' threshold.
    (lambda cabinet, world: [p.unlink() for p in _one_kept(cabinet).glob("*.minisig")], "does not verify"),
    # A trust-root version this device never accepted.
    (lambda cabinet, world: _rewrite_record(cabinet, root_version=2), "never accepted"),
])
def test_what_is_kept_is_trusted_only_through_the_trust_root(cabinet, world, damage, problem):
    damage(cabinet, world)
    verified = verified_kept(_state_dir(cabinet), "env-1", _roots(cabinet))
    assert set(verified) == {"platform", "game/lucky-sevens"}
    for kept in verified.values():
        assert kept.component is None and problem in kept.problem, kept.problem


def _swap_in(cabinet: Cabinet, world) -> None:
    """The kept folder holds d12's manifest under full-1's signatures, record and folder renamed."""
    kept = _one_kept(cabinet)
    other = (world.bundles / "d12" / MANIFEST).read_bytes()
    (kept / MANIFEST).write_bytes(other)
    renamed = kept.with_name(hashlib.sha256(other).hexdigest())
    kept.rename(renamed)
    _rewrite_record(cabinet, manifest_sha256=renamed.name)


def _rewrite_record(cabinet: Cabinet, **fields) -> None:
    path = cabinet.dir / "state/environments/env-1.json"
    record = json.loads(path.read_text())
    for component in record["components"].values():
        component.update(fields)
    path.write_text(json.dumps(record))


@pytest.mark.parametrize("text", ["{", '{"format": 2, "environment": "env-1", "components": {}}',
                                  '{"format": 1, "environment": "env-2", "components": {}}',
                                  '{"format": 1, "environment": "env-1", "components": {"../x": {}}}',
                                  '{"format": 1, "environment": "env-1", "components": {"platform": '
                                  '{"manifest_sha256": "ab", "root_version": 1}}}'])
def test_a_damaged_record_is_reported_never_trusted(cabinet, text):
    (cabinet.dir / "state/environments/env-1.json").write_text(text)
    with pytest.raises(KeptDamaged):
        environment_records(_state_dir(cabinet), "env-1")


def test_keeping_is_idempotent_and_a_kept_folder_appears_whole(tmp_path, world):
    state_dir = StateDir(tmp_path / "state")
    bundle = read_bundle(world.bundles / "full-1")
    sha256 = keep_manifest(state_dir, bundle.manifest_bytes, bundle.signatures)
    assert keep_manifest(state_dir, bundle.manifest_bytes, bundle.signatures) == sha256 == bundle.manifest_sha256
    assert [p.name for p in state_dir.manifests.iterdir()] == [sha256]  # no temporary left beside it
    kept = state_dir.manifests / sha256
    for altered in (kept / MANIFEST, next(kept.glob("*.minisig"))):
        original = altered.read_bytes()
        altered.write_bytes(b"altered")
        keep_manifest(state_dir, bundle.manifest_bytes, bundle.signatures)  # kept again, whole
        assert altered.read_bytes() == original
    assert [p.name for p in state_dir.manifests.iterdir()] == [sha256]
    assert clean_orphans(state_dir, set()) == [f"manifests/{sha256}"]  # no record names it


def test_device_roots_walks_only_the_accepted_chain(cabinet):
    trust = cabinet.dir / "state/trust"
    trust.mkdir()
    shutil.copy(cabinet.dir / "trust/root.json", trust / "root-3.json")  # not a successor: ignored
    assert sorted(_roots(cabinet)) == [1]

