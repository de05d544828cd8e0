"""A stick simulator: models of trust roots and bundles, with their signers, written as real files.

In the spirit of python-tuf's ``tests/repository_simulator.py``: the simulator holds *models* -
trust roots (``keys/trust_root.py``) with the names of the keys that sign them, bundle manifests
(the dataclasses of ``agent/format/manifest.py``) with their volumes' bytes and signers - and
writes real files onto a stick directory in the layout of docs/STICK.md, re-serialising and
re-signing everything at write time. An attack is a one-line change to the model before
:meth:`StickSim.write`::

    sim.bundle("d12").signers = ["rel1"]                          # below threshold
    sim.bundle("d12").volume_bytes[0] = flip(sim.bundle("d12").volume_bytes[0])   # no keys needed
    sim.bundle("d12").edit("game/fortune-wheel", add=[...])       # an insider with the signing keys
    sim.rotate(remove_signers=["rel1"], add_signers=["rel3"])     # the next trust root

The honest starting point comes from the real tools: ``bundle make`` output (``World.bundles``)
is loaded with ``Manifest.from_stored`` and raw volume bytes, the provisioned root with its
signature files. Written unchanged, the model gives the same bytes ``bundle write`` gives
(tests/test_hostile_sticks.py checks this), so every difference on a hostile stick is the attack.

Signing uses the world's secret keys (``keys.secret_key.SecretKeyFile``, unencrypted test keys)
and in-memory keys for outsiders: any name the world does not have (``"mallory"``) is a fresh key
made on first use. The device under test never sees this module: it runs the real
``bundle-agent`` against the files written here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from agent.format import codec, stick
from agent.format.bundle_dir import MANIFEST, PAYLOAD
from agent.format.manifest import Component, Manifest, StoredObject, Volume, signature_comment, store
from agent.format.tree import Entry, path_order, tree_digest
from keys.detached import load_signatures, signature_path
from keys.minisign import Signature
from keys.secret_key import SecretKey, SecretKeyFile
from keys.signing import sign
from keys.trust_root import NamedKey, TrustRoot
from tests.sim.tools import make_unix_socket

PRODUCT = "demo-cabinet"


def flip(data: bytes, offset: int | None = None, bit: int = 0) -> bytes:
    """``data`` with one bit flipped (in the middle unless ``offset`` says where)."""
    position = len(data) // 2 if offset is None else offset
    changed = bytearray(data)
    changed[position] ^= 1 << bit
    return bytes(changed)


class Keys:
    """Secret keys by name: the world's (its unencrypted ``.key`` files) and outsiders' made on
    first use, so ``"mallory"`` is the same forged key every time it is named."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._secrets: dict[str, SecretKey] = {}

    def secret(self, name: str) -> SecretKey:
        if name not in self._secrets:
            path = self.directory / f"{name}.key"
            if path.exists():
                self._secrets[name] = SecretKeyFile.from_bytes(path.read_bytes(), where=path).decrypt(None)
            else:
                self._secrets[name] = SecretKey.generate()
        return self._secrets[name]

    def named(self, name: str) -> NamedKey:
        return NamedKey(public_key=self.secret(name).public_key, name=name)

    def id(self, name: str) -> str:
        return self.secret(name).id


@dataclass
class RootModel:
    """One trust-root version on the stick: the document, who signs it, and how it is stored."""

    root: TrustRoot
    signers: list[str]
    keys: Keys
    raw: bytes | None = None  # exact file bytes instead of ``root.to_bytes()`` (tampering, foreign JSON)
    name: str | None = None  # file name instead of root-<version>.json
    comment: str | None = None  # trusted comment; default as ``bundle root sign`` writes it
    foreign: list[Signature] = field(default_factory=list)  # signatures made over other bytes
    signature_files: dict[str, bytes] = field(default_factory=dict)  # raw files by name, added last

    @property
    def file_name(self) -> str:
        return self.name or stick.root_name(self.root.version)

    def data(self) -> bytes:
        return self.raw if self.raw is not None else self.root.to_bytes()

    def trusted_comment(self) -> str:
        return self.comment or f"trust-root version:{self.root.version} file:{self.file_name}"

    def signatures(self, data: bytes | None = None) -> list[Signature]:
        """The signers' signatures over the file (or ``data``), as ``bundle root sign`` makes them."""
        data = self.data() if data is None else data
        return [sign(self.keys.secret(name), data, self.trusted_comment()) for name in self.signers]


@dataclass
class BundleModel:
    """One bundle on the stick: its manifest model, its volumes' bytes and its signers.

    At write time the manifest is serialised (``manifest_json`` or ``manifest.to_bytes()``),
    compressed into the stored file (``stored`` overrides both), and signed by ``signers`` over
    those exact bytes; ``foreign`` signatures (made over other bytes) and raw ``signature_files``
    are written beside them. ``volume_bytes[i]`` is written under the manifest's i-th volume name
    (``None``: not written; entries beyond the manifest's volumes: named by their own SHA-256).
    """

    manifest: Manifest
    volume_bytes: list[bytes | None]
    signers: list[str]
    keys: Keys
    level: int | None = None  # of the manifest's frame; None: as bundle make stores it
    manifest_json: bytes | None = None
    stored: bytes | None = None
    foreign: list[Signature] = field(default_factory=list)
    signature_files: dict[str, bytes] = field(default_factory=dict)
    complete: bool = True  # write a COMPLETE marker
    marker: bytes | None = None  # its bytes instead of the manifest file's SHA-256
    folder: str | None = None  # the bundle folder's name; default: its ID

    # --- what gets written ----------------------------------------------------------------

    def manifest_file(self) -> bytes:
        if self.stored is not None:
            return self.stored
        manifest_json = self.manifest_json if self.manifest_json is not None else self.manifest.to_bytes()
        return store(manifest_json) if self.level is None else codec.compress(manifest_json, self.level)

    def signatures(self, data: bytes | None = None) -> list[Signature]:
        """The signers' signatures over the manifest file (or ``data``), as ``bundle make`` signs."""
        data = self.manifest_file() if data is None else data
        return [sign(self.keys.secret(name), data, signature_comment(self.manifest.product))
                for name in self.signers]

    def sign_with(self, *names: str) -> "BundleModel":
        self.signers = list(names)
        return self

    # --- an insider's tools: change the payload or the listing, keep everything consistent ----

    def payload(self) -> bytes:
        return b"".join(v for v in self.volume_bytes[:len(self.manifest.volumes)] if v is not None)

    def objects(self) -> list[tuple[StoredObject, bytes]]:
        """The objects of the payload and their bytes (a block's members stay with their block)."""
        payload = self.payload()
        return [(o, payload[o.offset:o.offset + o.size]) for o in self.manifest.objects if o.block is None]

    def repack(self, objects: Iterable[tuple[StoredObject, bytes]] | None = None,
               volume_size: int | None = None) -> "BundleModel":
        """Lay ``objects`` (default: the current ones) end to end, cut the payload into volumes of
        ``volume_size`` (default: the current first volume's size, when there are several) and
        make the manifest's objects and volumes match, as a build machine would. Object ids are
        kept as given."""
        if volume_size is None and len(self.manifest.volumes) > 1:
            volume_size = self.manifest.volumes[0].size
        objects = list(self.objects() if objects is None else objects)
        members = [o for o in self.manifest.objects if o.block is not None]
        placed, offset = [], 0
        for stored, data in objects:
            placed.append(replace(stored, offset=offset, size=len(data)))
            placed += [m for m in members if m.block == stored.id]  # listed right after their block
            offset += len(data)
        payload = b"".join(data for _, data in objects)
        size = volume_size or max(len(payload), 1)
        self.volume_bytes = [payload[i:i + size] for i in range(0, len(payload), size)]
        self.manifest = replace(self.manifest, objects=tuple(placed))
        return self.sync_volumes()

    def sync_volumes(self) -> "BundleModel":
        """Make the manifest's volume list name and hash the current ``volume_bytes``."""
        volumes = []
        for data in self.volume_bytes:
            digest = hashlib.sha256(data).hexdigest()
            volumes.append(Volume(name=f"{digest}.vol", size=len(data), sha256=digest))
        self.manifest = replace(self.manifest, volumes=tuple(volumes))
        return self

    def replace_object(self, object_id: str, data: bytes, *, encoding: str | None = None,
                       keep_id: bool = False) -> str:
        """Store ``data`` in place of an object of the payload (its id becomes their SHA-256 unless
        ``keep_id``), point every chunk (or member of the block) that used it at the new id, and
        repack. Returns the new id."""
        new_id = object_id if keep_id else hashlib.sha256(data).hexdigest()
        objects = [(replace(o, id=new_id, encoding=encoding or o.encoding), data) if o.id == object_id else (o, d)
                   for o, d in self.objects()]
        self.manifest = replace(self.manifest, objects=tuple(  # a block's members follow it
            replace(o, block=new_id) if o.block == object_id else o for o in self.manifest.objects))
        components = []
        for component in self.manifest.components:
            entries = tuple(replace(e, chunks=tuple(replace(c, object=new_id) if c.object == object_id else c
                                                    for c in e.chunks)) for e in component.entries)
            components.append(replace(component, entries=entries))
        self.manifest = replace(self.manifest, components=tuple(components))
        self.repack(objects)
        return new_id

    def component(self, name: str) -> Component:
        found = self.manifest.component(name)
        assert found is not None, f"no component {name} in this bundle"
        return found

    def entry(self, component: str, path: str) -> Entry:
        return next(e for e in self.component(component).entries if e.path == path)

    def set_component(self, name: str, /, **changes) -> "BundleModel":
        """Change a component's fields (sequence, targets, base...), keeping the others."""
        components = tuple(replace(c, **changes) if c.name == name else c for c in self.manifest.components)
        self.manifest = replace(self.manifest, components=components)
        return self

    def only(self, *names: str) -> "BundleModel":
        """Keep only these components (their objects stay: unused objects are allowed)."""
        self.manifest = replace(self.manifest, components=tuple(self.component(n) for n in names))
        return self

    def edit(self, component: str, *, add: Iterable[Entry] = (), change: dict[str, dict] | None = None,
             drop: Iterable[str] = (), digest: bool = True) -> "BundleModel":
        """Add entries, change fields of entries by path, drop paths; keep the listing order and
        (unless ``digest=False``) a matching tree digest, as a compromised build machine would, so
        each attack meets the rule it is aimed at rather than the digest check."""
        dropped = set(drop)
        entries = [replace(e, **(change or {}).get(e.path, {})) for e in self.component(component).entries
                   if e.path not in dropped]
        entries = sorted([*entries, *add], key=lambda e: path_order(e.path))
        changes: dict = {"entries": tuple(entries)}
        if digest:
            changes["tree_digest"] = tree_digest(entries)
        return self.set_component(component, **changes)

    def folder_name(self) -> str:
        return self.folder or stick.bundle_id(self.manifest_file())


def file_entry(path: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0, **more) -> Entry:
    """A file entry with this content's size and SHA-256 (chunks or base given in ``more``)."""
    return Entry(path=path, type="file", mode=mode, uid=uid, gid=gid, mtime=0, size=len(data),
                 sha256=hashlib.sha256(data).hexdigest(), **more)


def dir_entry(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path=path, type="dir", mode=mode, uid=uid, gid=gid, mtime=0)


def symlink_entry(path: str, target: str) -> Entry:
    return Entry(path=path, type="symlink", uid=0, gid=0, mtime=0, target=target)


def hardlink_entry(path: str, target: str) -> Entry:
    return Entry(path=path, type="hardlink", target=target)


class StickSim:
    """Trust roots and bundles for one product, written as a stick in the layout of docs/STICK.md.

    ``roots`` are written as given (oldest first is the convention, not a requirement);
    ``bundles`` by name; ``after`` holds callables run on the stick's directory once everything
    is written (for what no model can say: a FIFO, a symlink, a file that is not ours).
    """

    def __init__(self, world, product: str = PRODUCT):
        self.world = world
        self.product = product
        self.keys = Keys(world.keys)
        self.roots: list[RootModel] = [self._load_root(Path(world.root))]
        self.bundles: dict[str, BundleModel] = {}
        self.after: list[Callable[[Path], None]] = []

    def _load_root(self, path: Path) -> RootModel:
        raw = path.read_bytes()
        root = TrustRoot.from_bytes(raw, where=path)
        signed_by = {s.key_id_text for s in load_signatures(path)}
        signers = [k.name for k in root.root_keys.keys if k.id in signed_by]
        return RootModel(root=root, signers=signers, keys=self.keys, raw=None if root.to_bytes() == raw else raw,
                         comment=f"trust-root version:{root.version} file:{path.name}")

    # --- the models -----------------------------------------------------------------------

    def add(self, name: str, source: Path | None = None) -> BundleModel:
        """Load a bundle made by ``bundle make`` (``World.bundles/<name>`` unless ``source``)."""
        directory = Path(source or self.world.bundles / name)
        stored = (directory / MANIFEST).read_bytes()
        manifest = Manifest.from_stored(stored, where=directory)
        signed_by = {s.key_id_text for s in load_signatures(directory / MANIFEST)}
        signers = [n for n in ("rel1", "rel2", "rel3") if self.keys.id(n) in signed_by]
        volumes = [(directory / PAYLOAD / v.name).read_bytes() for v in manifest.volumes]
        model = BundleModel(manifest=manifest, volume_bytes=volumes, signers=signers, keys=self.keys)
        assert model.manifest_file() == stored, "the model must re-serialise to the bytes bundle make wrote"
        self.bundles[name] = model
        return model

    def bundle(self, name: str) -> BundleModel:
        return self.bundles[name] if name in self.bundles else self.add(name)

    def sign_with(self, *names: str) -> None:
        """Every bundle signed by exactly these keys."""
        for model in self.bundles.values():
            model.signers = list(names)

    @property
    def root(self) -> TrustRoot:
        return self.roots[-1].root

    def rotate(self, *, add_root_keys: Iterable[str] = (), remove_root_keys: Iterable[str] = (),
               add_signers: Iterable[str] = (), remove_signers: Iterable[str] = (),
               root_threshold: int | None = None, threshold: int | None = None,
               signers: Iterable[str] | None = None, append: bool = True) -> RootModel:
        """The next version of the last root, as ``bundle root rotate`` makes it, signed (unless
        ``signers`` says otherwise) by every old and new root key, as the ceremony requires."""
        old = self.root
        new = old.rotated(add_root_keys=[self.keys.named(n) for n in add_root_keys],
                          remove_root_keys=[self.keys.id(n) for n in remove_root_keys],
                          add_signers=[self.keys.named(n) for n in add_signers],
                          remove_signers=[self.keys.id(n) for n in remove_signers],
                          root_threshold=root_threshold, threshold=threshold)
        if signers is None:
            signers = sorted({k.name for k in (*old.root_keys.keys, *new.root_keys.keys)})
        model = RootModel(root=new, signers=list(signers), keys=self.keys)
        if append:
            self.roots.append(model)
        return model

    def add_root(self, root: TrustRoot, signers: Iterable[str], **fields) -> RootModel:
        """Any root document at all (an attacker's, one no ceremony would make), signed by these keys."""
        model = RootModel(root=root, signers=list(signers), keys=self.keys, **fields)
        self.roots.append(model)
        return model

    # --- writing ----------------------------------------------------------------------------

    def write(self, path: Path) -> Path:
        """Write every root and bundle under ``path/<product>/``; returns ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.roots:
            trust = path / self.product / stick.TRUST
            trust.mkdir(parents=True, exist_ok=True)
            for model in self.roots:
                document = trust / model.file_name
                data = model.data()
                document.write_bytes(data)
                for signature in [*model.signatures(data), *model.foreign]:
                    signature_path(document, signature.key_id_text).write_bytes(signature.to_bytes())
                for name, content in model.signature_files.items():
                    (trust / name).write_bytes(content)
        for model in self.bundles.values():
            self._write_bundle(path, model)
        for hook in self.after:
            hook(path)
        return path

    def _write_bundle(self, path: Path, model: BundleModel) -> None:
        folder = path / self.product / stick.BUNDLES / model.folder_name()
        (folder / PAYLOAD).mkdir(parents=True, exist_ok=True)
        stored = model.manifest_file()
        manifest = folder / MANIFEST
        manifest.write_bytes(stored)
        for signature in [*model.signatures(stored), *model.foreign]:
            signature_path(manifest, signature.key_id_text).write_bytes(signature.to_bytes())
        for name, content in model.signature_files.items():
            (folder / name).write_bytes(content)
        names = [v.name for v in model.manifest.volumes]
        for index, data in enumerate(model.volume_bytes):
            if data is None:
                continue
            name = names[index] if index < len(names) else f"{hashlib.sha256(data).hexdigest()}.vol"
            (folder / PAYLOAD / name).write_bytes(data)
        if model.complete:
            marker = stick.complete_marker(stored) if model.marker is None else model.marker
            (folder / stick.COMPLETE).write_bytes(marker)

    # --- where things land, for the ``after`` hooks -------------------------------------------

    def trust_dir(self, path: Path) -> Path:
        return Path(path) / self.product / stick.TRUST

    def bundle_dir(self, path: Path, name: str) -> Path:
        return Path(path) / self.product / stick.BUNDLES / self.bundles[name].folder_name()

    def volume_file(self, path: Path, name: str, index: int = 0) -> Path:
        return self.bundle_dir(path, name) / PAYLOAD / self.bundles[name].manifest.volumes[index].name


def replace_with_fifo(path: Path) -> None:
    """A named pipe where a file was: opening it for reading waits for a writer that never comes."""
    path.unlink()
    os.mkfifo(path)


def replace_with_socket(path: Path) -> None:
    """A Unix socket where a file was: open(2) fails on it (ENXIO)."""
    path.unlink()
    make_unix_socket(path)


def move_behind_symlink(path: Path, target: Path) -> None:
    """Move ``path`` (a file or a folder) to ``target`` and leave a symlink to it in its place: the
    same bytes, reached through a link that may lead anywhere (off the stick)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(path, target)
    Path(path).symlink_to(target)
