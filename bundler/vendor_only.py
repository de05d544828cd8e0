"""The packages only `bundle make` needs (pyproject.toml's ``bundler`` extra), imported when used.

A device installs this project without them, and most `bundle` commands (verify, inspect, write,
keys, root, report) run without them too; making a delta without them says what to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from keys.errors import Failed


def vendor_module(name: str) -> ModuleType:
    """The module ``name``; raises Failed saying how to install it if it is missing."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise Failed(f"bundle make needs the Python package {name}, which is not installed",
                     hint="install the bundler's extras: pip install 'offline-bundle[bundler]' "
                          "(make demo and make test do)") from None
