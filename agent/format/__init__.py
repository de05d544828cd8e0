"""The bundle wire format: manifest, tree listing, path rules, bundle directory layout.

Both the bundler and the agent import this package; nothing else defines these layouts
(docs/adr/0001-package-layout.md, docs/FORMAT.md).
"""
