"""A delta installed the way a cabinet installs it, for `make bench` (root only).

`bundle verify --base` builds the whole new tree in a scratch directory. A cabinet does not: it
snapshots its running environment (a btrfs snapshot shares every block), updates the snapshot in
place and hashes every file of it against the signed listing. The install goal is about that, so
this measures it on the reference cabinet's backend: grub-btrfs on a loop-mounted btrfs disk
(tests/sim/grub_cabinet.py), provisioned like a factory with a full bundle of old through
`bundle-agent provision`, then `bundle-agent on-insert` of a stick carrying the delta, timed.

A cabinet's environment must hold a kernel (the backend refuses to boot one without), and a
bench pair is only a tree of files. So both trees are seen through a read-only overlay that adds
what a cabinet's platform has beside them (``STUBS``), and the delta is made again from those:
the same changes as the measured delta, plus a few unchanged stand-in files.
"""
import contextlib
import json
import os
import shlex
import subprocess
from pathlib import Path

from tests.benchmarks.commands import run
from tests.sim.grub_cabinet import HARDWARE, HEALTH, PRODUCT, GrubCabinet

STAGED = 4  # on-insert's exit when it staged an update (agent/cli/install.py)
STUBS = {"boot/vmlinuz": b"stand-in kernel\n", "boot/initrd.img": b"stand-in initramfs\n",
         "usr/libexec/cabinet-health": HEALTH.encode()}
MOUNT_POINTS = ("pool", "var", "boot/efi")  # the cabinet's fstab (docs/DEVICE.md)
# Where provisioning puts the agent's configuration (tests/sim/grub_cabinet.py): a kernel pair's
# trees have no etc/ of their own.
FOLDERS = (*MOUNT_POINTS, "etc")


def _stubs(folder: Path) -> Path:
    for relative, data in STUBS.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    (folder / "usr/libexec/cabinet-health").chmod(0o755)
    for relative in FOLDERS:
        (folder / relative).mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def _overlay(lower: list[Path], target: Path):
    """A read-only overlay of ``lower`` (the first wins) at ``target``."""
    target.mkdir(parents=True)
    run("mount", "-t", "overlay", "overlay", "-o", "ro,lowerdir=" + ":".join(map(str, lower)), target)
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)])


def _release(path: Path, tree: Path, sequence: int) -> Path:
    path.write_text(f'product = "{PRODUCT}"\nhardware = ["{HARDWARE}"]\n\n[components.platform]\n'
                    f'path = {json.dumps(str(tree))}\nversion = "{sequence}"\nsequence = {sequence}\n')
    return path


def measure(work: Path, old: Path, new: Path, bundle: str, key: Path, root: Path, timed,
            changed: list[str] | None = None) -> dict:
    """Makes the cabinet's bundles of ``old`` and ``new`` in ``work``, provisions a fresh cabinet
    with old, then times ``on-insert`` of a stick with the delta, with ``timed(step, command,
    log_base, cwd=..., ok=...)`` (bench.run_timed). Returns its wall seconds and peak RSS, and with
    ``changed`` (the paths of new whose content differs from old) the install floor on the
    cabinet's disk (:func:`_cabinet_floor`). Leaves no mount and no loop device behind; raises
    RuntimeError when a step fails."""
    stubs = _stubs(work / "stubs")
    full, delta, stick = work / "full", work / "delta", work / "stick"
    with _overlay([stubs, old], work / "old") as old_tree, _overlay([stubs, new], work / "new") as new_tree:
        old_release = _release(work / "old.toml", old_tree, 1)
        new_release = _release(work / "new.toml", new_tree, 2)
        timed("device install: bundle make (full bundle of old, to provision)",
              [bundle, "make", "--release", old_release, "--key", key, "--out", full, "--level", "3", "--drop-xattrs"],
              str(work / "make-full"))
        timed("device install: bundle make (the delta, from the trees with the stand-ins)",
              [bundle, "make", "--release", new_release, "--base", old_release, "--key", key, "--out", delta,
               "--drop-xattrs"],
              str(work / "make-delta"))
        disk = sum(_tree_bytes(tree) for tree in (old, new)) + (1 << 30)
    stick.mkdir()
    timed("device install: bundle write", [bundle, "write", stick, delta, "--root", root], str(work / "write"))
    trust = sorted(root.parent.glob(root.name + "*"))
    image = work / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(disk)
    run("mkfs.btrfs", "-q", image)
    device = run("losetup", "--find", "--show", image).strip()
    try:
        cabinet = GrubCabinet.lay_out(device, work / "cabinet", trust)
        try:
            provisioned = cabinet.provision(full)
            if provisioned.returncode != 0:
                raise RuntimeError(f"bundle-agent provision {full} failed: {provisioned.stderr.strip()}")
            cabinet.boot()
            install = timed("device install: bundle-agent on-insert",
                            ["bundle-agent", "--sysroot", cabinet.running, "on-insert", "--json", stick],
                            str(work / "on-insert"), ok=(STAGED,))
            flags = {e["name"]: e["flags"] for e in cabinet.status()["environments"]}
            if changed is not None:
                install["cabinet_floor"] = _cabinet_floor(cabinet.pool() / "envs", new, changed, work, timed)
        finally:
            cabinet.unmount()
        if "T" not in flags.get("env-2", ""):
            raise RuntimeError(f"on-insert did not arm a trial of env-2: environments {flags}")
        return install
    finally:
        subprocess.run(["losetup", "-d", device])
        image.unlink()


def _cabinet_floor(envs: Path, new: Path, changed: list[str], work: Path, timed) -> dict:
    """The install floor on the cabinet's own disk: the changed files copied over a snapshot of
    the running environment with ``cp -a`` (the agent updates its snapshot so), one SHA-256 pass
    over the snapshot's files (not in the page cache: a snapshot's files are other inodes, as the
    agent's are when it checks them), then ``sync``. Seconds of each step and their sum."""
    snapshot = envs / "floor"
    listing = work / "changed.list"
    listing.write_bytes(b"".join(os.fsencode(path) + b"\0" for path in changed))
    run("btrfs", "subvolume", "snapshot", envs / "env-1", snapshot)
    try:
        run("sync")
        seconds = {
            "copy_s": timed("device install: floor: cp -a over a snapshot",
                            ["xargs", "-0", "-r", "-a", listing, "cp", "-a", "--remove-destination", "--parents",
                             "-t", snapshot], str(work / "floor-copy"), cwd=new)["wall_s"],
            "hash_s": timed("device install: floor: sha256sum of the snapshot",
                            ["bash", "-c", f"find {shlex.quote(str(snapshot))} -type f -print0 | xargs -0 sha256sum "
                                           ">/dev/null"], str(work / "floor-hash"))["wall_s"],
            "sync_s": timed("device install: floor: sync", ["sync"], str(work / "floor-sync"))["wall_s"],
        }
    finally:
        run("btrfs", "subvolume", "delete", snapshot)
    return {**seconds, "floor_s": sum(seconds.values())}


def _tree_bytes(tree: Path) -> int:
    return sum(os.lstat(os.path.join(folder, name)).st_size for folder, _, names in os.walk(tree) for name in names)
