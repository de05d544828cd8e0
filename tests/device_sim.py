"""A simulated cabinet for agent tests: releases, bundles and sticks made with the real tools,
and a device directory (config, environments, state) driven through the real bundle-agent."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from agent.format.tree import tree_digest
from agent.scan import scan_tree
from bundler.demo import build_releases
from tests.conftest import run_cli


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
    """One device: config, environments and state under ``directory``."""

    def __init__(self, world: World, directory: Path, *, product="demo-cabinet", hardware="cab-a",
                 serial="SN0001", healthy=True, reboot="never", layout: dict | None = None):
        """``layout``: the [layout] table (strings, or lists of strings for ``preserve``)."""
        self.world = world
        self.layout = layout
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.health = directory / "health"
        self.set_health(healthy)
        (directory / "agent.toml").write_text(f"""
[device]
product = "{product}"
hardware = "{hardware}"
serial = "{serial}"
state_dir = "{directory / 'state'}"
[trust]
root = "{world.root}"
[boot]
backend = "dirs"
root = "{directory / 'envs'}"
[health]
hooks = ["{self.health}"]
timeout = 20
[reboot]
policy = "{reboot}"
""" + ("[layout]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in layout.items()) if layout else ""))

    def set_health(self, healthy: bool) -> None:
        self.health.write_text("#!/bin/sh\n" + ("exit 0\n" if healthy else "echo 'reels do not spin' >&2; exit 7\n"))
        self.health.chmod(0o755)

    def agent(self, *args, check: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
        return run_cli("bundle-agent", "--config", self.dir / "agent.toml", *args, check=check, env=env)

    def crash_points(self, *args) -> list[str]:
        """The names of the crash points ``bundle-agent ARGS`` passes, run on a copy of this device
        (keys/crashpoint.py). The copy is a separate device only because every path in the
        configuration is absolute: the original is copied aside and back instead."""
        aside = self.dir.with_name(self.dir.name + ".aside")
        shutil.copytree(self.dir, aside, symlinks=True)
        trace = self.dir.with_name(self.dir.name + ".trace")
        try:
            self.agent(*args, env={"BUNDLE_CRASH_TRACE": str(trace)})
            return [line.split(" ", 1)[1] for line in trace.read_text().splitlines()]
        finally:
            trace.unlink(missing_ok=True)
            shutil.rmtree(self.dir)
            aside.rename(self.dir)

    def agent_killed_at(self, point: str, *args, after: int = 0) -> None:
        """Run ``bundle-agent ARGS`` and kill it (SIGKILL) at the crash point named ``point`` - the
        ``after``-th point past it when given - as a power cut would."""
        names = self.crash_points(*args)
        number = names.index(point) + 1 + after
        result = self.agent(*args, env={"BUNDLE_CRASH_AT": str(number)})
        assert result.returncode == -9, f"not killed at {point}: {result.stdout}{result.stderr}"

    def status(self) -> dict:
        return json.loads(self.agent("status", "--json", check=True).stdout)

    def provision(self) -> None:
        self.agent("provision", self.world.bundles / "full-1", check=True)
        self.agent("boot", check=True)

    def _booted(self) -> Path:
        record = json.loads((self.dir / "envs/boot.json").read_text())
        return self.dir / "envs" / record["booted"]

    def snapshot(self) -> tuple[str, bytes, list[str]]:
        """The running environment's tree digest, the committed state bytes, the environment list."""
        state = (self.dir / "state/state.json").read_bytes()
        return (tree_digest(scan_tree(self._booted())), state,
                sorted(p.name for p in (self.dir / "envs").iterdir() if p.is_dir()))
