"""The check of a staged tree reuses the hashes staging took, and only while the file is unchanged
(agent/known_hashes.py): a platform update is mostly that check, and it must still catch a file
that changed after it was hashed (T-STAGE-CHANGED)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import scan
from agent.apply import StagingError, apply_component, verify_staged
from agent.format.bundle_dir import manifest_path
from agent.format.manifest import Manifest
from agent.known_hashes import KnownHashes
from agent.payload import Payload
from tests.test_bundle_roundtrip import build_r1, build_r2


@pytest.fixture(scope="module")
def delta(tmp_path_factory, trust):
    from tests.sim.tools import run_cli
    base = tmp_path_factory.mktemp("releases")
    r1 = build_r1(base / "r1")
    (base / "r2").mkdir()
    r2 = build_r2(base / "r1", base / "r2")
    out = tmp_path_factory.mktemp("bundles") / "d12"
    run_cli("bundle", "make", "--release", r2, "--base", r1, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
            "--out", out, "--level", "3", check=True)
    return base / "r1/platform", out


def _staged_in_place(delta, clone: Path, known: KnownHashes):
    """The platform delta applied in place to ``clone``, a copy of its base (as a cabinet does)."""
    base, bundle = delta
    subprocess.run(["cp", "-a", f"{base}/.", str(clone)], check=True)
    manifest = Manifest.from_stored(manifest_path(bundle).read_bytes())
    component = manifest.component("platform")
    with Payload(bundle, manifest) as payload:
        apply_component(component, payload, clone, base=base, set_owner=True, target_is_clone_of_base=True,
                        known=known)
    return component


def _files_read(monkeypatch, root: Path) -> list[str]:
    read = []
    real = scan.hash_and_close

    def hash_and_close(fd):
        read.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), root))
        return real(fd)
    monkeypatch.setattr(scan, "hash_and_close", hash_and_close)
    return read


def test_the_check_reads_again_only_the_file_a_hard_link_changed(delta, tmp_path, monkeypatch):
    clone = tmp_path / "clone"
    with KnownHashes() as known:
        component = _staged_in_place(delta, clone, known)
        read = _files_read(monkeypatch, clone)
        verify_staged(component, clone, check_owner=True, known=known)
    # usr/bin/tool was written and hashed, then the new tool-hardlink added a link to it (its
    # ctime moved); tool-hardlink itself was never hashed. Everything else, written or kept, is reused.
    assert sorted(read) == ["usr/bin/tool", "usr/bin/tool-hardlink"]


@pytest.mark.parametrize("path", ["usr/bin/sudo", "etc/config"], ids=["kept from the clone", "written"])
def test_a_file_changed_after_it_was_hashed_is_caught(delta, tmp_path, path):
    clone = tmp_path / "clone"
    with KnownHashes() as known:
        component = _staged_in_place(delta, clone, known)
        target = clone / path
        status = target.stat()
        data = bytearray(target.read_bytes())
        data[0] ^= 1
        with open(target, "r+b") as file:  # same inode, same size, mtime put back: only ctime tells
            file.write(data)
        os.utime(target, ns=(status.st_atime_ns, status.st_mtime_ns))
        assert (target.stat().st_ino, target.stat().st_size, target.stat().st_mtime_ns) == (
            status.st_ino, status.st_size, status.st_mtime_ns)
        with pytest.raises(StagingError, match=f"{path}.*content"):
            verify_staged(component, clone, check_owner=True, known=known)
