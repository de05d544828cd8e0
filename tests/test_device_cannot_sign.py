"""The device verifies but cannot sign: importing all of agent/ loads no signing code.

Like signify's VERIFYONLY build: a compromised device process finds no signing or key-storage
code to misuse, and a stray import would show up here.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ["keys.signing", "keys.secret_key", "keys.minisign_secret_key", "keys.legacy_secret_key", "bundler",
             "nacl.pwhash", "nacl.secret"]

PROBE = """
import importlib, json, pkgutil, sys
import agent
for module in pkgutil.walk_packages(agent.__path__, "agent."):
    importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_agent_imports_no_signing_module():
    loaded = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                                       check=True).stdout)
    assert "agent.cli" in loaded and "keys.threshold" in loaded and "keys.rotation" in loaded
    leaked = [name for name in loaded if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)]
    assert leaked == []


def test_the_probe_would_notice_a_leak():
    """Guard against a test that cannot fail: the vendor CLI does load signing code."""
    probe = "import bundler.cli, sys; print('keys.signing' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"
