"""Run inside the cabinet (by the agent's own Python, /opt/bundle-agent/bin/python): what the VM
tests check after a power cut, printed as one JSON line.

* the booted environment (``bundle.env=`` and ``bundle.trial`` on /proc/cmdline);
* the committed state (state.json, read by the agent's own loader: it must parse);
* every component's tree digest in the booted environment, computed the way staging verifies a
  tree (agent/scan.py, the layout's nested trees and machine-local paths left out, games as
  content), next to the digest the state recorded from the signed manifest at install;
* the environments in the pool.

A digest is computed again only when the subvolume changed since it was last computed: the cache
in /var/tmp is keyed by the subvolume's UUID and btrfs generation, which any write to it raises.
Environments are read-only once built, and hashing a whole platform takes ~50 s under TCG.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from agent.config import load_config
from agent.format.tree import tree_digest
from agent.scan import as_content, scan_tree

CACHE = Path("/var/tmp/vm-check.json")  # on the var subvolume: kept across boots


def generation(path: Path) -> str:
    shown = subprocess.run(["btrfs", "subvolume", "show", str(path)], capture_output=True, text=True).stdout
    found = re.search(r"Generation:\s*(\d+)", shown)
    uuid = re.search(r"\bUUID:\s*(\S+)", shown)
    return f"{uuid.group(1) if uuid else '?'}/{found.group(1) if found else '?'}"


def main() -> int:
    start = time.monotonic()
    cmdline = Path("/proc/cmdline").read_text()
    booted = re.search(r"\bbundle\.env=(\S+)", cmdline)
    config = load_config(Path("/etc/bundle-agent.toml"))
    pool = Path(config.backend_settings.get("pool", "/pool"))
    report = {"booted": booted.group(1) if booted else None, "trial": "bundle.trial" in cmdline,
              "environments": sorted(p.name for p in (pool / "envs").iterdir())}
    try:
        state = json.loads((config.state_dir / "state.json").read_text())
    except (OSError, ValueError) as error:
        report["state_error"] = str(error)
        print(json.dumps(report))
        return 0
    report["committed"] = state.get("environment")
    components = state.get("components", {})
    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, ValueError):  # none yet, or torn by a power cut: compute again
        cache = {}
    digests = {}
    if report["booted"]:
        root = pool / "envs" / report["booted"]
        key = generation(root)
        if key not in cache:
            layout = config.layout
            computed = {}
            for name in components:
                tree = root / layout.component_path(name)
                entries = scan_tree(tree, exclude=layout.left_alone(name, set(components))) if tree.is_dir() else None
                if entries is not None and name != "platform":
                    entries = as_content(entries)  # games are content: no ownership (docs/FORMAT.md)
                computed[name] = tree_digest(entries) if entries is not None else None
            cache[key] = computed
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            CACHE.write_text(json.dumps(cache))
        digests = cache[key]
    report["components"] = {name: {"state": value.get("tree_digest"), "tree": digests.get(name),
                                   "sequence": value.get("sequence")} for name, value in components.items()}
    report["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
