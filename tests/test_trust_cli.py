"""The trust commands as an operator runs them: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.sim.tools import BIN

# The scenario from the issue, verbatim; `set -e` makes any unexpected failure fatal.
SCENARIO = r"""
set -e
K=$(mktemp -d)
for n in root1 root2 root3 rel1 rel2; do bundle keys new $n --dir $K --no-passphrase; done
bundle root new --out $K/root.json --root-key $K/root1.pub --root-key $K/root2.pub --root-threshold 2 \
    --signer $K/rel1.pub --signer $K/rel2.pub --threshold 2
bundle root verify $K/root.json && exit 1                 # unsigned: refused
bundle root sign $K/root.json --key $K/root1.key
bundle root verify $K/root.json && exit 1                 # 1 of 2: refused
bundle root sign $K/root.json --key $K/root2.key
bundle root verify $K/root.json                           # valid
bundle root rotate --from $K/root.json --out $K/root-2.json --remove-root-key $K/root1.pub --add-root-key $K/root3.pub
bundle root sign $K/root-2.json --key $K/root1.key
bundle root sign $K/root-2.json --key $K/root2.key
bundle root verify $K/root-2.json --root $K/root.json && exit 1   # new root keys' threshold not met
bundle root sign $K/root-2.json --key $K/root3.key
bundle root verify $K/root-2.json --root $K/root.json             # valid rotation
echo hello > $K/f; bundle keys sign $K/f --key $K/rel1.key
minisign -V -p $K/rel1.pub -m $K/f                                    # the real minisign accepts it
echo "KEYDIR=$K"
"""


def test_issue_scenario_verbatim(minisign, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", "-c", SCENARIO], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed by 0 of 2 required root keys of version 1" in result.stderr
    assert "signed by 1 of 2 required root keys of version 1 (signed: root1; missing: root2)" in result.stderr
    assert "signed by 1 of 2 required root keys of version 2 (signed: root2; missing: root3" in result.stderr
    assert "Signature and comment signature verified" in result.stdout
    keydir = Path(result.stdout.split("KEYDIR=")[1].strip())
    # Each root signature is itself a standard minisign signature.
    for name, key in [("root.json", "root1"), ("root-2.json", "root3")]:
        key_id = (keydir / f"{key}.pub").read_text().split()[-2]
        subprocess.run([minisign, "-V", "-q", "-p", keydir / f"{key}.pub", "-m", keydir / name,
                        "-x", keydir / f"{name}.{key_id}.minisig"], check=True)


@pytest.fixture
def trust_dir(cli, tmp_path) -> Path:
    """root.json (r1, r2; 2-of-2) signed by both; release signers rel1, rel2 (2-of-2)."""
    for name in ("r1", "r2", "r3", "rel1", "rel2", "rel3"):
        cli("bundle", "keys", "new", name, "--dir", tmp_path, "--no-passphrase", check=True)
    cli("bundle", "root", "new", "--out", tmp_path / "root.json", "--root-key", tmp_path / "r1.pub",
        "--root-key", tmp_path / "r2.pub", "--root-threshold", "2", "--signer", tmp_path / "rel1.pub",
        "--signer", tmp_path / "rel2.pub", "--threshold", "2", check=True)
    for name in ("r1", "r2"):
        cli("bundle", "root", "sign", tmp_path / "root.json", "--key", tmp_path / f"{name}.key", check=True)
    return tmp_path


def test_key_files_modes_and_format(cli, tmp_path):
    result = cli("bundle", "keys", "new", "k", "--dir", tmp_path / "new", "--no-passphrase", check=True)
    assert "unencrypted" in result.stdout
    assert stat.S_IMODE((tmp_path / "new/k.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new/k.pub").stat().st_mode) == 0o644
    assert (tmp_path / "new/k.pub").read_text().startswith("untrusted comment: minisign public key ")


def test_key_files_are_never_overwritten(cli, tmp_path):
    cli("bundle", "keys", "new", "k", "--dir", tmp_path, "--no-passphrase", check=True)
    before = (tmp_path / "k.key").read_bytes()
    (tmp_path / "k.key").chmod(0o600)
    result = cli("bundle", "keys", "new", "k", "--dir", tmp_path, "--no-passphrase")
    assert result.returncode == 1 and "already exists" in result.stderr
    assert (tmp_path / "k.key").read_bytes() == before
    # Only the .pub existing is enough to refuse, and nothing half-made is left.
    (tmp_path / "k.key").unlink()
    result = cli("bundle", "keys", "new", "k", "--dir", tmp_path, "--no-passphrase")
    assert result.returncode == 1 and not (tmp_path / "k.key").exists()


def test_encrypted_key_passphrase_sources_and_wrong_passphrase(cli, tmp_path):
    cost = ("--kdf-cost", "interactive")
    cli("bundle", "keys", "new", "k", "--dir", tmp_path, *cost, env={"BUNDLE_PASSPHRASE": "s3cret"}, check=True)
    assert b"minisign secret key" in (tmp_path / "k.key").read_bytes()
    (tmp_path / "f").write_text("payload\n")
    (tmp_path / "wrong").write_text("not it\n")
    result = cli("bundle", "keys", "sign", tmp_path / "f", "--key", tmp_path / "k.key",
                 "--passphrase-file", tmp_path / "wrong")
    assert result.returncode == 1
    assert "wrong passphrase" in result.stderr and "hint:" in result.stderr
    assert not (tmp_path / "f.minisig").exists()
    (tmp_path / "right").write_text("s3cret\n")
    cli("bundle", "keys", "sign", tmp_path / "f", "--key", tmp_path / "k.key",
        "--passphrase-file", tmp_path / "right", check=True)
    cli("bundle", "keys", "verify", tmp_path / "f", "--pub", tmp_path / "k.pub", check=True)


def test_no_passphrase_source_without_a_terminal_is_a_clear_error(cli, tmp_path):
    result = cli("bundle", "keys", "new", "k", "--dir", tmp_path, input="")
    assert result.returncode == 1
    assert "--passphrase-file" in result.stderr and "--no-passphrase" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_truncated_key_file(cli, trust_dir):
    data = (trust_dir / "rel1.key").read_bytes()
    (trust_dir / "cut.key").write_bytes(data[: len(data) // 2])
    (trust_dir / "f").write_text("x")
    result = cli("bundle", "keys", "sign", trust_dir / "f", "--key", trust_dir / "cut.key")
    assert result.returncode == 3 and "cut.key" in result.stderr
    assert not (trust_dir / "f.minisig").exists()


def test_verify_flipped_byte_in_file_and_in_signature(cli, trust_dir):
    (trust_dir / "f").write_text("hello\n")
    cli("bundle", "keys", "sign", trust_dir / "f", "--key", trust_dir / "rel1.key", check=True)
    cli("bundle", "keys", "verify", trust_dir / "f", "--pub", trust_dir / "rel1.pub", check=True)
    (trust_dir / "f").write_text("hellp\n")
    result = cli("bundle", "keys", "verify", trust_dir / "f", "--pub", trust_dir / "rel1.pub")
    assert result.returncode == 3 and "does not match the signed bytes" in result.stderr
    result = cli("bundle", "keys", "verify", trust_dir / "f", "--pub", trust_dir / "rel2.pub")
    assert result.returncode == 3 and "not by key" in result.stderr


def test_malformed_root_signature_file_is_named(cli, trust_dir):
    assert cli("bundle", "root", "verify", trust_dir / "root.json").returncode == 0
    junk = trust_dir / "root.json.0123456789ABCDEF.minisig"
    junk.write_text("untrusted comment: junk\n")
    result = cli("bundle", "root", "verify", trust_dir / "root.json")
    assert result.returncode == 3 and junk.name in result.stderr and "4 lines" in result.stderr


def test_verify_json_output(cli, trust_dir):
    result = cli("bundle", "root", "verify", trust_dir / "root.json", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["root_version"] == 1 and report["evidence"][0]["met"] is True
    assert report["ok"] is True and report["version"] == 1  # the --json envelope (docs/json/)
    assert sorted(k["name"] for k in report["evidence"][0]["signed"]) == ["r1", "r2"]


def _rotate_and_sign(cli, d: Path, out: str, signers: list[str], *options) -> None:
    cli("bundle", "root", "rotate", "--from", d / "root.json", "--out", d / out, *options, check=True)
    for name in signers:
        cli("bundle", "root", "sign", d / out, "--key", d / f"{name}.key", check=True)


def test_revoked_signer_cannot_come_back(cli, trust_dir):
    _rotate_and_sign(cli, trust_dir, "root-2.json", ["r1", "r2"], "--remove-signer", "rel1",
                     "--add-signer", trust_dir / "rel3.pub")
    result = cli("bundle", "root", "verify", trust_dir / "root-2.json", "--root", trust_dir / "root.json",
                 check=True)
    assert "revoked: rel1" in result.stdout
    again = cli("bundle", "root", "rotate", "--from", trust_dir / "root-2.json", "--out", trust_dir / "root-3.json",
                "--add-signer", trust_dir / "rel1.pub")
    assert again.returncode == 3 and "was revoked by an earlier trust root" in again.stderr
    assert not (trust_dir / "root-3.json").exists()
    # The older root, which still lists rel1, cannot be replayed over the newer one.
    replay = cli("bundle", "root", "verify", trust_dir / "root.json", "--root", trust_dir / "root-2.json")
    assert replay.returncode == 3 and "older than the trusted version 2" in replay.stderr


def test_skipped_version_and_chain(cli, trust_dir):
    _rotate_and_sign(cli, trust_dir, "root-2.json", ["r1", "r2", "r3"], "--add-root-key", trust_dir / "r3.pub")
    cli("bundle", "root", "rotate", "--from", trust_dir / "root-2.json", "--out", trust_dir / "root-3.json",
        "--remove-root-key", "r1", check=True)
    for name in ("r2", "r3"):
        cli("bundle", "root", "sign", trust_dir / "root-3.json", "--key", trust_dir / f"{name}.key", check=True)
    skipped = cli("bundle", "root", "verify", trust_dir / "root-3.json", "--root", trust_dir / "root.json")
    assert skipped.returncode == 3 and "versions 2..2 are missing" in skipped.stderr
    cli("bundle", "root", "verify", trust_dir / "root-3.json", "--root", trust_dir / "root.json",
        "--root", trust_dir / "root-2.json", check=True)


def test_rotation_output_exclusive_and_threshold_checked(cli, trust_dir):
    result = cli("bundle", "root", "rotate", "--from", trust_dir / "root.json", "--out", trust_dir / "root.json",
                 "--add-signer", trust_dir / "rel3.pub")
    assert result.returncode == 1 and "already exists" in result.stderr
    result = cli("bundle", "root", "rotate", "--from", trust_dir / "root.json", "--out", trust_dir / "x.json",
                 "--remove-root-key", "r1")
    assert result.returncode == 3 and "threshold 2 must be between 1 and the number of keys (1)" in result.stderr
    assert "--root-threshold" in result.stderr


def test_bundle_agent_verifies_roots_too(cli, trust_dir):
    result = cli("bundle-agent", "root", "verify", trust_dir / "root.json", check=True)
    assert "trusted root version 1" in result.stdout


def test_root_verify_prints_a_path_that_is_not_utf_8(cli, trust_dir):
    """A root on a stick whose label is in a legacy code page: on a strict UTF-8 stream the path
    is printed as \\xe9 (keys/printable.py), in text and in JSON, instead of crashing the command."""
    folder = trust_dir / os.fsdecode(b"stick-\xe9")
    folder.mkdir()
    for path in trust_dir.glob("root.json*"):
        (folder / path.name).write_bytes(path.read_bytes())
    strict = {"PYTHONIOENCODING": "utf-8"}  # no surrogateescape: what a UTF-8 locale gives
    for command in ("bundle-agent", "bundle"):
        text = cli(command, "root", "verify", folder / "root.json", env=strict)
        assert text.returncode == 0, text.stderr
        assert text.stdout.startswith(f"{trust_dir}/stick-\\xe9/root.json: trusted root version 1\n")
        report = cli(command, "root", "verify", folder / "root.json", "--json", env=strict)
        assert report.returncode == 0, report.stderr
        assert json.loads(report.stdout)["path"] == f"{trust_dir}/stick-\\xe9/root.json"


def test_real_minisign_keys_and_signatures_are_accepted(cli, minisign, tmp_path):
    """Interop the other way: keys and signatures made by minisign itself work with our tools."""
    subprocess.run([minisign, "-G", "-W", "-p", tmp_path / "m.pub", "-s", tmp_path / "m.key"], check=True,
                   capture_output=True)
    (tmp_path / "f").write_text("data\n")
    subprocess.run([minisign, "-S", "-s", tmp_path / "m.key", "-m", tmp_path / "f"], check=True, capture_output=True)
    cli("bundle", "keys", "verify", tmp_path / "f", "--pub", tmp_path / "m.pub", check=True)
    # A root key held in minisign: `minisign -S -x root.json.minisig` counts towards the threshold.
    cli("bundle", "root", "new", "--out", tmp_path / "root.json", "--root-key", tmp_path / "m.pub",
        "--signer", tmp_path / "m.pub", check=True)
    assert cli("bundle", "root", "verify", tmp_path / "root.json").returncode == 3
    subprocess.run([minisign, "-S", "-s", tmp_path / "m.key", "-m", tmp_path / "root.json"], check=True,
                   capture_output=True)
    cli("bundle", "root", "verify", tmp_path / "root.json", check=True)


def test_legacy_minisign_signature_is_accepted(cli, minisign, tmp_path):
    subprocess.run([minisign, "-G", "-W", "-p", tmp_path / "m.pub", "-s", tmp_path / "m.key"], check=True,
                   capture_output=True)
    (tmp_path / "f").write_text("data\n")
    subprocess.run([minisign, "-S", "-l", "-s", tmp_path / "m.key", "-m", tmp_path / "f"], check=True,
                   capture_output=True)
    cli("bundle", "keys", "verify", tmp_path / "f", "--pub", tmp_path / "m.pub", check=True)


def test_a_root_version_no_stick_can_name_is_refused(cli, tmp_path):
    """A stick names a root root-<N>.json with N of at most nine digits (agent/format/stick.py): a
    version beyond that would be written to sticks and never found by a device."""
    for name in ("r", "s"):
        cli("bundle", "keys", "new", name, "--dir", tmp_path, "--no-passphrase", check=True)
    new = ["bundle", "root", "new", "--root-key", tmp_path / "r.pub", "--signer", tmp_path / "s.pub"]
    refused = cli(*new, "--out", tmp_path / "big.json", "--version", "1000000000")
    assert refused.returncode == 3 and "version must be 1 to 999999999" in refused.stderr, refused.stderr
    assert not (tmp_path / "big.json").exists()
    assert cli(*new, "--out", tmp_path / "largest.json", "--version", "999999999").returncode == 0


def test_bytes_that_are_not_utf8_in_passphrases_and_names_are_no_traceback(cli, tmp_path):
    """A passphrase from the environment is taken as its bytes (a traceback would print one of
    them); a file's name that is not UTF-8, or holds a line break, goes into the default trusted
    comment escaped; a comment given that is not UTF-8 is a usage error."""
    made = cli("bundle", "keys", "new", "enc", "--dir", tmp_path, "--kdf-cost", "interactive",
               env={b"BUNDLE_PASSPHRASE": b"s3cr\xe9t"})
    assert made.returncode == 0 and "Traceback" not in made.stderr, made.stderr
    for raw in (b"f\xff.txt", b"g\nh.txt"):
        document = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), raw)))
        document.write_bytes(b"data\n")
        signed = cli("bundle", "keys", "sign", document, "--key", tmp_path / "enc.key",
                     env={b"BUNDLE_PASSPHRASE": b"s3cr\xe9t"})
        assert signed.returncode == 0, signed.stderr
        checked = cli("bundle", "keys", "verify", document, "--pub", tmp_path / "enc.pub")
        assert checked.returncode == 0 and "trusted comment: file:" in checked.stdout, checked.stderr
    wrong = cli("bundle", "keys", "sign", document, "--key", tmp_path / "enc.key", "--trusted-comment",
                os.fsdecode(b"bad \xff"), env={b"BUNDLE_PASSPHRASE": b"s3cr\xe9t"})
    assert wrong.returncode == 2 and "--trusted-comment: the trusted comment" in wrong.stderr, wrong.stderr
    assert "Traceback" not in wrong.stderr
