"""Keys, the trust root, release 1 and its full bundle: what a vendor makes with `bundle`.

Every step is the documented command line (docs/OPERATOR.md), run as a vendor would run it,
so the image is provisioned exactly like a cabinet at the factory.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tools import run

PRODUCT = "reference-cabinet"
HARDWARE = "qemu-x86_64"
SERIAL = "REF0001"
PLATFORM_VERSION = "1.0.0"
GAME_VERSION = "1.0"

# zstd level of the factory bundle. The default (19) is for bundles that travel on sticks; this
# one is made and provisioned on the same machine minutes later, and at level 19 compressing the
# platform would take most of the build's ten minutes (README.md, "Timings").
BUNDLE_LEVEL = 3


def bundle_command() -> str:
    """The vendor's `bundle` of the venv running this build."""
    return str(Path(sys.executable).parent / "bundle")


def make_keys(keys: Path) -> None:
    """One root key and one release signer (no passphrase: the reference image's keys are test
    keys, kept in build/image/keys for the VM tests to sign later releases), and trust root
    version 1: threshold 1 of 1 for both, signed by the root key."""
    keys.mkdir(parents=True)
    for name in ("root", "release"):
        run([bundle_command(), "keys", "new", name, "--dir", keys, "--no-passphrase"], quiet=True)
    root = keys / "root.json"
    run([bundle_command(), "root", "new", "--out", root, "--root-key", keys / "root.pub", "--root-threshold", "1",
         "--signer", keys / "release.pub", "--threshold", "1"], quiet=True)
    run([bundle_command(), "root", "sign", root, "--key", keys / "root.key"], quiet=True)
    run([bundle_command(), "root", "verify", root], quiet=True)


def trust_root_files(keys: Path) -> list[Path]:
    """root.json and its signature files (root.json.<KEY ID>.minisig), as a device keeps them."""
    return [keys / "root.json", *sorted(keys.glob("root.json.*.minisig"))]


def make_demo_game(folder: Path, run_script: Path) -> None:
    """The demo game component: an executable `run` that logs a line every few seconds."""
    folder.mkdir(parents=True)
    shutil.copyfile(run_script, folder / "run")
    (folder / "run").chmod(0o755)


def write_release_toml(release: Path) -> Path:
    """release.toml of release 1: the platform (the whole root tree) and the demo game."""
    path = release / "release.toml"
    path.write_text(f'''product = "{PRODUCT}"
hardware = ["{HARDWARE}"]
[components.platform]
path = "platform"
version = "{PLATFORM_VERSION}"
sequence = 1
[components."game/demo"]
path = "games/demo"
version = "{GAME_VERSION}"
sequence = 1
''')
    return path


def make_bundle(release_toml: Path, keys: Path, out: Path) -> None:
    """The full bundle of release 1, signed by the release signer."""
    run([bundle_command(), "make", "--release", release_toml, "--key", keys / "release.key", "--out", out,
         "--level", str(BUNDLE_LEVEL), "--threads", "2"], quiet=True)
