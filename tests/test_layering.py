"""Packages depend one way only (docs/adr/0001-package-layout.md, docs/ARCHITECTURE.md):
``keys`` <- ``agent.format`` <- ``agent`` <- ``bundler``. The wire format is pure (no file
system, no agent module above it), the trust library knows nothing of bundles, and nothing the
device runs imports the vendor's tools. Checked on the source, for every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["keys", "agent.format", "agent", "bundler"]  # lowest first
# agent/format/ is bytes in, typed objects out: reading files belongs to agent/medium.py.
NO_FILE_SYSTEM_IN = "agent.format"
# Path arithmetic (pathlib) is allowed there; opening, listing and reading files is not.
FILE_SYSTEM_MODULES = {"os", "shutil", "tempfile", "glob", "io"}
# Third-party packages only the vendor's bundler needs: a device never loads them (FreeBSD has
# no wheels for them; the agent's dependencies are pynacl, zstandard, click and tqdm).
VENDOR_ONLY = {"pyfastcdc", "bsdiff4"}
FILE_SYSTEM_CALLS = {"open", "read_bytes", "read_text", "write_bytes", "write_text", "iterdir", "mkdir", "unlink"}


def layer(module: str) -> int | None:
    """The layer of a module of ours (None for the standard library and third parties)."""
    for name in sorted(LAYERS, key=len, reverse=True):  # the most specific prefix first
        if module == name or module.startswith(name + "."):
            return LAYERS.index(name)
    return None


def imports(source: str, module: str) -> list[str]:
    """Every module ``source`` imports, relative imports resolved against ``module``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[:-node.level]
                base = ".".join(parts + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names if layer(f"{base}.{alias.name}") is not None
                      and (ROOT / f"{base}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()]
    return found


def violations(source: str, module: str) -> list[str]:
    own = layer(module)
    found = []
    for imported in imports(source, module):
        target = layer(imported)
        if target is not None and own is not None and target > own:
            found.append(f"{module} imports {imported}, a layer above it")
        if own is not None and own < LAYERS.index("bundler") and imported.split(".")[0] in VENDOR_ONLY:
            found.append(f"{module} imports {imported}, which only the bundler needs")
        if module.startswith(NO_FILE_SYSTEM_IN) and imported.split(".")[0] in FILE_SYSTEM_MODULES:
            found.append(f"{module} imports {imported}: the wire format reads no files")
    if module.startswith(NO_FILE_SYSTEM_IN):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", getattr(node.func, "id", None))
                if name in FILE_SYSTEM_CALLS:
                    found.append(f"{module} calls {name}() on line {node.lineno}: the wire format reads no files")
    return found


def our_modules() -> list[tuple[str, Path]]:
    result = []
    for package in ("keys", "agent", "bundler"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            result.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return result


@pytest.mark.parametrize("module, path", our_modules(), ids=[m for m, _ in our_modules()])
def test_no_module_imports_upward(module, path):
    assert violations(path.read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize("module, source, complaint", [
    ("keys.threshold", "from agent.format.manifest import Manifest\n", "a layer above it"),
    ("agent.format.stick", "from agent.beneath import open_beneath\n", "a layer above it"),
    ("agent.format.codec", "import os\n", "the wire format reads no files"),
    ("agent.format.bundle_dir", "def read(path):\n    return path.read_bytes()\n", "the wire format reads no files"),
    ("agent.install", "import bundler.make\n", "a layer above it"),
    ("agent.format.tree", "from ..beneath import Beneath\n", "a layer above it"),
    ("agent.apply", "from pyfastcdc import FastCDC\n", "which only the bundler needs"),
])
def test_the_check_fails_on_an_upward_import(module, source, complaint):
    """The test can fail: each of these lines, added to that module, is reported."""
    assert any(complaint in v for v in violations(source, module))
