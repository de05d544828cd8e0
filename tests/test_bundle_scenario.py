"""The vendor-bundler issue's scenario, verbatim, on the demo's two releases."""

from __future__ import annotations

import json
import os
import subprocess

from bundler.demo import build_releases
from tests.sim.tools import BIN

SETUP = r"""
set -e
K=$WORK/keys; mkdir -p $K
for n in root1 root2 root3 rel1 rel2; do bundle keys new $n --dir $K --no-passphrase; done
bundle root new --out $K/root.json --root-key $K/root1.pub --root-key $K/root2.pub --root-threshold 2 \
    --signer $K/rel1.pub --signer $K/rel2.pub --threshold 2
bundle root sign $K/root.json --key $K/root1.key
bundle root sign $K/root.json --key $K/root2.key
"""

SCENARIO = r"""
set -e
bundle make --release $R1/release.toml --key $K/rel1.key --key $K/rel2.key --out $B/full-1
bundle make --release $R2/release.toml --base $R1/release.toml --key $K/rel1.key --out $B/d12
bundle verify $B/d12 --root $K/root.json && exit 1          # 1 of 2 signers: refused
bundle sign $B/d12 --key $K/rel2.key
bundle verify $B/d12 --root $K/root.json --base platform=$R1/platform --base game/lucky-sevens=$R1/games/lucky-sevens
bundle inspect $B/d12 --json
bundle write $S $B/full-1 $B/d12 --root $K/root.json
"""


def test_bundler_issue_scenario_verbatim(tmp_path):
    build_releases(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "WORK": str(tmp_path),
           "K": str(tmp_path / "keys"), "R1": str(tmp_path / "r1"), "R2": str(tmp_path / "r2"),
           "B": str(tmp_path / "bundles"), "S": str(tmp_path / "stick")}
    (tmp_path / "bundles").mkdir()
    (tmp_path / "stick").mkdir()
    subprocess.run(["bash", "-c", SETUP], env=env, check=True, capture_output=True)
    result = subprocess.run(["bash", "-c", SCENARIO], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed by 1 of 2 required release signers" in result.stderr
    inspect_json = result.stdout[result.stdout.index("{"):]
    report, _ = json.JSONDecoder().raw_decode(inspect_json)
    assert {c["name"]: c["update"] for c in report["components"]} == {
        "platform": "delta", "game/lucky-sevens": "delta", "game/fortune-wheel": "full"}
    bundles = list((tmp_path / "stick/demo-cabinet/bundles").iterdir())
    assert len(bundles) == 2 and all((b / "COMPLETE").is_file() for b in bundles)
    assert (tmp_path / "stick/demo-cabinet/trust/root-1.json").is_file()
