"""The signed manifests of what is installed, kept per environment (docs/AGENT.md, "Kept manifests").

The device keeps the exact manifest bytes and signature files of the bundle each component of an
environment was installed from (the last step of its route), so that an audit of the installed
files and the anti-rollback floors after a lost state trust nothing but the trust root:

    STATE/manifests/<SHA-256>/manifest.json.zst                   the manifest, byte for byte
    STATE/manifests/<SHA-256>/manifest.json.zst.<KEY ID>.minisig  its signatures, as read
    STATE/environments/<ENV>.json   {"format": 1, "environment": ENV,
                                     "components": {NAME: {"manifest_sha256": .., "root_version": N}}}

A manifest folder is named by the SHA-256 of its manifest and shared by every environment whose
record names it. It is written under a temporary name and renamed into place, so a power cut leaves
it complete or absent (a temporary is removed by :func:`clean_orphans`); records are written with
write_atomic. A record and its folders are written while the environment is staged or provisioned,
before it is armed or committed; they are removed when the environment is destroyed.

Nothing here is trusted by being here: :func:`verified_kept` checks each manifest's release-signer
threshold under the device's own trust root of the version recorded, exactly as at install.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from agent.format.bundle_dir import MANIFEST
from agent.format.manifest import COMPONENT_NAME, MAX_STORED_MANIFEST_BYTES, Component, Manifest
from agent.state_dir import StateDir
from agent.verify import verify_bundle
from keys import strict_json
from keys.detached import load_signatures, signature_path
from keys.errors import Failed, UpdateError
from keys.files import fsync_directory, read_capped, remove_stale_temporaries, write_atomic
from keys.minisign import MAX_SIGNATURE_FILE_BYTES, Signature
from keys.rotation import VerifiedRoot

FORMAT = 1
MAX_RECORD_BYTES = 1 << 20  # a record names a few components; anything larger is not ours
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TEMPORARY_PREFIX = ".new-"  # a manifest folder being written: .new-<SHA-256>-<PID>


class KeptDamaged(Failed):
    """A kept record or manifest cannot be read or does not parse."""


@dataclass(frozen=True)
class KeptRecord:
    """Which kept manifest a component came from, and the trust-root version it was verified under."""

    manifest_sha256: str
    root_version: int

    def to_json(self) -> dict:
        return {"manifest_sha256": self.manifest_sha256, "root_version": self.root_version}


@dataclass(frozen=True)
class KeptManifest:
    """A kept manifest as read: its exact bytes and signatures, not yet verified."""

    manifest_sha256: str
    manifest_bytes: bytes
    signatures: tuple[Signature, ...]
    root_version: int


@dataclass(frozen=True)
class VerifiedKept:
    """One component of an environment as its kept manifest says, or why that cannot be trusted."""

    manifest_sha256: str | None
    component: Component | None  # None when ``problem`` says why
    problem: str | None = None


# --- paths --------------------------------------------------------------------------------------

def manifest_folder(state_dir: StateDir, manifest_sha256: str) -> Path:
    assert _SHA256.fullmatch(manifest_sha256), "named by a hash the agent computed"
    return state_dir.manifests / manifest_sha256


def record_path(state_dir: StateDir, environment: str) -> Path:
    # Environment names come from the backend (env-N, or the installer's), never from a medium; a
    # name that could leave the folder is a programmer's mistake.
    assert environment and "/" not in environment and not environment.startswith("."), environment
    return state_dir.environments / f"{environment}.json"


# --- writing ------------------------------------------------------------------------------------

def keep_manifest(state_dir: StateDir, manifest_bytes: bytes, signatures: Sequence[Signature]) -> str:
    """Keep a manifest and its signatures; returns its SHA-256. Already kept intact: nothing is
    written (a folder exists only complete: it is renamed into place); kept but altered since:
    written again. Raises Failed."""
    sha256 = hashlib.sha256(manifest_bytes).hexdigest()
    final = manifest_folder(state_dir, sha256)
    if final.is_dir() and _holds(final, manifest_bytes, signatures):
        return sha256
    temporary = state_dir.manifests / f"{_TEMPORARY_PREFIX}{sha256}-{os.getpid()}"
    try:
        state_dir.manifests.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        if final.exists() or final.is_symlink():  # altered: its name is taken, moved out of the way
            os.rename(final, temporary.with_name(temporary.name + "-old"))
            shutil.rmtree(temporary.with_name(temporary.name + "-old"), ignore_errors=True)
        temporary.mkdir(mode=0o750)
        write_atomic(temporary / MANIFEST, manifest_bytes, mode=0o640)
        for signature in signatures:
            write_atomic(signature_path(temporary / MANIFEST, signature.key_id_text), signature.to_bytes(),
                         mode=0o640)
        os.rename(temporary, final)
        fsync_directory(state_dir.manifests)
    except (OSError, UpdateError) as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, UpdateError):
            raise  # write_atomic's Failed names the file
        raise Failed(f"cannot keep the signed manifest: {error.strerror or error}", where=error.filename or final,
                     hint="the state directory's filesystem must be writable and have free space") from None
    return sha256


def _holds(folder: Path, manifest_bytes: bytes, signatures: Sequence[Signature]) -> bool:
    """Whether a kept folder still holds exactly this manifest and these signatures."""
    try:
        return read_capped(folder / MANIFEST, MAX_STORED_MANIFEST_BYTES, what="kept manifest") == manifest_bytes \
            and all(read_capped(signature_path(folder / MANIFEST, signature.key_id_text), MAX_SIGNATURE_FILE_BYTES,
                                what="kept signature") == signature.to_bytes() for signature in signatures)
    except UpdateError:
        return False


def keep_environment(state_dir: StateDir, environment: str,
                     components: Mapping[str, tuple[bytes, Sequence[Signature], int]],
                     inherited: Mapping[str, KeptRecord] | None = None) -> dict[str, KeptRecord]:
    """Record what ``environment`` holds: for each updated component ``(manifest bytes, signatures,
    trust-root version)``, kept first; ``inherited``: the records of the components it did not
    update (the running environment's, :func:`environment_records`). The manifests are on disk
    before the record that names them. Returns the record's components. Raises Failed."""
    records = dict(inherited or {})
    for name, (manifest_bytes, signatures, root_version) in components.items():
        records[name] = KeptRecord(keep_manifest(state_dir, manifest_bytes, signatures), root_version)
    document = {"format": FORMAT, "environment": environment,
                "components": {name: record.to_json() for name, record in sorted(records.items())}}
    path = record_path(state_dir, environment)
    try:
        state_dir.environments.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise Failed(f"cannot create the folder of kept records: {error.strerror}", where=state_dir.environments,
                     hint="the state directory's filesystem must be writable") from None
    write_atomic(path, strict_json.dumps(document), mode=0o640)
    return records


def forget_environment(state_dir: StateDir, environment: str) -> None:
    """Remove ``environment``'s record (its manifests go with :func:`clean_orphans` when no other
    record names them). Best effort: a record left behind is an orphan, removed later."""
    try:
        record_path(state_dir, environment).unlink(missing_ok=True)
    except OSError:
        pass


def clean_orphans(state_dir: StateDir, existing: set[str]) -> list[str]:
    """Remove the records of environments not in ``existing`` (the backend no longer has them), then
    the manifest folders no remaining record names and the temporaries of an interrupted write.
    A damaged record is kept (a technician may look) but names nothing. Returns what was removed."""
    removed = []
    named: set[str] = set()
    remove_stale_temporaries(state_dir.environments)  # a record's write cut short
    for path in _listing(state_dir.environments):
        if not path.name.endswith(".json") or path.name.startswith("."):
            continue
        environment = path.name[:-len(".json")]
        if environment not in existing:
            path.unlink(missing_ok=True)
            removed.append(f"environments/{path.name}")
            continue
        try:
            named |= {r.manifest_sha256 for r in environment_records(state_dir, environment).values()}
        except KeptDamaged:
            pass
    for path in _listing(state_dir.manifests):
        if path.name in named:
            continue
        if _SHA256.fullmatch(path.name) or path.name.startswith(_TEMPORARY_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"manifests/{path.name}")
    return removed


def _listing(directory: Path) -> list[Path]:
    try:
        return sorted(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


# --- reading ------------------------------------------------------------------------------------

def environment_records(state_dir: StateDir, environment: str) -> dict[str, KeptRecord]:
    """The record of ``environment``: component -> KeptRecord; {} when there is none (an
    environment made before manifests were kept). Raises KeptDamaged."""
    path = record_path(state_dir, environment)
    try:
        data = read_capped(path, MAX_RECORD_BYTES, what="kept record")
    except UpdateError as error:
        if not path.exists() and not path.is_symlink():
            return {}
        raise KeptDamaged(f"the kept record of {environment} cannot be read: {error.message}", where=path) from None
    try:
        return parse_record(data, environment)
    except ValueError as error:
        raise KeptDamaged(f"the kept record of {environment} is damaged: {error}", where=path,
                          hint="audit the environment; its manifests cannot be trusted from this record") from None


def parse_record(data: bytes, environment: str) -> dict[str, KeptRecord]:
    """Pure: a record's bytes -> component -> KeptRecord. Raises ValueError (JSONShapeError)."""
    document = strict_json.loads(data, limit=MAX_RECORD_BYTES)
    context = "kept record"
    if set(document) != {"format", "environment", "components"}:
        raise strict_json.JSONShapeError(f"{context}: fields must be format, environment, components")
    if strict_json.field(document, "format", int, context=context) != FORMAT:
        raise strict_json.JSONShapeError(f"{context}: not format {FORMAT}")
    if strict_json.field(document, "environment", str, context=context) != environment:
        raise strict_json.JSONShapeError(f"{context}: names environment {document['environment']!r}, "
                                         f"not {environment!r}")
    records = {}
    for name, value in strict_json.field(document, "components", dict, context=context).items():
        where = f"{context}: component {name!r}"
        if not COMPONENT_NAME.fullmatch(name) or not isinstance(value, dict) \
                or set(value) != {"manifest_sha256", "root_version"}:
            raise strict_json.JSONShapeError(f"{where} is not a component name with manifest_sha256 and root_version")
        sha256 = strict_json.field(value, "manifest_sha256", str, context=where)
        version = strict_json.field(value, "root_version", int, context=where)
        if not _SHA256.fullmatch(sha256) or version < 1:
            raise strict_json.JSONShapeError(f"{where}: not a SHA-256 and a trust-root version")
        records[name] = KeptRecord(sha256, version)
    return records


def read_kept(state_dir: StateDir, record: KeptRecord) -> KeptManifest:
    """The kept manifest a record names, checked against its name. Raises KeptDamaged."""
    folder = manifest_folder(state_dir, record.manifest_sha256)
    path = folder / MANIFEST
    try:
        data = read_capped(path, MAX_STORED_MANIFEST_BYTES, what="kept manifest")
        signatures = tuple(load_signatures(path))
    except UpdateError as error:
        raise KeptDamaged(f"the kept manifest {record.manifest_sha256[:16]}... cannot be read: {error.message}",
                          where=folder) from None
    if hashlib.sha256(data).hexdigest() != record.manifest_sha256:
        raise KeptDamaged(f"the kept manifest {record.manifest_sha256[:16]}... does not match its name (altered)",
                          where=folder)
    return KeptManifest(record.manifest_sha256, data, signatures, record.root_version)


def kept_components(state_dir: StateDir, environment: str) -> dict[str, KeptManifest | KeptDamaged]:
    """Each component of ``environment``'s record with its kept manifest as read (not verified),
    or the KeptDamaged saying why it cannot be read. Raises KeptDamaged for a damaged record."""
    result: dict[str, KeptManifest | KeptDamaged] = {}
    for name, record in environment_records(state_dir, environment).items():
        try:
            result[name] = read_kept(state_dir, record)
        except KeptDamaged as error:
            result[name] = error
    return result


def kept_component(state_dir: StateDir, environment: str, name: str) -> Component | None:
    """Component ``name`` as the kept manifest of ``environment`` lists it, or None when none is
    kept or it cannot be read. Not verified against the trust root: it is used only to name a
    base file that differs when a delta fails to rebuild (agent/apply.py, BaseTree), a refusal
    that happens either way."""
    try:
        record = environment_records(state_dir, environment).get(name)
        if record is None:
            return None
        return Manifest.from_stored(read_kept(state_dir, record).manifest_bytes).component(name)
    except UpdateError:  # KeptDamaged, a manifest that does not parse
        return None


def verify_kept_manifest(kept: KeptManifest, roots: Mapping[int, VerifiedRoot]) -> Manifest | str:
    """Pure: the kept manifest, if a threshold of the release signers of the device's trust root of
    the recorded version signed its exact bytes (as at install, agent/verify.py); else why not."""
    root = roots.get(kept.root_version)
    if root is None:
        return f"recorded under trust-root version {kept.root_version}, which this device never accepted"
    try:
        return verify_bundle(kept.manifest_bytes, kept.signatures, root).manifest
    except UpdateError as error:
        return f"the kept manifest does not verify: {error.message}"


def verified_kept(state_dir: StateDir, environment: str, roots: Mapping[int, VerifiedRoot]) -> dict[str, VerifiedKept]:
    """Each component ``environment``'s record names, from its verified kept manifest (or the
    problem); the components of one bundle verify and parse it once. Raises KeptDamaged for a
    damaged record."""
    verified: dict = {}  # (SHA-256, trust-root version) -> Manifest, or why not
    result = {}
    for name, record in environment_records(state_dir, environment).items():
        key = (record.manifest_sha256, record.root_version)
        if key not in verified:
            try:
                verified[key] = verify_kept_manifest(read_kept(state_dir, record), roots)
            except KeptDamaged as error:
                verified[key] = error.message
        manifest = verified[key]
        if isinstance(manifest, str):
            result[name] = VerifiedKept(record.manifest_sha256, None, manifest)
        elif (component := manifest.component(name)) is None:
            result[name] = VerifiedKept(record.manifest_sha256, None, f"the kept manifest does not list {name}")
        else:
            result[name] = VerifiedKept(record.manifest_sha256, component)
    return result
