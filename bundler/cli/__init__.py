"""``bundle``: the vendor's command line (docs/OPERATOR.md).

``main.py`` the group; ``keys.py`` key pairs and detached signatures; ``root.py`` the trust root;
``bundles.py`` make, sign, verify and inspect bundles; ``write.py`` write a stick;
``token.py`` technician tokens; ``passphrase.py`` secret keys and their passphrases; ``options.py``
shared parameter types.
Errors become exit codes in agent/cli/errors.py, shared with ``bundle-agent``.
"""

from bundler.cli.main import main

__all__ = ["main"]
