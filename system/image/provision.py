"""Provisioning the first environment the way a factory does: `bundle-agent provision`.

The agent runs on the build host with ``--sysroot SYSROOT``, a scaffold that looks to it like
the cabinet's own root: its configuration and trust root in SYSROOT/etc, the btrfs top level at
SYSROOT/pool, the ``var`` subvolume at SYSROOT/var and the ESP's boot folder at
SYSROOT/boot/efi/EFI/BOOT (a plain folder here, copied onto the FAT image afterwards). The
agent makes envs/env-1, stages release 1 into it from the full bundle and commits it in GRUB's
environment blocks, exactly as on a cabinet.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path

from release import HARDWARE, PRODUCT, SERIAL
from tools import run

CONFIG = "/etc/bundle-agent.toml"
TRUST_DIR = "/etc/bundle-agent"
HEALTH_HOOK = "/usr/libexec/cabinet-health"
ESP_MOUNT = "/boot/efi"
HOSTNAME = "cabinet"
# [layout] preserve: written per device below, never by an update, and so never in a release.
PRESERVE = ["etc/machine-id", "etc/fstab", "etc/hostname", "etc/bundle-agent.toml", "etc/bundle-agent"]


def block_paths() -> tuple[str, str]:
    """Where the grub-btrfs backend keeps GRUB's environment block and its copy on the cabinet
    (absolute, under the ESP's mount point). The builder takes the backend's own defaults, so
    the blocks it creates are the ones the agent and grub.cfg use."""
    from agent.boot.grub_btrfs import DEFAULTS
    return DEFAULTS["grubenv"], DEFAULTS["grubenv_copy"]


def agent_config() -> str:
    """/etc/bundle-agent.toml of the reference cabinet (docs/AGENT.md, "Configuration")."""
    block, copy = block_paths()
    return f'''[device]
product = "{PRODUCT}"
hardware = "{HARDWARE}"
serial = "{SERIAL}"
state_dir = "/var/lib/bundle-agent"
[trust]
root = "{TRUST_DIR}/root.json"
[boot]
backend = "grub-btrfs"
pool = "/pool"                                  # where the btrfs top level is mounted (fstab)
grubenv = "{block}"           # GRUB's environment block on the ESP
grubenv_copy = "{copy}"      # its copy (grub.cfg reads it when the first is unusable)
[layout]
platform = "."
games = "opt/games"
preserve = [{", ".join(f'"{p}"' for p in PRESERVE)}]
[health]
hooks = ["{HEALTH_HOOK}"]
timeout = 60
[reboot]
policy = ["/usr/bin/systemctl", "--no-block", "reboot"]
[environments]
keep = 2
'''


def write_trust(etc_root: Path, trust_files: list[Path]) -> None:
    """The agent's configuration and the trust root with its signatures under ``etc_root``."""
    (etc_root / CONFIG.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (etc_root / CONFIG.lstrip("/")).write_text(agent_config())
    trust = etc_root / TRUST_DIR.lstrip("/")
    trust.mkdir(parents=True, exist_ok=True)
    for path in trust_files:
        shutil.copyfile(path, trust / path.name)


def scaffold(sysroot: Path, trust_files: list[Path], health_hook: Path) -> list[Path]:
    """SYSROOT without the mounts (disk.mount_pool adds them): configuration, trust root, the
    health hook the configuration names (the agent checks it exists), and fresh environment
    blocks. Returns the two blocks' paths on the host."""
    write_trust(sysroot, trust_files)
    hook = sysroot / HEALTH_HOOK.lstrip("/")
    hook.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(health_hook, hook)
    hook.chmod(0o755)
    blocks = [sysroot / path.lstrip("/") for path in block_paths()]
    for block in blocks:
        block.parent.mkdir(parents=True, exist_ok=True)
        block.unlink(missing_ok=True)
        run(["grub-editenv", block, "create"])  # 1024 bytes: the agent rewrites them in place
    return blocks


def provision(sysroot: Path, bundle: Path) -> str:
    """`bundle-agent --sysroot SYSROOT provision BUNDLE`, the factory's command. Returns its report."""
    agent = str(Path(sys.executable).parent / "bundle-agent")
    return run([agent, "--sysroot", sysroot, "provision", bundle], capture=True)


def block_variables(block: Path) -> dict[str, str]:
    out = run(["grub-editenv", block, "list"], capture=True)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def write_machine_local(env_root: Path, pool_uuid: str, esp_uuid: str, trust_files: list[Path]) -> str:
    """The machine-local files ([layout] preserve) of this cabinet into its first environment:
    fstab with the real UUIDs, a machine-id made once, the hostname, the agent's configuration
    and trust root. Every later environment keeps them from the running one. Returns the
    machine-id."""
    etc = env_root / "etc"
    # /var waits for /pool (x-systemd.after): both are read-write mounts of the filesystem whose
    # subvolume / is mounted read-only, and two such mounts at the same moment can fail with
    # "busy" while the kernel switches the filesystem to read-write (seen in 1 of 3 VM boots:
    # /var failed, the cabinet stopped in emergency mode). One after the other, both succeed.
    (etc / "fstab").write_text(
        "# The cabinet's filesystems (machine-local: it names this disk's UUIDs). / is not listed:\n"
        "# the kernel mounts the boot environment read-only (rootflags=subvol=envs/NAME ro).\n"
        f"UUID={pool_uuid} /pool     btrfs subvolid=5,noatime 0 0\n"
        f"UUID={pool_uuid} /var      btrfs subvol=var,noatime,x-systemd.after=pool.mount 0 0\n"
        f"UUID={esp_uuid}  /boot/efi vfat  umask=0077,noatime 0 0\n"
        "tmpfs       /tmp      tmpfs mode=1777,nosuid,nodev 0 0\n")
    machine_id = uuid.uuid4().hex
    (etc / "machine-id").write_text(machine_id + "\n")
    os.chmod(etc / "machine-id", 0o444)
    (etc / "hostname").write_text(HOSTNAME + "\n")
    write_trust(env_root, trust_files)
    return machine_id
