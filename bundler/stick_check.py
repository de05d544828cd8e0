"""The last step of ``bundle write``: the finished stick read as a device reads it.

Planning checks the bundles against the roots given on the command line, and each file is read
back as it is written; but a device reads the stick as a whole: the trust roots already on it
(a rotation written by an earlier write may have retired a signer), and every signature file in a
bundle's folder. So the write ends by reading the product's folder with the device's own readers
(agent/medium.py, agent/verify.py), from the oldest root given, and fails if a device would
refuse a bundle it was asked to carry.
"""

from __future__ import annotations

from pathlib import Path

from agent import medium
from agent.format import stick as stick_layout
from agent.verify import verify_bundle
from keys.detached import load_root_candidate
from keys.errors import Failed, UpdateError
from keys.rotation import VerifiedRoot, walk_chain


class DevicesWouldRefuse(Failed):
    """The stick was written, but a device reading it would not install a bundle on it."""


def check_as_a_device(stick: Path, product: str, anchor: VerifiedRoot, bundle_ids: list[str]) -> None:
    """Raises DevicesWouldRefuse naming the first bundle (or the trust chain) a device provisioned
    with ``anchor`` would refuse on ``stick``."""
    product_folder = stick_layout.product_folder(product)
    try:
        roots = [load_root_candidate(root.path) for root in medium.root_files(stick, product_folder)]
        newest = walk_chain(anchor, roots)
    except UpdateError as error:
        raise DevicesWouldRefuse(f"a device would refuse the stick's trust roots: {error}", where=stick,
                                 hint=f"remove {product_folder}/trust/ from the stick and write again") from None
    complete = {found.id: found for found in medium.complete_bundles(stick, product_folder)}
    for bundle_id in bundle_ids:
        found = complete.get(bundle_id)
        folder = stick_layout.bundles_dir(stick, product) / bundle_id
        if found is None:
            raise DevicesWouldRefuse("a device does not find this bundle complete", where=folder,
                                     hint="remove the folder from the stick and write again")
        try:
            files = medium.read_bundle(found.path, manifest_sha256=found.manifest_sha256)
            verify_bundle(files.manifest_bytes, files.signatures, newest, where=found.path)
        except UpdateError as error:
            raise DevicesWouldRefuse(f"a device would refuse this bundle: {error}", where=folder,
                                     hint=f"under trust root version {newest.version}, the newest on the stick, "
                                          "it must verify as it is: remove stray files from its folder, or make "
                                          "it with that root's release signers") from None
