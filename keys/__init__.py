"""The trust layer: Ed25519 keys, minisign signatures, the threshold-signed trust root.

Verification modules (``minisign``, ``trust_root``, ``threshold``, ``rotation``, ``detached``)
are pure and safe for the device. ``secret_key``, ``signing`` and ``cli`` hold and use secret
keys: vendor side only (docs/adr/0001-package-layout.md).
"""
