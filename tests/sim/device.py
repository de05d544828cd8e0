"""The demo world and the one simulated device.

:class:`World`: keys, releases, bundles and sticks made with the real tools. :class:`Cabinet`: a
device whose configuration, trust root, health hook, state and environments all live under one
directory, its system root, driven through the real ``bundle-agent --sysroot DIR --config /agent.toml``
(every path in the configuration is taken relative to the root, agent/config.py). A copy of the
directory is therefore a working device: the power-cut sweep (tests/sim/power_cut.py) copies a
prepared device once per crash point, and the crash points themselves are options of
:meth:`Cabinet.agent` (``trace``, ``crash_at``; keys/crashpoint.py) in the agent's own process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from agent.config import AgentConfig, load_config
from agent.format.tree import tree_digest
from agent.scan import as_content, scan_tree
from bundler.demo import build_releases
from tests.sim.tools import BIN, run_cli

CONFIG = Path("/agent.toml")  # inside the device's root
FACTORY_CONFIG = Path("/factory.toml")  # bectl: the factory's image builder (dirs) makes the first tree
BECTL_STANDIN = Path(__file__).parents[1] / "bin" / "bectl"
# The smallest configuration of a device under a system root (its health hook at /health).
MINIMAL_CONFIG = """\
[device]
product = "demo-cabinet"
hardware = "cab-a"
serial = "SN0001"
state_dir = "/state"
[trust]
root = "/trust/root.json"
[boot]
backend = "dirs"
root = "/envs"
[health]
hooks = ["/health"]
timeout = 20
"""
BEROOT = "zroot/ROOT"  # the one boot-environment root the stand-in models
STAGED = 4  # the exit code of install and on-insert when an update was staged (docs/OPERATOR.md)


class World:
    """Keys (root1-3, rel1-2; 2-of-2 everywhere), releases r1/r2, bundles full-1 and d12."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.keys = directory / "keys"
        self.keys.mkdir(parents=True)
        for name in ("root1", "root2", "root3", "rel1", "rel2", "rel3"):
            run_cli("bundle", "keys", "new", name, "--dir", self.keys, "--no-passphrase", check=True)
        run_cli("bundle", "root", "new", "--out", self.root, "--root-key", self.keys / "root1.pub",
                "--root-key", self.keys / "root2.pub", "--root-threshold", "2", "--signer", self.keys / "rel1.pub",
                "--signer", self.keys / "rel2.pub", "--threshold", "2", check=True)
        for name in ("root1", "root2"):
            run_cli("bundle", "root", "sign", self.root, "--key", self.keys / f"{name}.key", check=True)
        build_releases(directory)
        self.bundles = directory / "bundles"
        self.bundles.mkdir()
        self.make("full-1", "r1")
        self.make("d12", "r2", base="r1")
        self.make("full-2", "r2")

    @property
    def root(self) -> Path:
        return self.keys / "root.json"

    def release(self, name: str) -> Path:
        return self.dir / name / "release.toml"

    def make(self, out: str, release: str, base: str | None = None, signers=("rel1", "rel2"), *extra) -> Path:
        args = ["bundle", "make", "--release", self.release(release), "--out", self.bundles / out, "--level", "3"]
        if base:
            args += ["--base", self.release(base)]
        for signer in signers:
            args += ["--key", self.keys / f"{signer}.key"]
        run_cli(*args, *extra, check=True)
        return self.bundles / out

    def stick(self, path: Path, *bundles: str, roots=()) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        args = ["bundle", "write", path, *(self.bundles / b for b in bundles), "--root", self.root]
        for root in roots:
            args += ["--root", root]
        run_cli(*args, check=True)
        return path


class Cabinet:
    """One device under ``directory``, its system root: ``agent.toml``, ``trust/`` (the world's trust
    root and its signatures, as provisioned at the factory), the ``health`` hook, ``state/`` and
    its environments: ``envs/`` (the dirs boot backend), or the bectl(8) stand-in's pool under
    ``zfs/`` (``backend="bectl"``, tests/bin/bectl), whose booted environment is ``zfs/rootfs``."""

    def __init__(self, world: World, directory: Path, *, product="demo-cabinet", hardware="cab-a",
                 serial="SN0001", healthy=True, reboot="never", keep: int = 2, layout: dict | None = None,
                 backend: str = "dirs"):
        """``layout``: the [layout] table (strings, or lists of strings for ``preserve``), written last."""
        self._attach(world, directory, layout, backend)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "trust").mkdir()
        for source in world.root.parent.glob(world.root.name + "*"):  # root.json and its signatures
            shutil.copy(source, directory / "trust" / source.name)
        self.set_health(healthy)
        (directory / "agent.toml").write_text(f"""\
[device]
product = "{product}"
hardware = "{hardware}"
serial = "{serial}"
state_dir = "/state"
[trust]
root = "/trust/{world.root.name}"
[health]
hooks = ["/health"]
timeout = 20
[reboot]
policy = "{reboot}"
[environments]
keep = {keep}
""")
        common = (directory / "agent.toml").read_text()
        layout_table = "[layout]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in layout.items()) if layout else ""
        boot = {"dirs": '[boot]\nbackend = "dirs"\nroot = "/envs"\n',
                # bectl reaches its pool through the running system: its command and mount points
                # are paths of this machine, not below the root.
                "bectl": f'[boot]\nbackend = "bectl"\nbectl = "{BECTL_STANDIN}"\nberoot = "{BEROOT}"\n'
                         f'mount_dir = "{directory / "mnt"}"\n'}[backend]
        (directory / "agent.toml").write_text(common + boot + layout_table)
        if backend == "bectl":
            factory = '[boot]\nbackend = "dirs"\nroot = "/factory"\n'
            (directory / FACTORY_CONFIG.name).write_text(common + factory + layout_table)

    def _attach(self, world: World | None, directory: Path, layout: dict | None, backend: str = "dirs") -> None:
        self.world = world
        self.dir = Path(directory)
        self.layout = layout
        self.backend = backend
        self.health = self.dir / "health"

    @classmethod
    def at(cls, directory: Path, world: World | None = None, layout: dict | None = None) -> "Cabinet":
        """The device already under ``directory`` (a copy, or one on a mounted image); nothing is written."""
        cabinet = cls.__new__(cls)
        cabinet._attach(world, directory, layout)
        return cabinet

    def copy(self, directory: Path) -> "Cabinet":
        """A second device in this one's state (reflinked where the filesystem can); dirs only."""
        assert self.backend == "dirs", "the bectl stand-in's pool names its own paths"
        subprocess.run(["cp", "-a", "--reflink=auto", str(self.dir), str(directory)], check=True)
        return Cabinet.at(directory, self.world, self.layout)

    def set_health(self, healthy: bool) -> None:
        self.health.write_text("#!/bin/sh\n" + ("exit 0\n" if healthy else "echo 'reels do not spin' >&2; exit 7\n"))
        self.health.chmod(0o755)

    # --- running the agent ---------------------------------------------------------------------

    def command(self, *args) -> list[str]:
        """The agent's command line for this device, for a caller that runs it itself (a deadline,
        a descriptor limit, a memory measurement)."""
        return [str(BIN / "bundle-agent"), *self._options(*args)]

    def _options(self, *args, config: Path = CONFIG) -> list[str]:
        return ["--sysroot", str(self.dir), "--config", str(config), *map(str, args)]

    @property
    def standin(self) -> Path:
        """The bectl stand-in's pool (backend "bectl")."""
        return self.dir / "zfs"

    def agent(self, *args, check: bool = False, env: dict | None = None, crash_at: int = 0,
              trace: Path | None = None, config: Path = CONFIG) -> subprocess.CompletedProcess:
        """``bundle-agent ARGS`` on this device. ``trace``: append each crash point it passes to that
        file; ``crash_at``: kill it (SIGKILL) at the N-th, as a power cut would (keys/crashpoint.py)."""
        crash = {"BUNDLE_CRASH_AT": str(crash_at or ""), "BUNDLE_CRASH_TRACE": str(trace or "")}  # set or cleared
        pool = {"BECTL_STANDIN_ROOT": str(self.standin)} if self.backend == "bectl" else {}
        result = run_cli("bundle-agent", *self._options(*args, config=config),
                         env={**(env or {}), **crash, **pool})
        # install and on-insert exit 4 when they staged an update (a reboot starts the trial).
        done = (0, STAGED) if args and str(args[0]) in ("install", "on-insert") else (0,)
        if check and result.returncode not in done:
            raise AssertionError(f"bundle-agent {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def bectl(self, *args) -> str:
        """The bectl stand-in on this device's pool (the FreeBSD installer's and loader's part)."""
        result = subprocess.run([str(BECTL_STANDIN), *map(str, args)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "BECTL_STANDIN_ROOT": str(self.standin),
                                     "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout.strip()

    def flags(self) -> dict[str, str]:
        return {e["name"]: e["flags"] for e in self.status()["environments"]}

    def crash_points(self, *args) -> list[str]:
        """The names of the crash points ``bundle-agent ARGS`` passes, in order, run on a copy."""
        scratch = self.copy(self.dir.with_name(self.dir.name + ".traced"))
        trace = self.dir.with_name(self.dir.name + ".trace")
        try:
            scratch.agent(*args, trace=trace)
            return [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
        finally:
            trace.unlink(missing_ok=True)
            shutil.rmtree(scratch.dir)

    def agent_killed_at(self, point: str, *args, after: int = 0) -> None:
        """Run ``bundle-agent ARGS`` and kill it (SIGKILL) at the crash point named ``point`` - the
        ``after``-th point past it when given - as a power cut would."""
        names = self.crash_points(*args)
        number = names.index(point) + 1 + after
        result = self.agent(*args, crash_at=number)
        assert result.returncode == -9, f"not killed at {point}: {result.stdout}{result.stderr}"

    def status(self) -> dict:
        return json.loads(self.agent("status", "--json", check=True).stdout)

    def provision(self) -> None:
        """Provision with full-1 and boot it. bectl cannot make an empty environment (docs/BECTL.md,
        Provisioning): the factory's builder (dirs) makes env-1 as a tree, the installer lays it
        into the pool (bectl import) and the machine boots it."""
        if self.backend == "bectl":
            self.agent("provision", self.world.bundles / "full-1", config=FACTORY_CONFIG, check=True)
            self.bectl("__install", "env-1", self.dir / "factory/env-1")
            self.bectl("-r", BEROOT, "activate", "env-1")
            assert self.bectl("__reboot") == "env-1"
            return
        self.agent("provision", self.world.bundles / "full-1", check=True)
        self.agent("boot", check=True)

    # --- looking at the device ---------------------------------------------------------------

    @property
    def config(self) -> AgentConfig:
        """The configuration as the agent reads it (read again each time: tests edit it)."""
        return load_config(CONFIG, system_root=self.dir)

    @property
    def environments_dir(self) -> Path:
        return self.dir / "envs"

    def environments(self) -> list[str]:
        if not self.environments_dir.is_dir():
            return []
        return sorted(p.name for p in self.environments_dir.iterdir() if p.is_dir())

    def boot_record(self) -> dict:
        path = self.environments_dir / "boot.json"
        return json.loads(path.read_bytes()) if path.exists() else {}

    def committed(self) -> dict:
        """The committed state file (the caller made sure it parses: ``status`` exits 0)."""
        path = self.dir / "state/state.json"
        return json.loads(path.read_bytes()) if path.exists() else {}

    def snapshot(self) -> tuple[str, bytes, list[str]]:
        """The running environment's tree digest, the committed state bytes, the environment list."""
        state = (self.dir / "state/state.json").read_bytes()
        booted = self.environments_dir / self.boot_record()["booted"]
        return tree_digest(scan_tree(booted)), state, self.environments()

    def differences(self, environment: str, digests: dict[str, str]) -> str | None:
        """Why ``environment`` is not a complete tree of exactly these components (None: it is)."""
        root = self.environments_dir / environment
        if not root.is_dir():
            return f"{environment} does not exist"
        layout = self.config.layout
        paths = {name: layout.component_path(name) for name in digests}
        for name, relative in sorted(paths.items()):
            tree = root / relative
            if not tree.is_dir():
                return f"{environment} has no {name} (at {relative})"
            entries = scan_tree(tree, exclude=layout.left_alone(name, set(digests)))
            if name != "platform":
                entries = as_content(entries)  # games are content: no ownership (docs/FORMAT.md)
            if tree_digest(entries) != digests[name]:
                return f"{environment}'s {name} differs from its manifest's tree digest"
        roots = set(paths.values())
        if not roots & {".", ""}:  # nothing may sit beside the components (half-built trees, temporaries)
            ancestors = {"/".join(p.split("/")[:i]) for p in roots for i in range(1, p.count("/") + 1)}
            for directory, subdirectories, files in os.walk(root):
                relative = os.path.relpath(directory, root)
                for item in subdirectories + files:
                    path = item if relative == "." else f"{relative}/{item}"
                    if path in ancestors or any(path == r or path.startswith(r + "/") for r in roots):
                        continue
                    return f"{environment} holds {path!r}, which belongs to no component"
                subdirectories[:] = [d for d in subdirectories
                                     if (d if relative == "." else f"{relative}/{d}") in ancestors]
        return None
