"""Parameter types shared by the ``bundle`` commands."""

from __future__ import annotations

import re
from pathlib import Path

import click

from agent.format.manifest import MAX_VOLUME_BYTES

EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
EXISTING_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


def root_chain_option(purpose: str, *, required: bool = False):
    """``--root FILE``: a chain of trust roots is given the same way by every command of both
    command lines (``root verify`` included) - one ``--root`` per version, in any order."""
    return click.option("--root", "root_paths", type=EXISTING_FILE, multiple=True, required=required,
                        help=f"{purpose} Repeat once per version of a rotated chain, in any order.")
_SIZE = re.compile(r"(\d+)([KMGkmg]?)(i?B)?")


class ByteSize(click.ParamType):
    """``2G``, ``512M``, ``4K`` or a byte count; at most what a FAT32 file can hold."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = _SIZE.fullmatch(value.strip())
        if not match:
            self.fail(f"{value!r} is not a size like 2G, 512M or 1048576", param, ctx)
        number = int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]
        if not 4096 <= number <= MAX_VOLUME_BYTES:
            self.fail(f"{value!r} must be between 4K and {MAX_VOLUME_BYTES} bytes (FAT32's 4 GiB - 1 limit)",
                      param, ctx)
        return number
