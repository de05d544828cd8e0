"""``bundle verify``: check a bundle exactly as a device would, optionally applying it.

Signatures against the trust root's threshold, the manifest's rules, every stored byte's hash;
with base trees, the device's own apply engine builds each component in a temporary directory
and every resulting file is checked against the manifest.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from agent.apply import apply_component, verify_staged
from agent.known_hashes import KnownHashes
from agent.format.bundle_dir import manifest_path
from agent.format.tree import FILE, tree_digest
from agent.medium import read_bundle
from agent.mounts import UNMOUNT_HINT
from agent.payload import Payload
from agent.scan import as_content, scan_tree
from agent.verify import VerifiedBundle, verify_bundle
from agent.progress import Progress, step_counter
from keys.errors import Refused
from keys.rotation import VerifiedRoot


def check_bundle(bundle: Path, root: VerifiedRoot, bases: dict[str, Path], *, apply: bool = False,
                 work_dir: Path | None = None, progress: Progress | None = None,
                 manifest_sha256: str | None = None,
                 strict_bases: bool = True) -> tuple[VerifiedBundle, dict[str, str]]:
    """Returns the verified bundle and, per component, what was checked. With ``apply`` (implied
    by ``bases``) every full component, and every delta whose base is given, is built and checked.

    ``manifest_sha256``: what a stick's COMPLETE marker names (checked as a device checks it).
    ``strict_bases`` False (a stick of several bundles): a ``--base`` that is not a bundle's base
    is reported for that bundle instead of refusing it.

    Raises ThresholdNotMet, MalformedManifest, CorruptPayload, CorruptObject, StagingError, Refused.
    """
    files = read_bundle(bundle, manifest_sha256=manifest_sha256)
    verified = verify_bundle(files.manifest_bytes, files.signatures, root, where=manifest_path(bundle))
    manifest = verified.manifest
    for name in bases:
        if manifest.component(name) is None and strict_bases:
            raise Refused(f"--base names component {name!r}, which this bundle does not carry",
                          hint="components: " + ", ".join(c.name for c in manifest.components))
    outcome = {}
    as_root = os.geteuid() == 0
    with Payload(bundle, manifest) as payload:
        payload.verify_all(step_counter(progress, "verifying payload", manifest.payload_size))
        for component in manifest.components:
            base = bases.get(component.name)
            if not (apply or bases) or (component.is_delta and base is None):
                outcome[component.name] = ("signatures, manifest and stored objects verified; not applied" +
                                           (" (a delta: give --base to apply it)" if component.is_delta else ""))
                continue
            if component.is_delta:
                base_digest = _tree_digest(base, component.policy)
                if base_digest != component.base.tree_digest and not strict_bases:
                    outcome[component.name] = (f"signatures, manifest and stored objects verified; not applied "
                                               f"({base} is not the base of this delta: version "
                                               f"{component.base.version}, sequence {component.base.sequence})")
                    continue
                if base_digest != component.base.tree_digest:
                    raise Refused(f"{base} is not the base of {component.name}'s delta (version "
                                  f"{component.base.version}, sequence {component.base.sequence}): its tree differs",
                                  hint="name the tree this delta was made from")
            scratch = Path(tempfile.mkdtemp(prefix="bundle-verify-", dir=work_dir))
            try:
                target = scratch / "tree"
                written = sum(e.size for e in component.entries if e.type == FILE)
                with KnownHashes() as known:
                    apply_component(component, payload, target, base=base, set_owner=as_root, known=known,
                                    progress=step_counter(progress, f"applying {component.name}", written))
                    verify_staged(component, target, check_owner=as_root, known=known)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            outcome[component.name] = (f"applied{' onto ' + str(base) if base else ''}: every file matches "
                                       f"the manifest ({len(component.entries)} entries)")
    return verified, outcome


def _tree_digest(tree: Path, policy: str) -> str:
    """The digest of ``tree`` as a component of ``policy`` lists it. Its listing is not kept: 40
    MiB at the entry limit, while the new tree is built. A filesystem mounted inside it is refused,
    as bundle make refuses one (a chroot's /proc never ends)."""
    mounted: list[str] = []
    entries = scan_tree(tree, mounts=mounted, enter=())  # the scan finds them: no second walk
    if mounted:
        raise Refused(f"another filesystem is mounted here, inside the base tree {tree}", where=tree / mounted[0],
                      hint=UNMOUNT_HINT)
    return tree_digest(as_content(entries) if policy == "content" else entries)
