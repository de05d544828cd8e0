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


class Story:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.env.pop("BUNDLE_PASSPHRASE", None)

    def say(self, text: str) -> None:
        print("\n" + textwrap.fill(textwrap.dedent(text).strip(), width=96))

    def run(self, command: str, *, refused: bool = False, env: dict | None = None) -> None:
        print(f"\n  $ {command}")
        result = subprocess.run(shlex.split(command), cwd=self.workdir, env={**self.env, **(env or {})},
                                capture_output=True, text=True)
        for line in (result.stdout + result.stderr).splitlines():
            print(f"    {line}")
        if refused and result.returncode == 0:
            sys.exit(f"demo: expected a refusal from: {command}")
        if not refused and result.returncode != 0:
            sys.exit(f"demo: command failed (exit {result.returncode}): {command}")
        if refused:
            print(f"    (exit {result.returncode}: refused, as it should be)")


def trust_story(story: Story) -> None:
    story.say("""
        1. Keys. The vendor makes two offline root keys (who may change trust) and two release
        signers (who sign bundles). Secret keys are encrypted with a passphrase (Argon2id); public
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
    story.run("bundle-agent root verify root-2.json --trusted root.json", refused=True)
    story.run("bundle root sign root-2.json --key keys/root3.key")
    story.run("bundle-agent root verify root-2.json --trusted root.json")
    story.say("An old stick cannot talk a device back into version 1:")
    story.run("bundle-agent root verify root.json --trusted root-2.json", refused=True)

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


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bundle-demo-") as workdir:
        story = Story(Path(workdir))
        story.say(f"Working in a throwaway directory: {workdir}")
        trust_story(story)
        story.say("Demo complete: every step above behaved as expected.")


if __name__ == "__main__":
    main()
