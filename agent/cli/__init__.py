"""``bundle-agent``: the device's command line (docs/AGENT.md). Imports verification code only,
never signing (tests/test_device_cannot_sign.py).

``main.py`` the group; ``install.py`` install and provision; ``on_insert.py`` the unattended entry
point; ``lifecycle.py`` boot, boot-check, rollback, status; ``root.py`` root verify (the vendor's
``bundle`` offers it too); ``context.py`` the device, opened only for the commands that need it;
``output.py`` reports for people and ``--json``; ``errors.py`` the one place where errors become
messages and exit codes, for both command lines.
"""

from agent.cli.main import main

__all__ = ["main"]
