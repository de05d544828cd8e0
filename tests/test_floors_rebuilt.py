"""Anti-rollback floors survive a damaged or deleted state (agent/floors.py, docs/AGENT.md, T-ROLLBACK).

The story of issue 13: the state file is damaged, ``status`` moves it aside, ``install`` says to
provision, and provisioning an older full bundle used to put the floors back with no warning.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent import install
from agent.device import Device
from agent.floors import rebuilt_floors
from keys.errors import Refused
from tests.sim.device import Cabinet

R1 = {"platform": 6, "game/lucky-sevens": 2}
R2 = {"platform": 7, "game/lucky-sevens": 3, "game/fortune-wheel": 1}


@pytest.fixture
def committed_r2(cabinet, world) -> Cabinet:
    """Provisioned with release 1, then release 2 installed, booted and committed (floors at R2)."""
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    assert cabinet.committed()["floors"] == R2
    return cabinet


def _lose_state(cabinet: Cabinet, how: str) -> None:
    state = cabinet.dir / "state/state.json"
    if how == "damaged":
        state.write_text("{ not json")
        result = cabinet.agent("status")  # moves it aside, as in the issue
        assert result.returncode == 3 and "moved to state.json.corrupt-1" in result.stderr
    else:
        state.unlink()


def _device_view(cabinet: Cabinet) -> tuple:
    return cabinet.environments(), cabinet.boot_record()


@pytest.mark.parametrize("how", ["damaged", "deleted"])
def test_a_lost_state_never_opens_provisioning_without_a_token(committed_r2, world, how):
    _lose_state(committed_r2, how)
    result = committed_r2.agent("install", world.bundles / "d12")
    assert result.returncode == 3 and "has environments (env-1, env-2) but no usable state" in result.stderr
    assert "technician token" in result.stderr
    before = _device_view(committed_r2)
    result = committed_r2.agent("provision", world.bundles / "full-1")
    assert result.returncode == 3, result.stdout + result.stderr
    assert 'needs a technician token allowing "provision"' in result.stderr
    assert _device_view(committed_r2) == before
    assert not (committed_r2.dir / "state/state.json").exists()


@pytest.fixture
def token_allows(monkeypatch):
    """A technician token allowing "provision" (made and verified by agent/tokens.py, tested there)."""
    spent = []
    monkeypatch.setattr(install, "authorise_provision", lambda device, medium: "token")
    monkeypatch.setattr(install, "_spend_provision_token", lambda device, token: spent.append(token))
    return spent


@pytest.mark.parametrize("how", ["damaged", "deleted"])
def test_with_a_token_provisioning_starts_from_the_floors_the_kept_manifests_vouch_for(committed_r2, world,
                                                                                      token_allows, how):
    _lose_state(committed_r2, how)
    device = Device.open(committed_r2.config)
    before = _device_view(committed_r2)
    with pytest.raises(install.NothingInstallable, match="older than sequence 7"):
        install.provision(device, world.bundles / "full-1")  # release 1 is below the rebuilt floors
    assert _device_view(committed_r2) == before and token_allows == []
    report = install.provision(device, world.bundles / "full-2")
    assert report.outcome == "provisioned" and token_allows == ["token"]
    assert committed_r2.committed()["floors"] == R2
    assert json.loads((committed_r2.dir / "state/environments" / f"{report.environment}.json").read_text())[
        "components"].keys() == R2.keys()


@pytest.fixture(scope="module")
def full_2_without_the_wheel(world) -> Path:
    """Release 2's platform and Lucky Sevens, without Fortune Wheel: a full bundle."""
    release = world.dir / "r2-no-wheel"
    shutil.copytree(world.dir / "r2/platform", release / "platform", symlinks=True)
    shutil.copytree(world.dir / "r2/games/lucky-sevens", release / "games/lucky-sevens")
    text = world.release("r2").read_text()
    (release / "release.toml").write_text(text[:text.index('[components."game/fortune-wheel"]')])
    return world.make("full-2-no-wheel", "r2-no-wheel")


def test_provisioning_keeps_floors_of_components_the_new_bundle_lacks(committed_r2, full_2_without_the_wheel,
                                                                      token_allows):
    _lose_state(committed_r2, "deleted")
    install.provision(Device.open(committed_r2.config), full_2_without_the_wheel)
    assert committed_r2.committed()["floors"] == R2  # the wheel's floor stays at 1


@pytest.mark.parametrize("steps, floors", [
    ([], R1),  # only env-1, committed
    ([("install", "d12")], R1),  # env-2 armed for its trial only (T without R): it raises no floor
    ([("install", "d12"), ("boot",)], R2),  # the trial runs: counted, erring towards refusing a downgrade
    ([("install", "d12"), ("boot",), ("boot-check",)], R2),  # committed
])
def test_floors_are_rebuilt_from_every_environment_but_an_armed_trial(cabinet, world, steps, floors):
    for step in steps:
        cabinet.agent(*[world.bundles / part if part == "d12" else part for part in step], check=True)
    assert rebuilt_floors(Device.open(cabinet.config)) == floors


def test_only_what_the_trust_root_vouches_for_raises_a_floor(committed_r2):
    for kept in (committed_r2.dir / "state/manifests").iterdir():
        for signature in kept.glob("*.minisig"):
            signature.unlink()
    device = Device.open(committed_r2.config)
    assert rebuilt_floors(device) == {}
    assert rebuilt_floors(device, {"platform": 5}) == {"platform": 5}  # what is known is never lowered


def test_a_damaged_record_adds_nothing_and_breaks_nothing(committed_r2):
    (committed_r2.dir / "state/environments/env-2.json").write_text("{")
    assert rebuilt_floors(Device.open(committed_r2.config)) == R1


def test_without_a_token_on_the_medium_authorise_provision_refuses(cabinet):
    with pytest.raises(Refused, match="technician token allowing \"provision\""):
        install.authorise_provision(Device.open(cabinet.config), cabinet.dir)
