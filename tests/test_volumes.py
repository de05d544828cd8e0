"""The payload cut into volumes (bundler/volumes.py): content-addressed names listed once, at most
MAX_VOLUMES of them, and the same payload bytes wherever the cuts fall."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from hypothesis import given, settings, strategies as st

from agent.format.manifest import Manifest
from agent.format.bundle_dir import manifest_path
from bundler import volumes
from bundler.volumes import TooManyVolumes, VolumeWriter
from keys.errors import Failed
from tests.sim.releases import put, write_release


def _check_volumes(writer: VolumeWriter, objects: list[bytes]) -> None:
    """Every volume is its listed file, named by its SHA-256, within the size, listed once, and
    the volumes end to end are the objects end to end."""
    on_disk = sorted(p.name for p in writer.directory.iterdir())
    assert on_disk == sorted(v.name for v in writer.volumes)  # no .current left, nothing unlisted
    payload = b""
    for volume in writer.volumes:
        data = (writer.directory / volume.name).read_bytes()
        assert volume.name == f"{hashlib.sha256(data).hexdigest()}.vol" == f"{volume.sha256}.vol"
        assert 0 < volume.size == len(data) <= writer.volume_size
        payload += data
    assert len({v.name for v in writer.volumes}) == len(writer.volumes)
    assert payload == b"".join(objects)
    assert [(o.offset, o.size) for o in writer.objects] == \
        [(sum(map(len, objects[:n])), len(data)) for n, data in enumerate(objects)]


def test_a_volume_that_repeats_an_earlier_one_is_cut_shorter(tmp_path):
    """Two incompressible files that open with the same 64 KiB: stored raw, the second one's first
    volume would be the first one's."""
    r1, r2, r3 = (random.Random(n).randbytes(65536) for n in range(3))
    writer = VolumeWriter(tmp_path / "payload", 65536)
    objects = [r1 + r2, r1 + r3]
    for data in objects:
        writer.add(data, "raw")
    writer.close()
    _check_volumes(writer, objects)
    assert [v.size for v in writer.volumes] == [65536, 65536, 65535, 65536, 1]


def test_the_last_volume_is_cut_too(tmp_path):
    """The volume that close() finishes repeats one cut earlier; its tail becomes one more."""
    writer = VolumeWriter(tmp_path / "payload", 4)
    objects = [b"abcd", b"abcdab", b"cabc"]  # abcd | abcd -> abc, d+abc | abc -> ab, c
    for data in objects:
        writer.add(data, "raw")
    writer.close()
    _check_volumes(writer, objects)
    assert [v.size for v in writer.volumes] == [4, 3, 4, 2, 1]


@settings(max_examples=300, deadline=None)
@given(volume_size=st.integers(1, 12),
       objects=st.lists(st.binary(min_size=1, max_size=40).map(lambda b: bytes(x % 3 for x in b)), max_size=12,
                        unique=True))
def test_any_payload_is_cut_into_distinct_volumes_or_refused(tmp_path_factory, volume_size, objects):
    """Low-entropy objects and tiny volumes repeat often. Either every cut holds the payload in
    distinct volumes, or the writer says it cannot (one byte left that repeats a volume)."""
    writer = VolumeWriter(tmp_path_factory.mktemp("payload"), volume_size)
    try:
        for data in objects:
            writer.add(data, "raw")
        writer.close()
    except Failed as error:
        assert "cannot be cut into volumes" in error.message and error.hint == "choose a larger --volume-size"
        assert any(v.size == 1 for v in writer.volumes)
        return
    _check_volumes(writer, objects)


def test_more_volumes_than_a_manifest_may_list_are_refused_before_they_are_written(tmp_path, monkeypatch):
    monkeypatch.setattr(volumes, "MAX_VOLUMES", 3)
    writer = VolumeWriter(tmp_path / "payload", 4)
    writer.add(os.urandom(12), "raw")  # three full volumes: the limit exactly
    with pytest.raises(TooManyVolumes) as refused:
        writer.add(b"x", "raw")
    assert "more than 3 volumes of at most 4 bytes" in refused.value.message
    assert refused.value.hint == "choose a larger --volume-size"
    assert len(list(writer.directory.iterdir())) == 3


def test_make_stores_files_whose_volumes_would_repeat(cli, trust, tmp_path):
    """End to end: refused before ("a volume is listed twice"); now made, verified and applied."""
    release = write_release(tmp_path / "r", {"platform": ("1.0", 1)})
    r1, r2, r3 = (random.Random(n).randbytes(65536) for n in range(3))
    put(tmp_path / "r/platform", "a.bin", r1 + r2)
    put(tmp_path / "r/platform", "b.bin", r1 + r3)
    cli("bundle", "make", "--release", release, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
        "--out", tmp_path / "out", "--level", "3", "--volume-size", "64K", check=True)
    manifest = Manifest.from_stored(manifest_path(tmp_path / "out").read_bytes())
    assert [v.size for v in manifest.volumes] == [65536, 65536, 65535, 65536, 1]
    result = cli("bundle", "verify", tmp_path / "out", "--root", trust.root, "--apply", check=True)
    assert "platform: applied: every file matches the manifest" in result.stdout


def test_make_refuses_a_payload_over_the_volume_limit_early_and_leaves_nothing(cli, trust, tmp_path):
    release = write_release(tmp_path / "r", {"platform": ("1.0", 1)})
    put(tmp_path / "r/platform", "big.bin", random.Random(1).randbytes(41 << 20))  # 10,000 x 4 KiB is 39 MiB
    result = cli("bundle", "make", "--release", release, "--key", trust.key("rel1"), "--key", trust.key("rel2"),
                 "--out", tmp_path / "out", "--level", "1", "--volume-size", "4K")
    assert result.returncode == 3
    assert "the payload needs more than 10000 volumes of at most 4096 bytes" in result.stderr
    assert "hint: choose a larger --volume-size" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
