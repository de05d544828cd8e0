"""History and rollback follow the identities the backend reports, never names alone.

On an A/B device (tests/sim/ab_slots.py) every update overwrites the inactive slot: slot ``a``,
committed with release 1, holds release 3 two updates later. A rollback that trusted the name
would boot release 3 while the agent believed release 1 was running.
"""

from __future__ import annotations

import shutil

import pytest

from agent.boot import BACKENDS
from agent.device import Device
from agent.install import install, provision
from agent.lifecycle import boot, boot_check, rollback, status
from keys.errors import Refused
from tests.sim.ab_slots import AbSlotsBackend
from tests.sim.device import Cabinet
from tests.sim.tools import run_cli


@pytest.fixture
def ab_device(world, tmp_path, monkeypatch) -> Device:
    monkeypatch.setitem(BACKENDS, AbSlotsBackend.name, AbSlotsBackend)  # one registry line, as a new backend is
    cabinet = Cabinet(world, tmp_path / "device")
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text().replace('backend = "dirs"\nroot = "/envs"', 'backend = "ab-slots"\nroot = "/slots"'))
    return Device.open(cabinet.config)


def _release_3(world, tmp_path):
    """Release 2 with the platform patched once more (13.2.2, sequence 8)."""
    tree = tmp_path / "r3"
    shutil.copytree(world.dir / "r2", tree, symlinks=True)
    (tree / "platform/etc/cabinet.conf").write_bytes(b"payout_table = standard\naudit = strict\nr3 = 1\n")
    toml = tree / "release.toml"
    toml.write_text(toml.read_text().replace('version = "13.2.1"\nsequence = 7', 'version = "13.2.2"\nsequence = 8'))
    out = tmp_path / "full-3"
    run_cli("bundle", "make", "--release", toml, "--out", out, "--level", "3",
            "--key", world.keys / "rel1.key", "--key", world.keys / "rel2.key", check=True)
    return out


def _update(device: Device, bundle) -> None:
    install(device, bundle)
    boot(device)
    boot_check(device)


def test_a_rollback_never_goes_to_a_slot_whose_content_was_replaced(ab_device, world, tmp_path):
    provision(ab_device, world.bundles / "full-1")
    boot(ab_device)
    _update(ab_device, world.bundles / "full-2")  # into b
    _update(ab_device, _release_3(world, tmp_path))  # into a again: a's release 1 is gone
    state = status(ab_device)
    assert state["committed_environment"] == "a" and state["components"]["platform"]["version"] == "13.2.2"
    assert {e["name"]: e["identity"] for e in state["environments"]} == {"a": "a#2", "b": "b#1"}
    assert state["history"] == ["a", "b"]

    rollback(ab_device)  # to b: its identity is still the one committed
    boot(ab_device)
    assert status(ab_device)["components"]["platform"]["version"] == "13.2.1"

    before = status(ab_device)
    with pytest.raises(Refused, match="a holds another environment than the one committed there"):
        rollback(ab_device)  # the history's "a" held release 1; the slot a now holds release 3
    after = status(ab_device)
    assert after["committed_environment"] == "b" and after["environments"] == before["environments"]


def test_a_slot_backend_is_never_pruned_and_updates_alternate(ab_device, world, tmp_path):
    provision(ab_device, world.bundles / "full-1")
    boot(ab_device)
    _update(ab_device, world.bundles / "full-2")
    _update(ab_device, _release_3(world, tmp_path))
    # keep = 2 prunes only environments the agent named (env-N); slots are the device's own.
    assert [e["name"] for e in status(ab_device)["environments"]] == ["a", "b"]
