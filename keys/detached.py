"""Where detached signatures live beside a signed document, and loading them.

Naming (docs/TRUST.md, "Signature files"): each key holder's signature of ``DOC`` is
``DOC.<KEY ID>.minisig``, so holders sign separately and their files never collide, and each one
is checked with the standard tool: ``minisign -V -p KEY.pub -m DOC -x DOC.<KEY ID>.minisig``.
``DOC.minisig`` (minisign's own default name) is read too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from keys.errors import Failed, MalformedSignature
from keys.files import read_capped
from keys.minisign import MAX_SIGNATURE_FILE_BYTES, Signature
from keys.rotation import RootCandidate
from keys.trust_root import MAX_ROOT_BYTES, TrustRoot

SUFFIX = ".minisig"
MAX_SIGNATURE_FILES = 64
MAX_LISTED_ENTRIES = 1 << 16  # in a signed document's folder: ~20 MB of names at most
_KEY_ID = re.compile(r"[0-9A-F]{16}")


def signature_path(document: Path, key_id: str) -> Path:
    return document.with_name(f"{document.name}.{key_id}{SUFFIX}")


def signature_paths(document: Path) -> list[Path]:
    """The signature files of ``document`` present in its directory, in name order. The listing
    is read as it comes and stops at MAX_LISTED_ENTRIES: a stick's bundle folder is reached with
    no signature at all, and an ext4 stick can hold millions of names there."""
    found = []
    try:
        with os.scandir(document.parent) as listing:
            for count, entry in enumerate(listing):
                if count >= MAX_LISTED_ENTRIES:
                    raise Failed(f"more than {MAX_LISTED_ENTRIES} entries beside {document.name}",
                                 where=document.parent, hint="a signed document's folder holds it, its signatures "
                                                             "and little else")
                name = entry.name
                if name == document.name + SUFFIX or (
                        name.startswith(document.name + ".") and name.endswith(SUFFIX)
                        and _KEY_ID.fullmatch(name[len(document.name) + 1:-len(SUFFIX)])):
                    found.append(document.with_name(name))
                    if len(found) > MAX_SIGNATURE_FILES:
                        raise Failed(f"more than {MAX_SIGNATURE_FILES} signature files", where=document.parent)
    except OSError as error:
        raise Failed(f"cannot list the directory: {error.strerror}", where=document.parent) from None
    return sorted(found)


def load_signatures(document: Path) -> list[Signature]:
    """Read and parse every signature of ``document``. A ``DOC.<KEY ID>.minisig`` must hold that
    key's signature: files are stored by that name, so one named for another key could take the
    place of its good signature. Raises MalformedSignature, Failed."""
    signatures = []
    for path in signature_paths(document):
        signature = Signature.from_bytes(read_capped(path, MAX_SIGNATURE_FILE_BYTES, what="signature file"),
                                         where=path)
        named = path.name[len(document.name) + 1:-len(SUFFIX)]
        if named and named != signature.key_id_text:
            raise MalformedSignature(f"the file is named for key {named} but holds a signature by key "
                                     f"{signature.key_id_text}", where=path,
                                     hint=f"name it {signature_path(document, signature.key_id_text).name}, "
                                          "or remove it")
        signatures.append(signature)
    return signatures


def load_root_candidate(path: Path) -> RootCandidate:
    """A trust-root file and its signatures, read but not yet verified."""
    path = Path(path)
    raw = read_capped(path, MAX_ROOT_BYTES, what="trust root")
    return RootCandidate(raw=raw, signatures=load_signatures(path), where=str(path))


def load_root_chain(paths: Sequence[Path]) -> list[RootCandidate]:
    """Trust-root files with their signatures, oldest version first (for ``accept_chain``)."""
    candidates = [load_root_candidate(p) for p in paths]
    return sorted(candidates, key=lambda c: TrustRoot.from_bytes(c.raw, where=c.where).version)
