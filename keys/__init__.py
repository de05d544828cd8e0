"""The trust layer: Ed25519 keys, minisign signatures, the threshold-signed trust root.

Verification modules (``minisign``, ``trust_root``, ``threshold``, ``rotation``, ``detached``)
are pure and safe for the device. ``secret_key`` (with its file formats ``minisign_secret_key``
and ``legacy_secret_key``) and ``signing`` hold and use secret keys: vendor side only
(docs/adr/0001-package-layout.md).
"""
