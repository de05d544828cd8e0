"""Secret signing keys inside a release tree, which ``bundle make`` refuses to carry.

A bundle gives every file of its tree to every machine, and a machine is in the hands of whoever
opens its cabinet. A release key left in the tree (the signing machine's home copied into the
platform, a game studio's build folder) would let anyone who reads it there sign bundles that
every machine accepts, until the vendor revokes it (docs/TRUST.md). Public keys, trust roots and
signatures are what devices need; a secret key never is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

from agent.format.tree import FILE, Entry
from keys.errors import MalformedKey
from keys.secret_key import MAX_SECRET_KEY_FILE_BYTES, SecretKeyFile

# Both secret key formats (minisign's and the older one) start so (keys/secret_key.py): only
# files that do are read whole and parsed.
_FIRST_BYTES = b"untrusted comment: "


def secret_key_files(root: Path, entries: Iterable[Entry]) -> Iterator[str]:
    """The paths of the files of the tree at ``root`` that are secret key files of either format,
    encrypted or not, in listing order. Raises OSError naming the path."""
    for entry in entries:
        if entry.type != FILE or not len(_FIRST_BYTES) < entry.size <= MAX_SECRET_KEY_FILE_BYTES:
            continue
        path = root / entry.path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                data = os.read(fd, MAX_SECRET_KEY_FILE_BYTES + 1)
            finally:
                os.close(fd)
        except OSError as error:
            raise OSError(error.errno, error.strerror, str(path)) from None
        if not data.startswith(_FIRST_BYTES):
            continue
        try:
            SecretKeyFile.from_bytes(data)
        except MalformedKey:  # a public key, a signature, some other text
            continue
        yield entry.path
