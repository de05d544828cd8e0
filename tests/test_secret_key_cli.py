"""Secret keys as an operator uses them: real minisign signs with keys `bundle keys new` made and
`bundle` signs with keys `minisign -G` made (encrypted and unencrypted), passphrases are changed
without changing the key, and co-signers each give their own passphrase."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sim.releases import put, write_release

LEGACY = Path(__file__).parent / "vectors" / "legacy-keys"
FAST = ("--kdf-cost", "interactive")  # scrypt at 16 MiB: minisign's own 1 GiB default costs seconds


def _minisign_sign(minisign: str, key: Path, file: Path, passphrase: str | None) -> Path:
    """`minisign -S` with the passphrase on standard input (minisign reads it there without a tty)."""
    out = file.with_name(file.name + ".by-minisign")
    subprocess.run([minisign, "-S", "-s", key, "-m", file, "-x", out], check=True, capture_output=True,
                   input=b"" if passphrase is None else passphrase.encode() + b"\n", timeout=120)
    return out


def _both_verify(cli, minisign: str, file: Path, pub: Path, signature: Path) -> None:
    subprocess.run([minisign, "-V", "-q", "-p", pub, "-m", file, "-x", signature], check=True, timeout=60)
    cli("bundle", "keys", "verify", file, "--pub", pub, "--signature", signature, check=True)


def _key_id(pub: Path) -> str:
    return pub.read_text().split("\n")[0].split()[-1]


@pytest.mark.parametrize("passphrase", ["s3cret words", None])
def test_minisign_signs_with_a_key_bundle_made(cli, minisign, tmp_path, passphrase):
    (tmp_path / "pw").write_text(f"{passphrase}\n")
    protection = ("--passphrase-file", tmp_path / "pw", *FAST) if passphrase else ("--no-passphrase",)
    cli("bundle", "keys", "new", "k", "--dir", tmp_path, *protection, check=True)
    assert (tmp_path / "k.key").read_text().startswith("untrusted comment: minisign secret key ")
    file = put(tmp_path, "payload", b"signed by minisign\n")
    signature = _minisign_sign(minisign, tmp_path / "k.key", file, passphrase)
    _both_verify(cli, minisign, file, tmp_path / "k.pub", signature)
    if passphrase:  # minisign checks the passphrase against the checksum we wrote
        wrong = subprocess.run([minisign, "-S", "-s", tmp_path / "k.key", "-m", file, "-x", tmp_path / "x"],
                               input=b"wrong\n", capture_output=True, timeout=60)
        assert wrong.returncode != 0 and b"Wrong password" in wrong.stderr + wrong.stdout


@pytest.mark.parametrize("passphrase", ["minisign pw", None])
def test_bundle_signs_with_a_key_minisign_made(cli, minisign, tmp_path, passphrase):
    """`minisign -G` (scrypt at its default 1 GiB) or `minisign -G -W` (unencrypted)."""
    options = [] if passphrase else ["-W"]
    typed = b"" if passphrase is None else f"{passphrase}\n{passphrase}\n".encode()
    subprocess.run([minisign, "-G", *options, "-p", tmp_path / "m.pub", "-s", tmp_path / "m.key"], input=typed,
                   check=True, capture_output=True, timeout=120)
    file = put(tmp_path, "payload", b"signed by bundle\n")
    (tmp_path / "pw").write_text(f"{passphrase}\n")
    source = ("--passphrase-file", tmp_path / "pw") if passphrase else ()
    cli("bundle", "keys", "sign", file, "--key", tmp_path / "m.key", *source, check=True)
    _both_verify(cli, minisign, file, tmp_path / "m.pub", tmp_path / "payload.minisig")
    if passphrase:
        (tmp_path / "wrong").write_text("not it\n")
        result = cli("bundle", "keys", "sign", file, "--key", tmp_path / "m.key", "--passphrase-file",
                     tmp_path / "wrong")
        assert result.returncode == 1, result.stderr
        assert "m.key: cannot decrypt the secret key: wrong passphrase" in result.stderr
        assert "hint: check the passphrase source" in result.stderr and "Traceback" not in result.stderr


def test_passphrase_change_keeps_the_key(cli, minisign, tmp_path):
    (tmp_path / "old").write_text("old words\n")
    (tmp_path / "new").write_text("new words\n")
    cli("bundle", "keys", "new", "k", "--dir", tmp_path, "--passphrase-file", tmp_path / "old", *FAST, check=True)
    pub_before = (tmp_path / "k.pub").read_bytes()
    key = tmp_path / "k.key"
    result = cli("bundle", "keys", "passphrase", key, "--passphrase-file", tmp_path / "old",
                 "--new-passphrase-file", tmp_path / "new", *FAST, check=True)
    assert f"key id {_key_id(tmp_path / 'k.pub')}" in result.stdout
    assert (tmp_path / "k.pub").read_bytes() == pub_before and oct(key.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the rewrite left no temp
    file = put(tmp_path, "payload", b"x\n")
    refused = cli("bundle", "keys", "sign", file, "--key", key, "--passphrase-file", tmp_path / "old")
    assert refused.returncode == 1 and "wrong passphrase" in refused.stderr
    cli("bundle", "keys", "sign", file, "--key", key, "--passphrase-file", tmp_path / "new", check=True)
    _both_verify(cli, minisign, file, tmp_path / "k.pub", tmp_path / "payload.minisig")
    _both_verify(cli, minisign, file, tmp_path / "k.pub", _minisign_sign(minisign, key, file, "new words"))
    # Removing the passphrase: minisign then signs without asking.
    cli("bundle", "keys", "passphrase", key, "--passphrase-file", tmp_path / "new", "--no-passphrase", check=True)
    _both_verify(cli, minisign, file, tmp_path / "k.pub", _minisign_sign(minisign, key, file, None))


def test_passphrase_converts_an_older_bundle_key_to_minisigns_format(cli, minisign, tmp_path):
    for name in ("encrypted.key", "encrypted.pub"):
        shutil.copy(LEGACY / name, tmp_path / name)
    (tmp_path / "old").write_text("legacy passphrase\n")
    (tmp_path / "new").write_text("fresh words\n")
    result = cli("bundle", "keys", "passphrase", tmp_path / "encrypted.key", "--passphrase-file", tmp_path / "old",
                 "--new-passphrase-file", tmp_path / "new", *FAST, check=True)
    assert "converted from the older bundle key format" in result.stdout
    assert _key_id(tmp_path / "encrypted.pub") in result.stdout
    file = put(tmp_path, "payload", b"x\n")
    signature = _minisign_sign(minisign, tmp_path / "encrypted.key", file, "fresh words")
    _both_verify(cli, minisign, file, tmp_path / "encrypted.pub", signature)


def test_older_bundle_keys_still_sign_from_the_command_line(cli, tmp_path):
    (tmp_path / "pw").write_text("legacy passphrase\n")
    file = put(tmp_path, "payload", b"x\n")
    cli("bundle", "keys", "sign", file, "--key", LEGACY / "encrypted.key", "--passphrase-file", tmp_path / "pw",
        check=True)
    cli("bundle", "keys", "verify", file, "--pub", LEGACY / "encrypted.pub", check=True)


# --- co-signing: one passphrase source per key --------------------------------------------------

@pytest.fixture
def cosigners(cli, tmp_path) -> Path:
    """rel1 and rel2 with different passphrases, a 2-of-2 root, and a one-file release."""
    keys = tmp_path / "keys"
    for name in ("rel1", "rel2"):
        put(keys, f"{name}.pass", f"passphrase of {name}\n")
        cli("bundle", "keys", "new", name, "--dir", keys, "--passphrase-file", keys / f"{name}.pass", *FAST,
            check=True)
    cli("bundle", "keys", "new", "root1", "--dir", keys, "--no-passphrase", check=True)
    cli("bundle", "root", "new", "--out", keys / "root.json", "--root-key", keys / "root1.pub", "--signer",
        keys / "rel1.pub", "--signer", keys / "rel2.pub", "--threshold", "2", check=True)
    cli("bundle", "root", "sign", keys / "root.json", "--key", keys / "root1.key", check=True)
    release = tmp_path / "release"
    write_release(release, {"platform": ("1.0", 1)})
    put(release, "platform/etc/version", "1.0\n")
    return tmp_path


def _make(cli, d: Path, *passphrase_files: str, env=None):
    keys = d / "keys"
    sources = [a for name in passphrase_files for a in ("--passphrase-file", keys / f"{name}.pass")]
    return cli("bundle", "make", "--release", d / "release/release.toml", "--key", keys / "rel1.key",
               "--key", keys / "rel2.key", *sources, "--out", d / "out", env=env)


def test_each_cosigner_has_their_own_passphrase(cli, cosigners):
    result = _make(cli, cosigners, "rel1", "rel2")
    assert result.returncode == 0, result.stderr
    cli("bundle", "verify", cosigners / "out", "--root", cosigners / "keys/root.json", check=True)


def test_passphrase_files_pair_with_keys_in_order(cli, cosigners):
    result = _make(cli, cosigners, "rel2", "rel1")
    assert result.returncode == 1 and "rel1.key: cannot decrypt the secret key: wrong passphrase" in result.stderr
    assert not (cosigners / "out").exists()


def test_one_passphrase_file_for_two_keys_is_a_usage_error(cli, cosigners):
    result = _make(cli, cosigners, "rel1")
    assert result.returncode == 2
    assert "2 --key but 1 --passphrase-file" in result.stderr and not (cosigners / "out").exists()


def test_the_environment_passphrase_serves_a_single_key_only(cli, cosigners):
    result = _make(cli, cosigners, env={"BUNDLE_PASSPHRASE": "passphrase of rel1"})
    assert result.returncode == 1 and "no terminal" in result.stderr
    assert "BUNDLE_PASSPHRASE serves a single key" in result.stderr and not (cosigners / "out").exists()
