"""GRUB's environment block (agent/boot/grubenv.py) against GRUB's own tool, grub-editenv."""

from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import given, settings, strategies as st

from agent.boot import grubenv
from tests.sim.tools import debian_tools


@pytest.fixture
def editenv():
    return debian_tools("grub-common", "grub-editenv")[0]


def _editenv(tool, *args) -> str:
    result = subprocess.run([tool, *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_reads_what_grub_editenv_writes(editenv, tmp_path):
    block = tmp_path / "grubenv"
    _editenv(editenv, block, "create")
    assert grubenv.parse(block.read_bytes()) == {}  # the WARNING comment line is skipped
    _editenv(editenv, block, "set", "default_env=env-1", "trial_env=", "odd=a\\b\nc=d")
    assert grubenv.parse(block.read_bytes()) == {"default_env": "env-1", "trial_env": "", "odd": "a\\b\nc=d"}


def test_grub_editenv_reads_what_we_write(editenv, tmp_path):
    block = tmp_path / "grubenv"
    _editenv(editenv, block, "create")
    grubenv.rewrite(block, grubenv.render({"default_env": "env-2", "trial_env": "env-3", "odd": "x\\y\nz"}))
    assert os.path.getsize(block) == grubenv.SIZE
    listed = _editenv(editenv, block, "list")
    assert listed.startswith("default_env=env-2\ntrial_env=env-3\nodd=x\\y\nz\n"), listed
    _editenv(editenv, block, "set", "trial_env=")  # and GRUB's tool can go on editing it
    assert grubenv.parse(block.read_bytes())["trial_env"] == ""


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_characters="=\n\\#", blacklist_categories=("Cs",)),
                               min_size=1, max_size=12),
                       st.text(st.characters(blacklist_categories=("Cs",)), max_size=40), max_size=8))
def test_render_parse_round_trip(variables):
    assert grubenv.parse(grubenv.render(variables)) == variables


@pytest.mark.parametrize("damage", [
    lambda b: b[:-1],                                  # one byte short
    lambda b: b + b"#",                                # one byte long
    lambda b: b"# GRUB Environment Blocx" + b[24:],    # signature
    lambda b: b[:25] + b"no equals sign\n" + b[40:],   # not NAME=VALUE
    lambda b: b[:25] + b"x=\xff\xfe\n" + b[30:],         # not UTF-8
    lambda b: b[:25] + b"x=" + b"y" * (len(b) - 27),   # no end of line
])
def test_damaged_blocks_are_refused(damage):
    block = grubenv.render({"default_env": "env-1", "trial_env": ""})
    with pytest.raises(grubenv.BlockError):
        grubenv.parse(damage(block))


def test_render_refuses_what_grub_could_not_read_back():
    for name in ("", "#comment", "a=b", "a\nb", "a\\b"):
        with pytest.raises(grubenv.BlockError):
            grubenv.render({name: "x"})
    with pytest.raises(grubenv.BlockError, match="holds 1024"):
        grubenv.render({"x": "y" * 1024})


def test_rewrite_is_in_place_and_never_creates_or_resizes(tmp_path):
    block = tmp_path / "grubenv"
    with pytest.raises(FileNotFoundError):
        grubenv.rewrite(block, grubenv.render({}))
    assert not block.exists()
    block.write_bytes(b"#" * 512)
    with pytest.raises(grubenv.BlockError, match="512 bytes"):
        grubenv.rewrite(block, grubenv.render({}))
    assert block.read_bytes() == b"#" * 512
    block.write_bytes(grubenv.render({"default_env": "env-1"}))
    inode = block.stat().st_ino
    grubenv.rewrite(block, grubenv.render({"default_env": "env-2"}))
    assert block.stat().st_ino == inode  # the same file and clusters: no rename, no new file
    assert grubenv.parse(block.read_bytes()) == {"default_env": "env-2"}
    link = tmp_path / "link"
    link.symlink_to(block)
    with pytest.raises(OSError):
        grubenv.rewrite(link, grubenv.render({}))  # never through a symlink
