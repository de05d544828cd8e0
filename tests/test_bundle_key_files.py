"""`bundle make` refuses a release tree that holds a secret signing key (bundler/key_files.py):
on every machine, it would let whoever opens one sign bundles. Public keys, signatures and other
text that starts like a key file are carried."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from keys.secret_key import SecretKey
from keys.signing import sign
from tests.sim.releases import put, write_release

LEGACY = Path(__file__).parent / "vectors" / "legacy-keys"


def _release(tmp_path: Path) -> Path:
    release = write_release(tmp_path / "r", {"platform": ("1.0", 1), "game/lucky-sevens": ("1.0", 1)})
    put(tmp_path / "r/platform", "bin/tool", "tool")
    put(tmp_path / "r/games/lucky-sevens", "reels.dat", "reels")
    return release


def _make(cli, trust, release: Path, out: Path):
    return cli("bundle", "make", "--release", release, "--key", trust.key("rel1"), "--out", out, "--level", "3")


KEYS = {
    "the release key signing it, in the platform": (lambda t, trust: shutil.copy(trust.key("rel1"), put(
        t / "r/platform", "root/keys/rel1.key")), "'root/keys/rel1.key' of component platform"),
    "an unencrypted key, in a game": (lambda t, trust: put(t / "r/games/lucky-sevens", "build/signer",
                                                            SecretKey.generate().to_bytes(None)),
                                       "'build/signer' of component game/lucky-sevens"),
    "the older format, encrypted": (lambda t, trust: shutil.copy(LEGACY / "encrypted.key", put(
        t / "r/platform", "etc/old.key")), "'etc/old.key' of component platform"),
}


@pytest.mark.parametrize("case", KEYS)
def test_a_secret_key_in_a_release_tree_is_refused(cli, trust, tmp_path, case):
    plant, named = KEYS[case]
    release = _release(tmp_path)
    plant(tmp_path, trust)
    result = _make(cli, trust, release, tmp_path / "out")
    assert result.returncode == 3, result.stdout + result.stderr
    assert (f"{named} is a secret signing key; a bundle would put it on every machine, where whoever reads it "
            "could sign bundles") in result.stderr
    assert "hint: move it out of the release tree" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_public_keys_and_signatures_are_carried(cli, trust, tmp_path):
    release = _release(tmp_path)
    secret = SecretKey.generate()
    platform = tmp_path / "r/platform"
    put(platform, "etc/keys/release.pub", secret.public_key.to_bytes())
    put(platform, "etc/keys/release.pub.minisig", sign(secret, b"data", "a comment").to_bytes())
    put(platform, "etc/motd", b"untrusted comment: " + b"x" * 200 + b"\nnot base64 at all\n")
    shutil.copy(LEGACY / "encrypted.pub", platform / "etc/keys/old.pub")
    result = _make(cli, trust, release, tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
