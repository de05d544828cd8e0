"""The cabinet's root filesystem: Debian bookworm minbase, a Debian kernel, and the cabinet's files.

The tree built here becomes the ``platform`` component of release 1 as it is: whatever is in it
is what every cabinet runs, so it holds no machine-local file (those are written per device
after provisioning, provision.py) and nothing under /var (its own subvolume, shared by every
boot environment).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tools import chroot_mounts, in_chroot, run

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
FILES = Path(__file__).resolve().parent / "files"

# What debootstrap installs besides minbase. Its resolver follows Depends only, never
# Recommends, which keeps the tree small. btrfs-progs puts the btrfs hook into the initramfs
# (the root is a btrfs subvolume); python3-venv is how the agent is installed (agent_venv.py).
BASE_PACKAGES = ["systemd-sysv", "udev", "kmod", "initramfs-tools", "btrfs-progs", "python3", "python3-venv"]

# Installed afterwards by apt inside the tree, once dpkg's exclusions (files/dpkg-slim.cfg) are
# in place: the kernel's modules for hardware a cabinet never has are then never unpacked, and
# the initramfs is built once, from the slim module tree.
KERNEL_PACKAGES = ["linux-image-amd64"]

# Timers and services of a Debian system that a sealed cabinet with a read-only root does not
# need, masked so they neither slow its boot nor write to it: package-list refreshes and
# upgrades (no network), backups of a dpkg database nobody changes on the device, scrubs and
# trims that a vendor schedules deliberately if at all, and the rebuilds of caches under /etc
# that ConditionNeedsUpdate would start after an update (they are built here, and /etc is
# read-only on the device).
MASKED_UNITS = [
    "apt-daily.timer", "apt-daily-upgrade.timer", "apt-daily.service", "apt-daily-upgrade.service",
    "dpkg-db-backup.timer", "dpkg-db-backup.service", "e2scrub_all.timer", "e2scrub_all.service",
    "e2scrub_reap.service", "fstrim.timer", "fstrim.service", "systemd-pstore.service",
    "systemd-hwdb-update.service", "systemd-journal-catalog-update.service", "ldconfig.service",
    "remote-fs.target", "getty@tty1.service",
    # Without dbus and logind, getty-static starts gettys on tty2-tty6: nobody types there.
    "getty-static.service",
    # Kernel interfaces no cabinet program uses; each costs a second or two of a boot under
    # emulation (systemd-analyze blame in the VM), binfmt sits on the critical chain.
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "dev-hugepages.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
]

# What the cabinet's units need enabled (WantedBy symlinks, made by systemctl --root).
ENABLED_UNITS = ["cabinet-game.service"]


def debootstrap(root: Path, debs: Path) -> None:
    """Debian minbase into ``root``; the .debs are kept in ``debs`` so the next build reuses them."""
    debs.mkdir(parents=True, exist_ok=True)
    run(["debootstrap", "--variant=minbase", f"--cache-dir={debs.resolve()}",
         f"--include={','.join(BASE_PACKAGES)}", SUITE, root, MIRROR], quiet=True)


def configure_packaging(root: Path) -> None:
    """Settings that must be in place before the kernel is installed."""
    # dpkg skips documentation and unneeded kernel modules from now on (files/dpkg-slim.cfg).
    shutil.copy(FILES / "dpkg-slim.cfg", root / "etc/dpkg/dpkg.cfg.d/cabinet-slim")
    # The kernel and initramfs links go into /boot (boot/vmlinuz, boot/initrd.img), where GRUB
    # loads them from each boot environment (grub.cfg), not into the root directory.
    (root / "etc/kernel-img.conf").write_text("do_symlinks = yes\nlink_in_boot = yes\n")
    # The initramfs gets what Debian's MODULES=most adds minus the network drivers (the hook's
    # comment says why). Not MODULES=dep: in a chroot it would read the build host's hardware.
    (root / "etc/initramfs-tools/conf.d/cabinet").write_text("MODULES=list\n")
    hook = root / "etc/initramfs-tools/hooks/cabinet-modules"
    shutil.copyfile(FILES / "initramfs-cabinet-hook", hook)
    hook.chmod(0o755)
    # No package script may start a service inside the build tree.
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)


def install_kernel(root: Path, debs: Path) -> None:
    """The Debian kernel (and its initramfs) through apt inside the tree.

    apt uses the package lists debootstrap left in the tree (no `apt-get update`), and the same
    .deb cache, bound over the tree's archive folder, so a second build downloads nothing."""
    archives = root / "var/cache/apt/archives"
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    with chroot_mounts(root):
        run(["mount", "--bind", debs.resolve(), archives])
        try:
            in_chroot(root, ["apt-get", "install", "-y", "-q", "--no-install-recommends", *KERNEL_PACKAGES],
                      quiet=True)
        finally:
            run(["umount", archives])


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one kernel in the tree, found {versions}")
    return versions[0]


def check_initramfs(root: Path, version: str) -> None:
    """The root is btrfs: without the btrfs module in the initramfs no environment boots. And no
    USB storage driver may be there (files/initramfs-cabinet-hook, T-BOOT-STICK)."""
    listing = in_chroot(root, ["lsinitramfs", f"/boot/initrd.img-{version}"], capture=True)
    for needed in ("btrfs.ko", "virtio_blk.ko"):
        if needed not in listing:
            raise RuntimeError(f"the initramfs has no {needed}")
    for banned in ("usb-storage.ko", "uas.ko"):
        if banned in listing:
            raise RuntimeError(f"the initramfs has {banned}: a stick could be taken for the root")


def kernel_links(root: Path, version: str) -> None:
    """boot/vmlinuz and boot/initrd.img, relative, as the contract names them (GRUB follows
    relative symlinks inside the environment's subvolume). kernel-img.conf makes them on a
    kernel update; they are (re)made here so the release never depends on that."""
    for name in ("vmlinuz", "initrd.img"):
        link = root / "boot" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"{name}-{version}")
        for stale in (root / name, root / f"{name}.old", root / "boot" / f"{name}.old"):
            if stale.is_symlink():
                stale.unlink()


def slim(root: Path) -> None:
    """Drops what the base packages unpacked before dpkg's exclusions existed, and the caches.

    The same paths as files/dpkg-slim.cfg; plus the package lists and .debs (apt never runs on a
    cabinet) and the initramfs backups update-initramfs leaves."""
    for folder in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian"):
        path = root / folder
        if path.is_dir():
            for entry in path.iterdir():
                if folder == "usr/share/doc" and (entry / "copyright").is_file():
                    for inner in entry.iterdir():
                        if inner.name != "copyright":
                            _remove(inner)
                else:
                    _remove(entry)
    for pattern in ("var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                    "var/cache/debconf/*-old", "var/log/*.log", "boot/*.dpkg-bak", "boot/*.new",
                    "boot/*.old-dkms"):
        for path in root.glob(pattern):
            _remove(path)
    (root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def install_units(root: Path, system_dir: Path) -> list[str]:
    """The agent's OS integration from the repository's system/linux/ (udev rule, units, insert
    helper), where a Debian system looks for local files. Returns what was installed."""
    installed = []
    places = [("udev", "*.rules", "etc/udev/rules.d", 0o644),
              ("udev/rules.d", "*.rules", "etc/udev/rules.d", 0o644),
              ("systemd", "*.service", "etc/systemd/system", 0o644),
              ("systemd", "*.timer", "etc/systemd/system", 0o644),
              ("libexec", "*", "usr/libexec", 0o755)]
    for folder, pattern, target, mode in places:
        for source in sorted((system_dir / folder).glob(pattern)) if (system_dir / folder).is_dir() else []:
            if source.is_file():
                destination = root / target / source.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)
                destination.chmod(mode)
                installed.append(f"/{target}/{source.name}")
    return installed


def install_cabinet_files(root: Path) -> None:
    """The reference cabinet's own files: the game's unit, the health hook, the serial console."""
    shutil.copyfile(FILES / "cabinet-game.service", root / "etc/systemd/system/cabinet-game.service")
    hook = root / "usr/libexec/cabinet-health"
    hook.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FILES / "cabinet-health", hook)
    hook.chmod(0o755)
    dropin = root / "etc/systemd/system/serial-getty@ttyS0.service.d"
    dropin.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FILES / "serial-autologin.conf", dropin / "autologin.conf")
    # getty-generator starts the serial getty on the kernel's console=ttyS0 anyway; enabling it
    # keeps the shell there when a vendor changes the command line.
    wants = root / "etc/systemd/system/getty.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "serial-getty@ttyS0.service"
    if not link.is_symlink():
        link.symlink_to("/usr/lib/systemd/system/serial-getty@.service")
    for unit in ("emergency.service", "rescue.service"):
        folder = root / f"etc/systemd/system/{unit}.d"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FILES / "emergency-shell.conf", folder / "shell.conf")
    (root / "root/.hushlogin").touch()  # no message of the day between the tests' commands
    # Plain output on the serial line: no bracketed-paste escapes around every command line.
    (root / "root/.inputrc").write_text("$include /etc/inputrc\nset enable-bracketed-paste off\n")
    # pam_env reads it at every login and logs a warning when it is missing.
    (root / "etc/default/locale").write_text("LANG=C.UTF-8\n")
    # Whatever reads the serial shell gets plain text: systemctl and journalctl neither start a
    # pager (which would wait for a key) nor colour their output.
    (root / "etc/environment").write_text("SYSTEMD_PAGER=cat\nSYSTEMD_COLORS=0\n")
    # The games folder ([layout] games): empty in the platform, filled by game components.
    (root / "opt/games").mkdir(parents=True, exist_ok=True)
    # The mount points of the contract's fstab, empty in the release.
    for folder in ("pool", "boot/efi", "var"):
        (root / folder).mkdir(parents=True, exist_ok=True)


def enable_units(root: Path, installed: list[str]) -> None:
    """Enables the cabinet's units and the agent's, masks what a cabinet does not need."""
    names = list(ENABLED_UNITS)
    for path in installed:
        name = Path(path).name
        # Templates are started by udev (bundle-agent-insert@.service), timers and the boot
        # check through their [Install] sections.
        if path.startswith("/etc/systemd/system/") and "@." not in name and _has_install(root / path.lstrip("/")):
            names.append(name)
    in_chroot(root, ["systemctl", "enable", *names], quiet=True)
    # A masked unit's enablement links (timers.target.wants/apt-daily.timer ...) would only
    # point at /dev/null: remove them so the tree says plainly what runs.
    for link in (root / "etc/systemd/system").glob("*.wants/*"):
        if link.name in MASKED_UNITS:
            link.unlink()
    in_chroot(root, ["systemctl", "mask", *MASKED_UNITS], quiet=True)


def _has_install(unit: Path) -> bool:
    return "[Install]" in unit.read_text()


def strip_device_nodes(root: Path) -> None:
    """Empties /dev, /proc, /sys, /run and /tmp: filled at boot, and ``bundle make`` refuses
    device nodes (debootstrap makes a few)."""
    for folder in ("dev", "proc", "sys", "run", "tmp"):
        path = root / folder
        path.mkdir(exist_ok=True)
        for entry in path.iterdir():
            _remove(entry)
    os.chmod(root / "tmp", 0o1777)


def split_var(root: Path, var: Path) -> None:
    """Moves the contents of /var out of the tree: they seed the ``var`` subvolume of a new
    cabinet (machine data shared by every environment), and the release keeps /var empty."""
    if var.exists():
        shutil.rmtree(var)
    var.mkdir(parents=True)
    for entry in (root / "var").iterdir():
        shutil.move(str(entry), str(var / entry.name))


def split_machine_local(root: Path, local: Path, preserved: list[str]) -> None:
    """Moves the machine-local paths ([layout] preserve) out of the tree: no update may write
    them, so the release does not list them; each device gets its own after provisioning."""
    if local.exists():
        shutil.rmtree(local)
    local.mkdir(parents=True)
    for relative in preserved:
        path = root / relative
        if path.is_symlink() or path.exists():
            (local / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(local / relative))
