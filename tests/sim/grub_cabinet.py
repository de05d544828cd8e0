"""A cabinet with the grub-btrfs backend on a real loop-mounted btrfs disk (root only).

The disk is laid out as on a real cabinet (docs/DEVICE.md): subvolumes ``envs/env-N`` (whole root
trees with ``boot/vmlinuz`` and ``boot/initrd.img``) and ``var`` (machine data, the agent's state),
and a folder standing for the ESP with the two GRUB environment blocks made by ``grub-editenv``.
A "boot" mounts the chosen environment read-only at ``running/`` with the pool, ``var`` and the
ESP mounted inside it where the cabinet's fstab puts them, and the agent runs with ``--sysroot
running``. The choice itself is :func:`grub_choice`, which follows system/linux/grub/grub.cfg
with GRUB's own grub-editenv; tests/vm/test_grub_script.py proves the real script in GRUB.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from agent.boot import grubenv
from tests.sim import releases
from tests.sim.tools import debian_tools, run_cli

PRODUCT, HARDWARE, SERIAL = "reference-cabinet", "qemu-x86_64", "REF0001"
BLOCKS = ("boot/efi/EFI/BOOT/env-a/grubenv", "boot/efi/EFI/BOOT/env-b/grubenv")  # under the root
PRESERVE = ["etc/machine-id", "etc/fstab", "etc/bundle-agent.toml", "etc/bundle-agent"]
HEALTH = """#!/bin/sh
# Healthy unless the environment ships etc/sick (a release made to fail its trial).
[ ! -e "$BUNDLE_AGENT_ENVIRONMENT/etc/sick" ] || { echo "etc/sick is present"; exit 1; }
"""


def _run(*command, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}: {result.stderr.strip()}")
    return result


def platform_tree(root: Path, version: str, *, sick: bool = False) -> None:
    """A small whole-system platform: kernel and initramfs, the mount points of the fstab, the
    health hook, a program and its configuration."""
    for folder in ("pool", "var", "boot/efi", "etc", "opt/games", "usr/bin", "usr/libexec"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / f"boot/vmlinuz-{version}").write_bytes(b"kernel " + version.encode() * 4000)
    (root / f"boot/initrd.img-{version}").write_bytes(b"initramfs " + version.encode() * 2000)
    for link in ("vmlinuz", "initrd.img"):
        os.symlink(f"{link}-{version}", root / "boot" / link)
    (root / "usr/libexec/cabinet-health").write_text(HEALTH)
    (root / "usr/libexec/cabinet-health").chmod(0o755)
    (root / "usr/bin/cabinet-engine").write_bytes(b"\x7fELF engine " + version.encode() * 30000)
    (root / "usr/bin/cabinet-engine").chmod(0o755)
    (root / "etc/cabinet.conf").write_text(f"release = {version}\n")
    if sick:
        (root / "etc/sick").write_text("this release fails its health check\n")


def write_release(directory: Path, version: str, sequence: int, *, sick: bool = False) -> Path:
    platform_tree(directory / "platform", version, sick=sick)
    (directory / "games/demo").mkdir(parents=True)
    (directory / "games/demo/run").write_text(f"#!/bin/sh\necho demo {version}\n")
    return releases.write_release(directory, {"platform": (version, sequence), "game/demo": (version, sequence)},
                                  product=PRODUCT, hardware=(HARDWARE,))


def config_text() -> str:
    return f"""[device]
product = "{PRODUCT}"
hardware = "{HARDWARE}"
serial = "{SERIAL}"
state_dir = "/var/lib/bundle-agent"
[trust]
root = "/etc/bundle-agent/root.json"
[boot]
backend = "grub-btrfs"
pool = "/pool"
grubenv = "/{BLOCKS[0]}"
grubenv_copy = "/{BLOCKS[1]}"
[layout]
platform = "."
games = "opt/games"
preserve = {json.dumps(PRESERVE)}
[health]
hooks = ["/usr/libexec/cabinet-health"]
timeout = 20
[environments]
keep = 2
[log]
syslog = ""
"""


class GrubCabinet:
    """``device``: the loop device of the btrfs disk; ``work``: where the ESP folder, the factory's
    scaffold and the running system's mount point live; ``trust``: the provisioned trust root's
    files (root.json and its signatures)."""

    def __init__(self, device: str, work: Path, trust: list[Path]):
        """A cabinet on a disk already laid out (:meth:`lay_out`), its work folder as left."""
        self.device = device
        self.work = work
        self.trust = trust
        self.esp = work / "esp"
        self.running = work / "running"
        self.mounts: list[Path] = []
        self.booted: str | None = None

    @classmethod
    def lay_out(cls, device: str, work: Path, trust: list[Path]) -> "GrubCabinet":
        """A blank cabinet on the fresh btrfs ``device``: the ESP's two blocks, ``envs/``, ``var``."""
        debian_tools("grub-common", "grub-editenv")
        debian_tools("btrfs-progs", "btrfs")
        cabinet = cls(device, work, trust)
        for block in BLOCKS:
            path = cabinet.esp / Path(block).relative_to("boot/efi")
            path.parent.mkdir(parents=True)
            _run("grub-editenv", path, "create")
        top = work / "top"
        top.mkdir()
        _run("mount", "-o", "subvolid=5", device, top)
        try:
            (top / "envs").mkdir()
            _run("btrfs", "subvolume", "create", top / "var")
        finally:
            _run("umount", top)
        top.rmdir()
        return cabinet

    # --- mounting ----------------------------------------------------------------------------

    def _mount(self, target: Path, *args) -> None:
        target.mkdir(parents=True, exist_ok=True)
        _run("mount", *args, target)
        self.mounts.append(target)

    def unmount(self) -> None:
        while self.mounts:
            _run("umount", self.mounts.pop())
        self.booted = None

    def _system_mounts(self, root: Path) -> None:
        """The cabinet's fstab: the pool, var and the ESP inside ``root``."""
        self._mount(root / "pool", "-o", "subvolid=5", self.device)
        self._mount(root / "var", "-o", "subvol=var", self.device)
        self._mount(root / "boot/efi", "--bind", self.esp)

    def factory(self) -> Path:
        """The factory's scaffold: configuration and trust root in a plain folder, no environment."""
        self.unmount()
        root = self.work / "factory"
        (root / "etc/bundle-agent").mkdir(parents=True, exist_ok=True)
        (root / "etc/bundle-agent.toml").write_text(config_text())
        for source in self.trust:
            (root / "etc/bundle-agent" / source.name).write_bytes(source.read_bytes())
        (root / "usr/libexec").mkdir(parents=True, exist_ok=True)
        (root / "usr/libexec/cabinet-health").write_text(HEALTH)
        (root / "usr/libexec/cabinet-health").chmod(0o755)
        self._system_mounts(root)
        return root

    def provision(self, bundle: Path) -> subprocess.CompletedProcess:
        """Provision like a factory: the full bundle into env-1, then the machine-local files."""
        root = self.factory()
        result = run_cli("bundle-agent", "--sysroot", root, "provision", bundle)
        if result.returncode == 0:
            env = root / "pool/envs/env-1"
            for path in ("etc/bundle-agent.toml", "etc/bundle-agent"):
                _run("cp", "-a", root / path, env / path)
            (env / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
            (env / "etc/fstab").write_text("# the cabinet's mounts (docs/DEVICE.md)\n")
        self.unmount()
        return result

    # --- booting -----------------------------------------------------------------------------

    def block(self, which: int) -> Path:
        return self.esp / Path(BLOCKS[which]).relative_to("boot/efi")

    def variables(self, which: int) -> dict[str, str] | None:
        try:
            return grubenv.parse(self.block(which).read_bytes())
        except grubenv.BlockError:
            return None

    def boot(self) -> str:
        """Power on: GRUB's choice (:func:`grub_choice`), then the environment mounted read-only
        at ``running`` with the cabinet's other mounts inside it. Returns its name."""
        self.unmount()
        top = self.work / "top"
        self._mount(top, "-o", "subvolid=5", self.device)
        try:
            name = grub_choice(self.block(0), self.block(1), top / "envs")
        finally:
            self.unmount()
        self._mount(self.running, "-o", f"ro,subvol=envs/{name}", self.device)
        self._system_mounts(self.running)
        self.booted = name
        return name

    def agent(self, *args, env: dict | None = None) -> subprocess.CompletedProcess:
        assert self.booted, "boot() first"
        return run_cli("bundle-agent", "--sysroot", self.running, *args, env=env)

    def status(self) -> dict:
        result = self.agent("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def pool(self) -> Path:
        return self.running / "pool"


def _usable(envs: Path, name: str | None) -> bool:
    boot = envs / (name or "-") / "boot"
    return bool(name) and all(os.path.lexists(boot / f) for f in ("vmlinuz", "initrd.img"))


def grub_choice(block_a: Path, block_b: Path, envs: Path) -> str:
    """What system/linux/grub/grub.cfg boots, with GRUB's own grub-editenv for the blocks: block A
    when it names a usable environment, else B; a trial is consumed (B, then A) before it is
    chosen. Raises AssertionError when nothing is bootable - an unbootable machine."""
    def listed(block: Path) -> dict[str, str]:
        result = _run("grub-editenv", block, "list", check=False)
        if result.returncode != 0:
            return {}
        return dict(line.partition("=")[::2] for line in result.stdout.splitlines() if "=" in line)
    variables, loaded = listed(block_a), block_a
    if not _usable(envs, variables.get("default_env")):
        variables, loaded = listed(block_b), block_b
    choice = variables.get("default_env")
    trial = variables.get("trial_env")
    if trial:
        consumed = False
        for block in ((block_b, block_a) if loaded == block_a else (block_b,)):
            consumed = _run("grub-editenv", block, "set", "trial_env=", check=False).returncode == 0
        if consumed and _usable(envs, trial):
            choice = trial
    assert _usable(envs, choice), f"unbootable: GRUB finds no usable environment ({variables})"
    return choice
