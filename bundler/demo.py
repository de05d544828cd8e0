"""``make demo``: the story so far, told with the real commands in a temporary directory.

Each step prints the command exactly as an operator would type it, then its output. A step
that is expected to be refused says so, and the demo fails if it is not.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from agent.cli.install import EXIT_STAGED as STAGED
from agent.format import bundle_dir, stick


class Story:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.env.pop("BUNDLE_PASSPHRASE", None)

    def say(self, text: str) -> None:
        print("\n" + textwrap.fill(textwrap.dedent(text).strip(), width=96))

    def run(self, command: str, *, refused: bool = False, staged: bool = False, env: dict | None = None) -> None:
        """Runs ``command`` and stops the demo unless it exits as expected: 0, 3 when ``refused``,
        4 when ``staged`` (an update staged: a reboot starts the trial; docs/OPERATOR.md)."""
        print(f"\n  $ {command}")
        result = subprocess.run(shlex.split(command), cwd=self.workdir, env={**self.env, **(env or {})},
                                capture_output=True, text=True)
        for line in (result.stdout + result.stderr).splitlines():
            print(f"    {line}")
        if refused and result.returncode == 0:
            sys.exit(f"demo: expected a refusal from: {command}")
        if not refused and result.returncode != (STAGED if staged else 0):
            sys.exit(f"demo: command failed (exit {result.returncode}): {command}")
        if refused:
            print(f"    (exit {result.returncode}: refused, as it should be)")
        if staged:
            print(f"    (exit {STAGED}: staged, a reboot starts the trial)")


def trust_story(story: Story) -> None:
    story.say("""
        1. Keys. The vendor makes two offline root keys (who may change trust) and two release
        signers (who sign bundles). Secret keys are minisign keys, encrypted with a passphrase (scrypt); public
        keys are standard minisign files.""")
    story.run("bundle keys new root1 --dir keys --kdf-cost interactive", env={"BUNDLE_PASSPHRASE": "demo root one"})
    for name in ("root2", "root3", "rel1", "rel2"):
        story.run(f"bundle keys new {name} --dir keys --no-passphrase")

    story.say("""
        2. The trust root. Version 1 needs both root keys to change it and both release signers
        on every bundle (the two-person rule). It is useless until the root key holders sign it.""")
    story.run("bundle root new --out root.json --root-key keys/root1.pub --root-key keys/root2.pub "
              "--root-threshold 2 --signer keys/rel1.pub --signer keys/rel2.pub --threshold 2")
    story.run("bundle root verify root.json", refused=True)
    story.run("bundle root sign root.json --key keys/root1.key", env={"BUNDLE_PASSPHRASE": "demo root one"})
    story.run("bundle root sign root.json --key keys/root2.key")
    story.run("bundle root verify root.json")

    story.say("""
        3. A lost key. Root key 1's holder loses their laptop. The vendor writes version 2 without
        root1 and with root3. Devices accept it only when a threshold of the keys they already
        trust AND a threshold of the new root keys signed it; root1 is revoked for good.""")
    story.run("bundle root rotate --from root.json --out root-2.json --remove-root-key keys/root1.pub "
              "--add-root-key keys/root3.pub")
    story.run("bundle root sign root-2.json --key keys/root1.key", env={"BUNDLE_PASSPHRASE": "demo root one"})
    story.run("bundle root sign root-2.json --key keys/root2.key")
    story.run("bundle-agent root verify root-2.json --root root.json", refused=True)
    story.run("bundle root sign root-2.json --key keys/root3.key")
    story.run("bundle-agent root verify root-2.json --root root.json")
    story.say("An old stick cannot talk a device back into version 1:")
    story.run("bundle-agent root verify root.json --root root-2.json", refused=True)

    story.say("""
        4. Standard tools. Every signature is a minisign signature, so an auditor can check any
        of them without our code.""")
    Path(story.workdir, "release-notes.txt").write_text("Release 13.2.1: security fixes.\n")
    story.run("bundle keys sign release-notes.txt --key keys/rel1.key")
    story.run("bundle keys verify release-notes.txt --pub keys/rel1.pub")
    if shutil.which("minisign"):
        story.run("minisign -V -p keys/rel1.pub -m release-notes.txt")
    else:
        story.say("(minisign is not installed here; `make test` installs it for the interop tests.)")


def _write(root: Path, relative: str, data: bytes, mode: int = 0o644) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def build_releases(workdir: Path) -> None:
    """Two releases of a small cabinet: R2 patches the platform, changes one game, adds another."""
    import gzip
    import random
    rng = random.Random(13)
    engine = rng.randbytes(400_000)
    changelog = "".join(f"  * fix {i}: tightened input checks\n" for i in range(3000)).encode()
    reels = rng.randbytes(200_000)
    for name, version, sequence in (("r1", "13.2.0", 6), ("r2", "13.2.1", 7)):
        root = workdir / name
        platform = root / "platform"
        patched = name == "r2"
        _write(platform, "usr/bin/cabinet-engine", engine[:1000] + (b"PATCHED!" if patched else b"original") +
               engine[1008:], 0o755)
        _write(platform, "usr/bin/sudo", b"#!/bin/sh\n# stand-in for a setuid binary\n", 0o4755)
        _write(platform, "etc/cabinet.conf", b"payout_table = standard\n" + (b"audit = strict\n" if patched else b""))
        _write(platform, "usr/share/doc/cabinet/changelog.gz",
               gzip.compress((b"13.2.1: security fixes\n" if patched else b"") + changelog, 9, mtime=0))
        os.symlink("cabinet-engine", platform / "usr/bin/engine")
        lucky = root / "games/lucky-sevens"
        _write(lucky, "reels.dat", reels[:5000] + (b"new reel strip" if patched else b"old reel strip") + reels[5014:])
        _write(lucky, "paytable.json", b'{"777": 500}\n')
        lines = ['product = "demo-cabinet"', 'hardware = ["cab-a", "cab-b"]',
                 '[components.platform]', 'path = "platform"', f'version = "{version}"', f"sequence = {sequence}",
                 '[components."game/lucky-sevens"]', 'path = "games/lucky-sevens"',
                 f'version = "{"2.0" if patched else "1.0"}"', f"sequence = {3 if patched else 2}"]
        if patched:
            _write(root / "games/fortune-wheel", "wheel.dat", rng.randbytes(50_000))
            lines += ['[components."game/fortune-wheel"]', 'path = "games/fortune-wheel"', 'version = "1.0"',
                      "sequence = 1"]
        (root / "release.toml").write_text("\n".join(lines) + "\n")


def bundle_story(story: Story) -> None:
    build_releases(story.workdir)
    story.say("""
        5. Two releases. r1/ and r2/ each hold a release.toml and its trees: the platform and the
        games. Release 2 patches the platform (13.2.0 -> 13.2.1), changes Lucky Sevens and adds
        Fortune Wheel.""")
    story.run("cat r2/release.toml")
    story.say("""
        6. Bundles. A full bundle of release 1 for the factory, and a delta from 1 to 2 for the
        field: only what changed travels, patched against the files the machines already have.""")
    story.run("bundle make --release r1/release.toml --key keys/rel1.key --key keys/rel2.key --out bundles/full-1")
    story.run("bundle make --release r2/release.toml --base r1/release.toml --key keys/rel1.key --out bundles/d12")
    story.say("The delta carries one signature; the trust root demands two (the two-person rule):")
    story.run("bundle verify bundles/d12 --root root.json --root root-2.json", refused=True)
    story.run("bundle sign bundles/d12 --key keys/rel2.key --root root.json --root root-2.json")
    story.say("""
        Now it verifies - and with the old trees as bases it is applied by the device's own engine
        in a scratch directory, every resulting file checked against the signed manifest:""")
    story.run("bundle verify bundles/d12 --root root.json --root root-2.json --base platform=r1/platform "
              "--base game/lucky-sevens=r1/games/lucky-sevens")
    story.run("bundle inspect bundles/d12 --root root.json --root root-2.json")
    story.say("One flipped byte anywhere, and the bundle is refused:")
    volume = next((story.workdir / "bundles/d12/payload").iterdir())
    data = bytearray(volume.read_bytes())
    data[len(data) // 2] ^= 1
    shutil.copytree(story.workdir / "bundles/d12", story.workdir / "bundles/d12-tampered")
    (story.workdir / "bundles/d12-tampered/payload" / volume.name).write_bytes(bytes(data))
    story.run("bundle verify bundles/d12-tampered --root root.json --root root-2.json", refused=True)


def device_story(story: Story) -> None:
    work = story.workdir
    device = work / "cabinet"
    device.mkdir()
    health = device / "health"
    health.write_text("#!/bin/sh\n# the cabinet's own check: here, the reels and the bill acceptor answer\nexit 0\n")
    health.chmod(0o755)
    (device / "agent.toml").write_text(f"""[device]
product = "demo-cabinet"
hardware = "cab-a"
serial = "SN0001"
state_dir = "{device}/state"
[trust]
root = "{work}/root.json"
[boot]
backend = "dirs"
root = "{device}/envs"
[health]
hooks = ["{health}"]
""")
    agent = "bundle-agent --config cabinet/agent.toml"
    story.say("""
        7. The factory. A cabinet (a directory standing in for the machine: its boot environments,
        its state, its configuration) receives the provisioned trust root and release 1 from the
        full bundle. The agent plays the boot loader for the `dirs` backend.""")
    story.run(f"{agent} provision bundles/full-1")
    story.run(f"{agent} boot")
    story.say("""
        8. The stick. The vendor writes the delta and the trust-root chain to a USB stick; every
        byte is read back before the stick is called good.""")
    (work / "stick").mkdir()
    story.run("bundle write stick bundles/full-1 bundles/d12 --root root.json --root root-2.json")
    story.say("""
        9. Insertion. The cabinet verifies everything on the stick before writing a byte, stages
        release 2 into a new environment cloned from the running one, checks every file, and arms
        it for one trial boot (T). The running environment (N, R) is untouched.""")
    story.run(f"{agent} on-insert stick", staged=True)
    story.run(f"{agent} status")
    story.say("""
        10. The trial. The next boot starts the new environment once; the health check passes,
        so it is committed (R). Had the power failed during the trial, the next boot would have
        come back to the old environment by itself.""")
    story.run(f"{agent} boot")
    story.run(f"{agent} boot-check")
    story.run(f"{agent} status")
    story.say("""
        11. A tampered stick. Someone flips one byte of the delta on a copy of the stick. The
        cabinet at release 2 has nothing to take from it anyway; its state is untouched.""")
    shutil.copytree(work / "stick", work / "bad-stick")
    bundle = next(p for p in (work / "bad-stick/demo-cabinet/bundles").iterdir()
                  if p.name == _bundle_folder(work / "bundles/d12"))
    volume = next((bundle / "payload").iterdir())
    data = bytearray(volume.read_bytes())
    data[len(data) // 2] ^= 1
    volume.write_bytes(bytes(data))
    before = (device / "state/state.json").read_bytes()
    story.run(f"{agent} on-insert bad-stick")
    story.say("""
        A second cabinet, still at release 1, would take the delta - so the damage matters: the
        stick is refused before anything is written, and the cabinet stays as it was.""")
    second = work / "cabinet-2"
    shutil.copytree(device, second, ignore=shutil.ignore_patterns("envs", "state"))
    (second / "agent.toml").write_text((device / "agent.toml").read_text().replace(str(device), str(second)))
    agent2 = "bundle-agent --config cabinet-2/agent.toml"
    story.run(f"{agent2} provision bundles/full-1")
    story.run(f"{agent2} boot")
    story.run(f"{agent2} on-insert bad-stick", refused=True)
    story.run(f"{agent2} status")
    assert (device / "state/state.json").read_bytes() == before
    story.say("""
        12. A bad update. Release 2 reaches the second cabinet, but its health check fails (the
        reels do not spin). The agent rolls back to release 1 by itself and records why. Back in
        release 1, the next boot-check removes the failed environment.""")
    (second / "health").write_text("#!/bin/sh\necho 'reel motor 2 does not answer' >&2\nexit 1\n")
    story.run(f"{agent2} on-insert stick", staged=True)
    story.run(f"{agent2} boot")
    story.run(f"{agent2} boot-check", refused=True)
    story.run(f"{agent2} boot")
    story.run(f"{agent2} boot-check")
    story.run(f"{agent2} status")
    assert sorted(p.name for p in (second / "envs").iterdir() if p.is_dir()) == ["env-1"]


def _bundle_folder(bundle: Path) -> str:
    """The folder ``bundle write`` gives the bundle on a stick."""
    return stick.bundle_id(bundle_dir.manifest_path(bundle).read_bytes())


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bundle-demo-") as workdir:
        story = Story(Path(workdir))
        story.say(f"Working in a throwaway directory: {workdir}")
        trust_story(story)
        bundle_story(story)
        device_story(story)
        story.say("Demo complete: every step above behaved as expected.")


if __name__ == "__main__":
    main()
