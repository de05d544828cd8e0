"""The device agent end to end: real bundles, real sticks, real processes (docs/AGENT.md)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from agent.layout import Layout
from agent.state import FORMAT as STATE_FORMAT, StateStore
from agent.state_dir import RESULT_FILE, StateDir
from tests.sim.device import STAGED, Cabinet
from tests.sim.tools import BIN, run_cli


def test_agent_issue_scenario_verbatim(world, tmp_path):
    """The device-agent issue's scenario, as written."""
    stick = world.stick(tmp_path / "stick", "full-1", "d12")
    device = tmp_path / "D"
    device.mkdir()
    (device / "health").write_text("#!/bin/sh\nexit 0\n")
    (device / "health").chmod(0o755)
    script = r"""
set -e
cat > $D/agent.toml <<CONF
[device]
product = "demo-cabinet"
hardware = "cab-a"
serial = "SN0001"
state_dir = "$D/state"
[trust]
root = "$K/root.json"
[boot]
backend = "dirs"
root = "$D/envs"
[health]
hooks = ["$D/health"]
CONF
A="bundle-agent --config $D/agent.toml"
$A provision $B/full-1
$A boot                                   # prints the environment to run
$A on-insert $S || [ $? -eq 4 ]          # stages the delta, trial pending: exit 4
$A status --json > $D/pending.json        # shows the pending trial
$A boot && $A boot-check                  # trial boot, healthy: committed
$A status --json > $D/committed.json      # platform and games at R2's versions and sequences
"""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "D": str(device),
           "K": str(world.keys), "B": str(world.bundles), "S": str(stick)}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    pending = json.loads((device / "pending.json").read_text())
    assert pending["pending"]["phase"] == "trial" and pending["pending"]["environment"] == "env-2"
    assert {e["name"]: e["flags"] for e in pending["environments"]} == {"env-1": "NR", "env-2": "T"}
    committed = json.loads((device / "committed.json").read_text())
    assert committed["components"] == {"platform": {"version": "13.2.1", "sequence": 7},
                                       "game/lucky-sevens": {"version": "2.0", "sequence": 3},
                                       "game/fortune-wheel": {"version": "1.0", "sequence": 1}}
    assert committed["pending"] is None
    assert {e["name"]: e["flags"] for e in committed["environments"]} == {"env-1": "", "env-2": "NR"}
    # The committed environment holds exactly release 2's trees.
    from agent.format.tree import tree_digest
    from agent.scan import scan_tree
    env2 = device / "envs/env-2"
    assert tree_digest(scan_tree(env2 / "platform")) == tree_digest(scan_tree(world.dir / "r2/platform"))


def _refused_unchanged(cabinet: Cabinet, medium: Path, message: str, code: int = 3) -> None:
    before = cabinet.snapshot()
    result = cabinet.agent("install", medium)
    assert result.returncode == code, result.stdout + result.stderr
    assert message in result.stdout + result.stderr, result.stdout + result.stderr
    assert cabinet.snapshot() == before


def test_wrong_product_and_hardware(world, tmp_path):
    cases = [("product", "other-cabinet", "is for product demo-cabinet, this machine is other-cabinet"),
             ("hardware", "cab-z", "is for hardware cab-a, cab-b, this machine is cab-z")]
    for setting, value, message in cases:
        cabinet = Cabinet(world, tmp_path / setting, **{setting: value})
        result = cabinet.agent("provision", world.bundles / "full-1")
        assert result.returncode == 3 and message in result.stderr
        assert not (tmp_path / setting / "envs").exists() or not any((tmp_path / setting / "envs").iterdir())
    # A provisioned machine given a bundle for other hardware: nothing to install, nothing changed.
    other = Cabinet(world, tmp_path / "cab-a")
    other.provision()
    (other.dir / "agent.toml").write_text((other.dir / "agent.toml").read_text().replace('"cab-a"', '"cab-z"'))
    before = other.snapshot()
    result = other.agent("install", world.bundles / "full-2")
    assert result.returncode == 0 and "this machine is cab-z" in result.stdout
    assert other.snapshot() == before


def test_same_release_again_is_a_no_op(cabinet, world):
    before = cabinet.snapshot()
    result = cabinet.agent("install", world.bundles / "full-1")
    assert result.returncode == 0 and "this machine is up to date" in result.stdout
    assert cabinet.snapshot() == before


def test_replayed_older_bundle_is_refused(cabinet, world, tmp_path):
    cabinet.agent("install", world.bundles / "full-2", check=True)
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    before = cabinet.snapshot()
    result = cabinet.agent("install", world.bundles / "full-1")
    assert result.returncode == 0, result.stderr
    assert "older than the installed sequence 7" in result.stdout and "replayed" in result.stdout
    assert cabinet.snapshot() == before


def test_delta_for_another_base_is_not_applied(world, tmp_path):
    cabinet = Cabinet(world, tmp_path / "dev")
    cabinet.agent("provision", world.bundles / "full-2", check=True)
    cabinet.agent("boot", check=True)
    before = cabinet.snapshot()
    result = cabinet.agent("install", world.bundles / "d12")
    assert result.returncode == 0 and "this machine is up to date" in result.stdout
    assert cabinet.snapshot() == before


def test_full_bundle_on_the_same_stick_is_used_when_the_delta_does_not_fit(world, tmp_path):
    stick = world.stick(tmp_path / "stick", "d12", "full-2")
    fresh = Cabinet(world, tmp_path / "dev")
    fresh.agent("provision", stick, check=False)  # d12 is a delta: only full-2's components qualify
    status = fresh.status()
    assert status["components"]["platform"]["sequence"] == 7


def test_signatures_below_threshold_refused_before_writing(cabinet, world, tmp_path):
    one = world.make("d12-one-signer", "r2", "r1", ("rel1",))
    _refused_unchanged(cabinet, one, "signed by 1 of 2 required release signers")


def test_flipped_byte_in_a_volume_found_before_anything_is_written(cabinet, world, tmp_path):
    copy = tmp_path / "d12"
    shutil.copytree(world.bundles / "d12", copy)
    volume = next((copy / "payload").iterdir())
    data = bytearray(volume.read_bytes())
    data[len(data) // 3] ^= 0x10
    volume.write_bytes(bytes(data))
    _refused_unchanged(cabinet, copy, "does not match its hash")
    assert "staging" not in (cabinet.dir / "state/audit.log").read_text()


def _stick_with_a_tampered_manifest(world, path: Path) -> Path:
    stick = world.stick(path, "d12")
    manifest = next((stick / "demo-cabinet/bundles").iterdir()) / "manifest.json.zst"
    data = bytearray(manifest.read_bytes())
    data[40] ^= 1
    manifest.write_bytes(bytes(data))
    return stick


def test_tampered_manifest_on_a_stick_is_refused(cabinet, world, tmp_path):
    _refused_unchanged(cabinet, _stick_with_a_tampered_manifest(world, tmp_path / "stick"), "COMPLETE marker")


def test_root_rotation_carried_on_the_stick(cabinet, world, tmp_path):
    keys = world.keys
    rotated = tmp_path / "root-2.json"
    run_cli("bundle", "root", "rotate", "--from", world.root, "--out", rotated, "--remove-signer", "rel1",
            "--add-signer", keys / "rel3.pub", check=True)
    for name in ("root1", "root2"):
        run_cli("bundle", "root", "sign", rotated, "--key", keys / f"{name}.key", check=True)
    # Signed by rel1 (revoked by root 2) and rel2: the stick also carries root 2, so it is refused,
    # though root 1 alone would accept it. (bundle write refuses that combination, so lay it by hand.)
    stick = world.stick(tmp_path / "stick", "d12")
    trust = stick / "demo-cabinet/trust"
    for path in [rotated, *tmp_path.glob("root-2.json.*.minisig")]:
        shutil.copy(path, trust / path.name)
    before = cabinet.snapshot()
    result = cabinet.agent("install", stick)
    assert result.returncode == 3 and "revoked: rel1" in result.stderr, result.stderr
    assert cabinet.snapshot()[0] == before[0]
    assert (cabinet.dir / "state/trust/root-2.json").read_bytes() == rotated.read_bytes()
    # A bundle signed by rel2 and rel3 is accepted under root 2 - even from a stick without roots.
    good = world.make("d12-rel3", "r2", "r1", ("rel2", "rel3"))
    result = cabinet.agent("install", good)
    assert result.returncode == STAGED, result.stdout + result.stderr
    assert cabinet.status()["pending"]["phase"] == "trial"


def _rotation_to_root_2(world, directory: Path) -> Path:
    rotated = directory / "root-2.json"
    run_cli("bundle", "root", "rotate", "--from", world.root, "--out", rotated, "--remove-signer", "rel1",
            "--add-signer", world.keys / "rel3.pub", check=True)
    for name in ("root1", "root2"):
        run_cli("bundle", "root", "sign", rotated, "--key", world.keys / f"{name}.key", check=True)
    return rotated


def _stick_with_root_2(world, directory: Path) -> tuple[Path, list[Path]]:
    """A stick with d12 and the genuine rotation to root 2; root 2's signature files as made."""
    rotated = _rotation_to_root_2(world, directory)
    stick = world.stick(directory / "stick", "d12")
    signatures = sorted(directory.glob("root-2.json.*.minisig"))
    for path in [rotated, *signatures]:
        shutil.copy(path, stick / "demo-cabinet/trust" / path.name)
    return stick, signatures


def _forged(signature_file: Path) -> bytes:
    """The same key's signature with its signature bytes changed: well formed, and failing."""
    lines = signature_file.read_bytes().split(b"\n")
    raw = bytearray(base64.b64decode(lines[1]))
    raw[20] ^= 0xFF  # within the 64 signature bytes, after "ED" and the 8-byte key id
    lines[1] = base64.b64encode(bytes(raw))
    return b"\n".join(lines)


def test_a_forged_signature_beside_a_rotation_is_never_stored_in_place_of_the_good_one(cabinet, world, tmp_path):
    """A stick adds, beside a genuine root-2.json and its signatures, a failing signature by one
    of its root keys under minisign's default name. The rotation is accepted on the good ones;
    only those are stored, so the device's chain still verifies afterwards."""
    stick, signatures = _stick_with_root_2(world, tmp_path)
    trust = stick / "demo-cabinet/trust"
    (trust / "root-2.json.minisig").write_bytes(_forged(signatures[0]))  # read after the good ones
    cabinet.agent("install", stick)
    stored = cabinet.dir / "state/trust"
    assert sorted(p.name for p in stored.glob("root-2.json*")) == ["root-2.json", *(p.name for p in signatures)]
    assert all((stored / p.name).read_bytes() == p.read_bytes() for p in signatures)
    status = cabinet.agent("technician", "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["trust_root_version"] == 2, status.stderr


def test_a_forged_signature_beside_a_bundle_is_not_kept_with_its_manifest(cabinet, world, tmp_path):
    """Kept manifests verify later (audit, floors after a lost state): only the signatures that
    counted are kept, so a failing one a stick added cannot make them unverifiable."""
    stick = world.stick(tmp_path / "stick", "d12")
    bundle = next((stick / "demo-cabinet/bundles").iterdir())
    good = sorted(bundle.glob("manifest.json.zst.*.minisig"))
    (bundle / "manifest.json.zst.minisig").write_bytes(_forged(good[0]))
    assert cabinet.agent("install", stick).returncode == STAGED
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    kept = [folder for folder in (cabinet.dir / "state/manifests").iterdir()
            if (folder / "manifest.json.zst").read_bytes() == (bundle / "manifest.json.zst").read_bytes()]
    assert sorted(p.name for p in kept[0].iterdir()) == ["manifest.json.zst", *(p.name for p in good)]
    audit = cabinet.agent("technician", "audit", "--json")
    assert audit.returncode == 0 and json.loads(audit.stdout)["clean"] is True, audit.stdout


def test_a_signature_file_named_for_another_key_refuses_the_stick(cabinet, world, tmp_path):
    stick, signatures = _stick_with_root_2(world, tmp_path)
    trust = stick / "demo-cabinet/trust"
    (trust / "root-2.json.FFFFFFFFFFFFFFF0.minisig").write_bytes(_forged(signatures[0]))
    result = cabinet.agent("install", stick)
    assert result.returncode == 3 and "is named for key FFFFFFFFFFFFFFF0 but holds a signature by key" in result.stderr
    assert not (cabinet.dir / "state/trust/root-2.json").exists()


def test_trial_crash_before_boot_check_returns_to_the_old_environment(cabinet, world):
    old = cabinet.snapshot()[0]
    cabinet.agent("install", world.bundles / "d12", check=True)
    trial = cabinet.agent("boot", check=True).stdout.strip()
    assert trial.endswith("env-2")
    # The trial crashes: no boot-check. The next boot lands in the old environment by itself.
    again = cabinet.agent("boot", check=True).stdout.strip()
    assert again.endswith("env-1")
    result = cabinet.agent("boot-check", check=True)
    assert "did not reach its health check" in result.stdout
    status = cabinet.status()
    assert status["components"]["platform"]["sequence"] == 6 and status["pending"] is None
    assert status["last_result"]["outcome"] == "trial failed"
    assert cabinet.snapshot()[0] == old


@pytest.mark.parametrize("hook, said", [
    ("printf 'bad \\377 byte\\n'; exit 1", "exit 1: bad \\xff byte"),
    ("head -c 64000000 /dev/zero | tr '\\0' x; echo; echo 'the last line'; exit 2", "exit 2: the last line"),
    ("(sleep 60 &); echo 'left a child'; exit 3", "exit 3: left a child"),
], ids=["not-utf-8", "output-without-end", "a-child-holds-its-output"])
def test_whatever_a_failing_hook_prints_it_is_rolled_back_with_its_last_line(cabinet, world, hook, said):
    """The hook is the release's own program: its output is an answer, never a crash of the
    agent that would leave the trial running undecided."""
    cabinet.health.write_text(f"#!/bin/sh\n{hook}\n")
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    result = cabinet.agent("boot-check")
    assert result.returncode == 3 and said in result.stderr, result.stderr
    assert cabinet.status()["last_result"]["outcome"] == "rolled back"


def test_failing_health_hook_rolls_back(cabinet, world):
    cabinet.set_health(False)
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    result = cabinet.agent("boot-check")
    assert result.returncode == 3 and "failed its health check" in result.stderr
    assert "exit 7" in result.stderr
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")
    status = cabinet.status()
    assert status["components"]["platform"]["sequence"] == 6
    assert status["last_result"]["outcome"] == "rolled back"


def test_corrupt_state_is_quarantined_and_refuses_installs(cabinet, world):
    (cabinet.dir / "state/state.json").write_text("{ not json")
    result = cabinet.agent("install", world.bundles / "d12")
    assert result.returncode == 3 and "moved to state.json.corrupt-1" in result.stderr
    assert (cabinet.dir / "state/state.json.corrupt-1").exists()
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")  # booting goes on


def test_interrupted_staging_is_cleaned_up(cabinet, world):
    (cabinet.dir / "envs/env-2").mkdir()
    (cabinet.dir / "envs/env-2/half-written").write_text("x")
    journal = {"format": 1, "pending": {"phase": "staging", "environment": "env-2", "previous": "env-1"}}
    (cabinet.dir / "state/journal.json").write_text(json.dumps(journal))
    result = cabinet.agent("install", world.bundles / "d12", check=True)
    assert "staged" in result.stdout
    log = (cabinet.dir / "state/audit.log").read_text()
    assert '"event": "cleaned-up"' in log and '"environment": "env-2"' in log
    assert not (cabinet.dir / "envs/env-2/half-written").exists()


def _patched_from(bundle: Path) -> tuple[str, str]:
    """A component of ``bundle`` and a base file one of its files is patched from."""
    manifest = Manifest.from_stored(manifest_path(bundle).read_bytes())
    return next((c.name, chunk.prefix.path) for c in manifest.components for e in c.entries for chunk in e.chunks
                if chunk.prefix is not None)


@pytest.mark.parametrize("kept", [True, False])
def test_a_running_file_unlike_the_installed_one_is_named(cabinet, world, kept):
    """A delta does not carry the hashes of the base files it patches: the device names the one
    that differs from the manifest it kept of the installed release, and without that manifest
    names the files the failed one was patched from. The running environment stays as it was."""
    component, path = _patched_from(world.bundles / "d12")
    running = cabinet.dir / "envs/env-1" / Layout().component_path(component) / path
    altered = bytearray(running.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    running.write_bytes(bytes(altered))
    if not kept:
        shutil.rmtree(cabinet.dir / "state/manifests")
    before = cabinet.snapshot()
    result = cabinet.agent("install", world.bundles / "d12")
    assert result.returncode == 3, result.stdout + result.stderr
    if kept:
        assert f"base file {path!r} differs from the one this delta was made against" in result.stderr
    else:
        assert f"rebuilt from base file {path!r} does not have its signed SHA-256" in result.stderr
    assert cabinet.snapshot() == before and running.read_bytes() == altered


def test_refusals_leave_the_committed_state_file_byte_identical(cabinet, world, tmp_path):
    committed = (cabinet.dir / "state/state.json").read_bytes()
    one = world.make("d12-only-rel1", "r2", "r1", ("rel1",))
    assert cabinet.agent("install", one).returncode == 3
    assert (cabinet.dir / "state/state.json").read_bytes() == committed


def test_manual_rollback(cabinet, world):
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    assert cabinet.status()["components"]["platform"]["sequence"] == 7
    cabinet.agent("rollback", check=True)
    assert cabinet.agent("boot", check=True).stdout.strip().endswith("env-1")
    status = cabinet.status()
    assert status["components"]["platform"]["sequence"] == 6 and status["committed_environment"] == "env-1"


def test_what_a_rollback_went_back_from_installs_again(cabinet, world, tmp_path):
    """After a manual rollback to release 1 (which lacks the fortune wheel), the same stick brings
    release 2 back: every component is at its floor, not below it (T-ROLLBACK)."""
    stick = world.stick(tmp_path / "stick", "d12")
    cabinet.agent("on-insert", stick, check=True)
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    cabinet.agent("rollback", check=True)
    cabinet.agent("boot", check=True)
    assert "game/fortune-wheel" not in cabinet.status()["components"]
    result = cabinet.agent("on-insert", stick, check=True)
    assert "staged game/fortune-wheel, game/lucky-sevens, platform in env-3" in result.stdout, result.stdout
    assert "newer or cheaper route" not in result.stdout


@pytest.fixture(scope="module")
def world3(world):
    """Release 3 (platform 13.2.2, sequence 8) and the delta d23 beside the world's bundles."""
    r3 = world.dir / "r3"
    if not r3.exists():
        shutil.copytree(world.dir / "r2", r3, symlinks=True)
        text = (r3 / "release.toml").read_text().replace('"13.2.1"', '"13.2.2"').replace("sequence = 7", "sequence = 8")
        (r3 / "release.toml").write_text(text)
        (r3 / "platform/etc/cabinet.conf").write_text("payout_table = standard\naudit = strict\nlog = full\n")
        world.make("d23", "r3", base="r2")
    return world


@pytest.mark.parametrize("bundles, steps", [(("d12", "d23"), "via 2 steps"), (("full-2", "d23"), "via 2 steps"),
                                             (("d12", "d23", "full-1"), "via 2 steps")])
def test_chains_reach_the_newest_release(cabinet, world3, tmp_path, bundles, steps):
    stick = world3.stick(tmp_path / "stick", *bundles)
    result = cabinet.agent("install", stick, check=True)
    assert f"platform: 13.2.0 (sequence 6) -> 13.2.2 (sequence 8) {steps}" in result.stdout
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    assert cabinet.status()["components"]["platform"] == {"version": "13.2.2", "sequence": 8}
    env = cabinet.dir / "envs" / cabinet.status()["committed_environment"]
    assert (env / "platform/etc/cabinet.conf").read_text().endswith("log = full\n")
    assert not [p for p in (env).rglob("*.staging-*")] and not [p for p in env.rglob("*.old")]
    # Intermediate steps are built in the state directory, never beside the environments (issue: a
    # whole-system platform at the environment's root put them in ENVS/env-N.staging-1).
    assert sorted(p.name for p in (cabinet.dir / "envs").iterdir()) == ["boot.json", "env-1", "env-2", "made"]
    assert not (cabinet.dir / "state/chain").exists()


def test_a_broken_chain_installs_nothing(cabinet, world3, tmp_path):
    before = cabinet.snapshot()
    result = cabinet.agent("install", world3.bundles / "d23")
    assert result.returncode == 0 and "none applies to what this machine has" in result.stdout
    assert "is a delta from sequence 7" in result.stdout
    assert json.loads(cabinet.agent("install", "--json", world3.bundles / "d23").stdout)["outcome"] == \
        "no-applicable-update"
    assert cabinet.snapshot() == before


def test_platform_at_the_environment_root_with_games_nested(world, tmp_path):
    """The FreeBSD-style layout: the platform is the environment's root, games live inside it."""
    from agent.format.tree import tree_digest
    from agent.scan import as_content, scan_tree
    cabinet = Cabinet(world, tmp_path / "dev", layout={"platform": ".", "games": "opt/games"})
    cabinet.provision()
    env1 = cabinet.dir / "envs/env-1"
    assert (env1 / "usr/bin/cabinet-engine").is_file() and (env1 / "opt/games/lucky-sevens/reels.dat").is_file()
    cabinet.agent("install", world.bundles / "d12", check=True)
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    env2 = cabinet.dir / "envs/env-2"
    games = ("opt/games/lucky-sevens", "opt/games/fortune-wheel")
    platform = [e for e in scan_tree(env2, exclude=games) if e.path not in ("opt", "opt/games")]
    assert tree_digest(platform) == tree_digest(scan_tree(world.dir / "r2/platform"))
    assert tree_digest(as_content(scan_tree(env2 / "opt/games/fortune-wheel"))) == \
        tree_digest(as_content(scan_tree(world.dir / "r2/games/fortune-wheel")))
    assert cabinet.status()["components"]["platform"]["sequence"] == 7
    # The environment it came from is untouched.
    assert tree_digest([e for e in scan_tree(env1, exclude=("opt/games/lucky-sevens",))
                        if e.path not in ("opt", "opt/games")]) == tree_digest(scan_tree(world.dir / "r1/platform"))


def test_nested_layout_with_only_a_game_changing(world, tmp_path):
    from tests.sim.tools import run_cli
    cabinet = Cabinet(world, tmp_path / "dev", layout={"platform": ".", "games": "opt/games"})
    cabinet.provision()
    r1b = world.dir / "r1b"
    if not r1b.exists():
        shutil.copytree(world.dir / "r1", r1b, symlinks=True)
        text = (r1b / "release.toml").read_text().replace('version = "1.0"\nsequence = 2', 'version = "1.1"\nsequence = 9')
        (r1b / "release.toml").write_text(text)
        (r1b / "games/lucky-sevens/paytable.json").write_text('{"777": 750}\n')
        run_cli("bundle", "make", "--release", r1b / "release.toml", "--base", world.release("r1"), "--key",
                world.keys / "rel1.key", "--key", world.keys / "rel2.key", "--out", world.bundles / "d1-1b",
                "--level", "3", check=True)
    result = cabinet.agent("install", world.bundles / "d1-1b", check=True)
    assert "game/lucky-sevens: 1.0 (sequence 2) -> 1.1 (sequence 9)" in result.stdout
    env2 = cabinet.dir / "envs/env-2"
    assert (env2 / "opt/games/lucky-sevens/paytable.json").read_text() == '{"777": 750}\n'
    assert (env2 / "usr/bin/cabinet-engine").read_bytes() == (world.dir / "r1/platform/usr/bin/cabinet-engine").read_bytes()


def test_files_kept_with_only_new_metadata_get_it_without_being_written(cabinet, world, tmp_path):
    """A platform update gives thousands of unchanged files a new time (their packages were
    rebuilt); staging keeps them in the clone and changes only what differs."""
    from tests.sim.tools import run_cli
    r1t = tmp_path / "r1t"
    shutil.copytree(world.dir / "r1", r1t, symlinks=True)
    (r1t / "release.toml").write_text((r1t / "release.toml").read_text().replace("sequence = 6", "sequence = 8"))
    platform = r1t / "platform"
    os.utime(platform / "usr/share/doc/cabinet/changelog.gz", (1_800_000_000, 1_800_000_000))  # only the time
    os.utime(platform / "usr/bin/engine", (1_800_000_100, 1_800_000_100), follow_symlinks=False)  # a symlink's
    (platform / "etc/cabinet.conf").chmod(0o600)  # the mode, and so the time
    os.utime(platform / "etc/cabinet.conf", (1_800_000_200, 1_800_000_200))
    run_cli("bundle", "make", "--release", r1t / "release.toml", "--base", world.release("r1"), "--key",
            world.keys / "rel1.key", "--key", world.keys / "rel2.key", "--out", tmp_path / "d1-1t", "--level", "3",
            check=True)
    env1 = cabinet.dir / "envs/env-1/platform"
    cabinet.agent("install", tmp_path / "d1-1t", check=True)
    env2 = cabinet.dir / "envs/env-2/platform"
    changelog = os.stat(env2 / "usr/share/doc/cabinet/changelog.gz")
    assert changelog.st_mtime == 1_800_000_000
    assert os.lstat(env2 / "usr/bin/engine").st_mtime == 1_800_000_100
    assert (os.stat(env2 / "etc/cabinet.conf").st_mode & 0o7777, os.stat(env2 / "etc/cabinet.conf").st_mtime) == \
        (0o600, 1_800_000_200)
    assert os.lstat(env1 / "usr/bin/engine").st_mtime != 1_800_000_100  # the running environment is as it was


def test_machine_local_paths_are_preserved_and_strays_removed(world, tmp_path):
    """Platform at the root: [layout] preserve keeps machine-local files across updates; anything
    else the release does not ship is gone from the new environment (the running one keeps it)."""
    layout = {"platform": ".", "games": "opt/games"}
    cabinet = Cabinet(world, tmp_path / "dev", layout=layout)
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text() + 'preserve = ["etc/ssh", "etc/rc.conf.local"]\n')
    cabinet.provision()
    env1 = cabinet.dir / "envs/env-1"
    (env1 / "etc/ssh").mkdir()
    (env1 / "etc/ssh/host_key").write_text("machine secret")
    (env1 / "etc/rc.conf.local").write_text('hostname="cab-0001"\n')
    (env1 / "etc/stray").write_text("left by someone")
    cabinet.agent("install", world.bundles / "d12", check=True)
    env2 = cabinet.dir / "envs/env-2"
    assert (env2 / "etc/ssh/host_key").read_text() == "machine secret"
    assert (env2 / "etc/rc.conf.local").read_text() == 'hostname="cab-0001"\n'
    assert not (env2 / "etc/stray").exists() and (env1 / "etc/stray").exists()
    cabinet.agent("boot", check=True)
    cabinet.agent("boot-check", check=True)
    assert cabinet.status()["components"]["platform"]["sequence"] == 7


def test_an_unchanged_file_hard_linked_to_a_preserved_one_is_fixed_without_touching_it(world, tmp_path):
    """Staging in place keeps an unchanged file where it is and only fixes its metadata - but not
    one that shares its inode with a path outside the listing: setting the setuid mode the release
    gives usr/bin/sudo must not make the machine's own file setuid too."""
    cabinet = Cabinet(world, tmp_path / "dev", layout={"platform": ".", "games": "opt/games"})
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text() + 'preserve = ["etc/rc.conf.local"]\n')
    cabinet.provision()
    env1 = cabinet.dir / "envs/env-1"
    (env1 / "usr/bin/sudo").chmod(0o755)  # drifted on the machine; the release says 4755
    os.link(env1 / "usr/bin/sudo", env1 / "etc/rc.conf.local")
    cabinet.agent("install", world.bundles / "d12", check=True)
    env2 = cabinet.dir / "envs/env-2"
    assert stat.S_IMODE((env2 / "usr/bin/sudo").stat().st_mode) == 0o4755
    assert stat.S_IMODE((env2 / "etc/rc.conf.local").stat().st_mode) == 0o755


def test_preserve_must_name_paths_inside_the_platform(world, tmp_path):
    cabinet = Cabinet(world, tmp_path / "dev")
    config = cabinet.dir / "agent.toml"
    config.write_text(config.read_text() + '[layout]\npreserve = ["../etc"]\n')
    result = cabinet.agent("status")
    assert result.returncode == 1 and "[layout] preserve: '../etc' must be a relative path" in result.stderr


def test_a_bundle_of_hundreds_of_volumes_installs_under_a_low_descriptor_limit(world, tmp_path):
    """Up to 10,000 volumes are allowed; the agent must not hold one descriptor per volume."""
    source = world.dir / "r1-noisy"
    if not source.exists():
        shutil.copytree(world.dir / "r1", source, symlinks=True)
        (source / "platform/usr/share/noise.bin").write_bytes(os.urandom(300_000))  # incompressible
    bundle = world.make("full-noisy", "r1-noisy", None, ("rel1", "rel2"), "--volume-size", "4K")
    volumes = len(list((bundle / "payload").iterdir()))
    assert volumes > 200
    cabinet = Cabinet(world, tmp_path / "device")
    limited = subprocess.run(["sh", "-c", 'ulimit -n 40 && exec "$0" "$@"', *cabinet.command("provision", bundle)],
                             capture_output=True, text=True)
    assert limited.returncode == 0, limited.stderr
    assert "provisioned" in limited.stdout
    assert cabinet.status()["components"]["platform"]["sequence"] == 6


def test_links_a_signed_platform_ships_never_lead_the_agent_out(world, tmp_path):
    """The compromised-build-machine guarantee (docs/THREAT-MODEL.md, T-STAGE-BENEATH): a validly
    signed platform whose links point at the running environment and at a folder outside, in the
    whole-system layout with games nested and a preserved path, is installed, trial-booted and
    committed - and nothing outside the new environment changed at any point: not the running
    environment, not the folder the links point to."""
    from dataclasses import replace

    from agent.format.tree import tree_digest
    from agent.scan import scan_tree
    from tests.sim.stick import StickSim, symlink_entry

    def digest(path: Path) -> str:  # content, modes, owners, and the modification times of files
        return tree_digest(replace(e, size=(e.size, e.mtime)) if e.type == "file" else e for e in scan_tree(path))

    layout = {"platform": ".", "games": "usr/local/games", "preserve": ["etc/ssh"]}
    cabinet = Cabinet(world, tmp_path / "dev", layout=layout)
    cabinet.provision()
    outside = tmp_path / "outside"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc/ssh").mkdir()
    sim = StickSim(world)
    sim.bundle("d12").edit("platform", add=[symlink_entry("etc/running", "../../env-1"),
                                            symlink_entry("usr/outside", str(outside))])
    stick = sim.write(tmp_path / "stick")
    env1 = cabinet.dir / "envs/env-1"
    (env1 / "etc/ssh").mkdir()
    (env1 / "etc/ssh/host_key").write_text("machine secret\n")
    before = digest(env1), digest(outside)
    for command in (("on-insert", stick), ("boot",), ("boot-check",)):
        cabinet.agent(*command, check=True)
        assert (digest(env1), digest(outside)) == before, f"something outside env-2 changed by {command[0]}"
    env2 = cabinet.dir / "envs/env-2"
    assert cabinet.status()["committed_environment"] == "env-2"
    assert os.readlink(env2 / "etc/running") == "../../env-1" and (env2 / "usr/local/games/fortune-wheel").is_dir()
    assert (env2 / "etc/ssh/host_key").read_text() == "machine secret\n"


# --- on-insert: the unattended entry point (docs/AGENT.md, "Unattended installs: on-insert") ---------------


def _on_insert(cabinet: Cabinet, medium: Path, stdin) -> subprocess.CompletedProcess:
    """As cabinet.agent runs it, with ``stdin`` as its standard input."""
    return subprocess.run([str(BIN / "bundle-agent"), *cabinet._options("on-insert", medium)], stdin=stdin,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})


def test_on_insert_never_reads_stdin_and_logs_one_line_per_event(cabinet, world, tmp_path):
    """Nobody answers a udev rule or an automount unit: on-insert never reads its standard input
    (the file offset it shares with us stays at 0), and its stderr is log lines for the journal."""
    stick = world.stick(tmp_path / "stick", "d12")
    answers = tmp_path / "answers"
    answers.write_text("y\n" * 64)
    with open(answers) as stdin:
        result = _on_insert(cabinet, stick, stdin)
        assert os.lseek(stdin.fileno(), 0, os.SEEK_CUR) == 0, "on-insert read its standard input"
    assert result.returncode == STAGED, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("on-insert: ") for line in lines), lines
    assert lines[0] == f"on-insert: examining {stick}"
    assert lines[-1].startswith("on-insert: done: staged game/fortune-wheel, game/lucky-sevens, platform in env-2")
    assert "\x1b" not in result.stderr
    assert "staged game/fortune-wheel, game/lucky-sevens, platform in env-2" in result.stdout  # install's report
    assert cabinet.status()["pending"]["environment"] == "env-2"


def test_on_insert_logs_a_refusal_and_its_hint_as_tagged_lines(cabinet, world, tmp_path):
    stick = _stick_with_a_tampered_manifest(world, tmp_path / "stick")
    before = cabinet.snapshot()
    result = _on_insert(cabinet, stick, subprocess.DEVNULL)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert all(line.startswith("on-insert: ") for line in lines), lines
    assert any(line.startswith("on-insert: refused: ") and "COMPLETE marker" in line for line in lines), lines
    assert lines[-1] == "on-insert: hint: the medium was refused; the machine is unchanged", lines
    assert cabinet.snapshot() == before


# --- state written by older agents ----------------------------------------------------------------------------


def test_a_result_file_with_the_retired_trial_count_is_read_not_quarantined(tmp_path):
    """Older agents counted trials in result.json; the count is accepted, then no longer written."""
    state_dir = StateDir(tmp_path / "state")
    state_dir.root.mkdir()
    last = {"outcome": "committed", "message": "env-2 passed its health check and is committed"}
    state_dir.file(RESULT_FILE).write_text(json.dumps({"format": STATE_FORMAT, "last_result": last, "trial_count": 2}))
    store = StateStore(state_dir)
    state = store.load()
    assert state.last_result == last
    store.save(state)
    assert json.loads(state_dir.file(RESULT_FILE).read_text()) == {"format": STATE_FORMAT, "last_result": last}
    assert not list(state_dir.root.glob("*.corrupt-*"))
