"""`make image`: the reference cabinet's disk image, built from Debian packages (README.md).

    build/cabinet.img        the raw disk (sparse, 4 GiB): ESP with GRUB, btrfs pool with env-1
    build/image/keys/        the reference release's keys and trust root (root.json + signature)
    build/image/release-1/   release 1: release.toml, platform/ (the root tree), games/demo/
    build/image/bundles/full-1/  the full bundle of release 1, provisioned into env-1
    build/image/image.json   facts for the VM tests (UUIDs, offsets, kernel, paths)
    build/cache/             .debs and wheels kept between builds

Run as root with the project's venv python: ``.venv/bin/python system/image/build.py``. Each
step prints its time. A failed or interrupted build leaves no mount, no loop device and no
build/cabinet.img: the disk is made under a temporary name and renamed when it is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import agent_venv  # these modules sit beside this file (sys.path[0])
import disk
import provision
import release
import rootfs
from tools import BuildError, Cleanup, Timings, in_chroot, mounts_below, run, say, unmount

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the agent's own modules (provision.block_paths) without an install
SYSTEM_LINUX = REPO / "system/linux"


class Paths:
    """Everything the build reads and writes, derived from the build folder."""

    def __init__(self, build: Path):
        self.build = build
        self.cache = build / "cache"
        self.debs = self.cache / "debs"
        self.wheels = self.cache / "wheels"
        self.work = build / "work"  # scratch: removed at the start of every build
        self.sysroot = self.work / "sysroot"
        self.var_tree = self.work / "var"
        self.local_tree = self.work / "local"
        self.esp_image = self.work / "esp.img"
        self.bootx64 = self.work / "BOOTX64.EFI"
        self.grub_cfg = self.work / "grub.cfg"
        self.out = build / "image"
        self.keys = self.out / "keys"
        self.release = self.out / "release-1"
        self.platform = self.release / "platform"
        self.game = self.release / "games/demo"
        self.bundle = self.out / "bundles/full-1"
        self.facts = self.out / "image.json"
        self.image = build / "cabinet.img"
        self.partial = build / ".cabinet.img.partial"


def relative(path: Path) -> str:
    """Paths in image.json are relative to the repository, so the facts survive a move."""
    return str(path.resolve().relative_to(REPO)) if path.resolve().is_relative_to(REPO) else str(path)


def clear_leftovers(paths: Paths) -> None:
    """Undoes what a killed earlier build left: mounts under build/, loop devices on its
    partial disk, the scratch folder and the outputs it was making."""
    for target in mounts_below(paths.build):
        unmount(target)
    if paths.partial.exists():
        for line in run(["losetup", "--noheadings", "--output", "NAME", "--associated", paths.partial],
                        capture=True).split():
            run(["losetup", "--detach", line])
    for path in (paths.work, paths.out):
        if path.exists():
            shutil.rmtree(path)
    for path in (paths.image, paths.partial):
        path.unlink(missing_ok=True)


def build_root_tree(paths: Paths, timings: Timings) -> str:
    """Step 1 and 3: the platform tree. Returns the kernel version."""
    root = paths.platform
    with timings.step("debootstrap (minbase + systemd, udev, python3, btrfs-progs)"):
        rootfs.debootstrap(root, paths.debs)
    with timings.step("kernel and initramfs"):
        rootfs.configure_packaging(root)
        rootfs.install_kernel(root, paths.debs)
        version = rootfs.kernel_version(root)
        rootfs.check_initramfs(root, version)
        rootfs.kernel_links(root, version)
    return version


def install_agent(paths: Paths, timings: Timings) -> None:
    """Step 2: the agent's venv in the tree, from wheels made on this host."""
    with timings.step("agent wheels and venv"):
        python, libc = agent_venv.cabinet_python(paths.platform)
        wheel = agent_venv.build_wheels(REPO, paths.wheels, python, libc)
        agent_venv.install_agent(paths.platform, paths.wheels, wheel)
        agent_venv.check_agent(paths.platform)


def finish_root_tree(paths: Paths, timings: Timings) -> list[str]:
    """Step 3: units, the cabinet's files, slimming, and the split into release / var / local."""
    root = paths.platform
    with timings.step("units, cabinet files, slimming"):
        installed = rootfs.install_units(root, SYSTEM_LINUX)
        rootfs.install_cabinet_files(root)
        rootfs.enable_units(root, installed)
        # Caches under /etc and /usr that ConditionNeedsUpdate would rebuild at boot are built
        # here; /etc/.updated and /var/.updated say they are current (the root is read-only).
        in_chroot(root, ["systemd-hwdb", "update"], quiet=True)
        in_chroot(root, ["ldconfig"], quiet=True)
        (root / "etc/.updated").write_text("# made by the image build\n")
        (root / "var/.updated").write_text("# made by the image build\n")
        # The build host's name service settings must not ship; a cabinet has no network.
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n")
        rootfs.slim(root)
        rootfs.strip_device_nodes(root)
        rootfs.split_var(root, paths.var_tree)
        rootfs.split_machine_local(root, paths.local_tree, provision.PRESERVE)
    return installed


def make_release(paths: Paths, timings: Timings) -> None:
    """Steps 4 and 5: keys, trust root, the demo game, release.toml and the full bundle."""
    with timings.step("keys and trust root"):
        release.make_keys(paths.keys)
        release.make_demo_game(paths.game, rootfs.FILES / "demo/run")
        release_toml = release.write_release_toml(paths.release)
    with timings.step("bundle make (full-1)"):
        paths.bundle.parent.mkdir(parents=True, exist_ok=True)
        release.make_bundle(release_toml, paths.keys, paths.bundle)


def grub_files(paths: Paths, pool_uuid: str) -> None:
    """BOOTX64.EFI and grub.cfg from system/linux/grub/."""
    grub = SYSTEM_LINUX / "grub"
    disk.grub_efi(grub / "embedded.cfg", paths.bootx64)
    text = disk.pool_grub_cfg(grub / "grub.cfg", pool_uuid)
    # grub.cfg must read the blocks the agent writes; a mismatch would boot default_env forever
    # and never a trial. Both sit beside grub.cfg, which GRUB finds as $cmdpath/grub.cfg.
    boot_folder = Path(provision.ESP_MOUNT) / "EFI/BOOT"
    for block in provision.block_paths():
        beside = str(Path(block).relative_to(boot_folder))
        if f"$cmdpath/{beside}" not in text:
            raise BuildError(f"grub.cfg does not read $cmdpath/{beside}, the block the agent writes ({block})")
    paths.grub_cfg.write_text(text)
    run(["grub-script-check", paths.grub_cfg])


def make_disk(paths: Paths, timings: Timings) -> dict:
    """Steps 6 to 8: partitions, pool, provisioning, machine-local files, ESP. Returns the facts
    for image.json."""
    pool_uuid = str(uuid.uuid4())
    volume_id = secrets.token_hex(4).upper()
    esp_uuid = disk.esp_uuid(volume_id)
    trust_files = release.trust_root_files(paths.keys)
    cleanup = Cleanup()
    try:
        with timings.step("disk: partitions, btrfs pool, var"):
            esp, pool_part = disk.create_disk(paths.partial)
            device = disk.make_pool(cleanup, paths.partial, pool_part, pool_uuid)
            blocks = provision.scaffold(paths.sysroot, trust_files, rootfs.FILES / "cabinet-health")
            pool, var = disk.mount_pool(cleanup, device, paths.sysroot)
            disk.seed_var(paths.var_tree, var)
        with timings.step("bundle-agent provision"):
            report = provision.provision(paths.sysroot, paths.bundle)
            say(report.strip().splitlines()[-1] if report.strip() else "provisioned")
            variables = provision.block_variables(blocks[0])
            environment = variables.get("default_env", "")
            if not (pool / "envs" / environment / "boot/vmlinuz").exists():
                raise BuildError(f"after provisioning, the environment block names {environment!r}, "
                                 "which has no boot/vmlinuz")
            machine_id = provision.write_machine_local(pool / "envs" / environment, pool_uuid, esp_uuid,
                                                       trust_files)
        with timings.step("ESP: GRUB, grub.cfg, environment blocks"):
            grub_files(paths, pool_uuid)
            esp_files = {"/EFI/BOOT/BOOTX64.EFI": paths.bootx64, "/EFI/BOOT/grub.cfg": paths.grub_cfg}
            for cabinet_path, host_path in zip(provision.block_paths(), blocks):
                esp_files[cabinet_path.removeprefix(provision.ESP_MOUNT)] = host_path
            disk.make_esp(paths.esp_image, volume_id, esp_files)
            disk.write_esp(paths.partial, paths.esp_image, esp)
            run(["sync", "--file-system", pool])
    finally:
        cleanup.unwind()
    return {
        "pool_uuid": pool_uuid, "esp_uuid": esp_uuid,
        "partitions": {"esp": {"number": esp.number, "offset": esp.offset, "size": esp.size},
                       "pool": {"number": pool_part.number, "offset": pool_part.offset, "size": pool_part.size}},
        "environment": environment, "grubenv": variables, "machine_id": machine_id,
        "grubenv_files": [p.removeprefix(provision.ESP_MOUNT) for p in provision.block_paths()],
    }


def write_facts(paths: Paths, kernel: str, disk_facts: dict, units: list[str], timings: Timings) -> None:
    facts = {
        "version": 1,
        "paths_relative_to": "the repository root",
        "image": relative(paths.image), "disk_bytes": disk.DISK_BYTES,
        **disk_facts,
        "kernel": kernel,
        "product": release.PRODUCT, "hardware": release.HARDWARE, "serial": release.SERIAL,
        "platform_version": release.PLATFORM_VERSION, "game_version": release.GAME_VERSION,
        "agent_config": provision.agent_config(),
        "units": units,
        "paths": {
            "keys": relative(paths.keys), "root": relative(paths.keys / "root.json"),
            "root_key": relative(paths.keys / "root.key"), "release_key": relative(paths.keys / "release.key"),
            "release": relative(paths.release / "release.toml"), "bundle": relative(paths.bundle),
        },
        "seconds": timings.report(),
    }
    paths.facts.write_text(json.dumps(facts, indent=2) + "\n")


def _interrupted(signum, frame):
    # SIGTERM (make killed, a CI timeout) unwinds like Ctrl-C, so the finally blocks unmount.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=REPO / "build", help="the build folder [build/]")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep build/work (the var tree, the ESP image, the scaffold)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("image: run as root (debootstrap, chroot, loop devices, mounts)", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _interrupted)
    paths = Paths(args.build.resolve())
    timings = Timings()
    start = time.monotonic()
    try:
        clear_leftovers(paths)
        paths.out.mkdir(parents=True)
        kernel = build_root_tree(paths, timings)
        install_agent(paths, timings)
        units = finish_root_tree(paths, timings)
        make_release(paths, timings)
        facts = make_disk(paths, timings)
        write_facts(paths, kernel, facts, units, timings)
        os.replace(paths.partial, paths.image)
        if not args.keep_work:
            shutil.rmtree(paths.work)
    except (BuildError, RuntimeError, OSError) as error:
        print(f"image: failed: {error}", file=sys.stderr)
        paths.partial.unlink(missing_ok=True)
        return 1
    except KeyboardInterrupt as interrupt:
        print(f"image: interrupted ({interrupt})", file=sys.stderr)
        paths.partial.unlink(missing_ok=True)
        return 130
    finally:
        for target in mounts_below(paths.build):  # nothing should be left; make sure of it
            unmount(target)
    total = time.monotonic() - start
    used = os.stat(paths.image).st_blocks * 512
    say(f"built {relative(paths.image)} ({disk.DISK_BYTES >> 30} GiB, {used / 2**20:.0f} MiB used) "
        f"and {relative(paths.out)} in {total:.0f} s")
    for name, seconds in timings.steps:
        say(f"  {seconds:6.1f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
