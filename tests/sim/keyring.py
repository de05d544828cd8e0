"""Named in-memory keys and helpers to build and sign trust roots in tests."""

from __future__ import annotations

from keys.minisign import Signature
from keys.rotation import RootCandidate
from keys.secret_key import SecretKey
from keys.signing import sign
from keys.trust_root import NamedKey, Role, TrustRoot


class Keyring:
    """Keys made on first mention: ``ring.key("root1")`` is the same key every time."""

    def __init__(self) -> None:
        self.secrets: dict[str, SecretKey] = {}

    def secret(self, name: str) -> SecretKey:
        if name not in self.secrets:
            self.secrets[name] = SecretKey.generate()
        return self.secrets[name]

    def key(self, name: str) -> NamedKey:
        return NamedKey(public_key=self.secret(name).public_key, name=name)

    def role(self, names, threshold: int) -> Role:
        return Role(tuple(self.key(n) for n in names), threshold)

    def root(self, version: int, root_keys, root_threshold: int, signers=("rel1",), threshold: int = 1,
             revoked=()) -> TrustRoot:
        return TrustRoot(version=version, root_keys=self.role(root_keys, root_threshold),
                         release_signers=self.role(signers, threshold),
                         revoked_keys=tuple(self.key(n) for n in revoked))

    def sign(self, data: bytes, names) -> list[Signature]:
        return [sign(self.secret(n), data, "test") for n in names]

    def candidate(self, root: TrustRoot, signed_by) -> RootCandidate:
        raw = root.to_bytes()
        return RootCandidate(raw=raw, signatures=self.sign(raw, signed_by), where=f"root-{root.version}.json")
