"""Typed errors shared by every layer: what went wrong, where, and what to do.

Only the command-line layer turns these into exit codes (see ``agent/cli/errors.py``):
``Failed`` means the tool could not complete its job (exit 1), ``Refused`` means the input
was examined and the answer is no (exit 3) - the distinction minisign makes between "could
not answer" and "the answer is no".
"""

from __future__ import annotations


class UpdateError(Exception):
    """Base of every error the tools report to a person.

    ``message`` says what is wrong, ``where`` names the file or object it concerns, and
    ``hint`` says what the user can do about it.
    """

    exit_code = 1

    def __init__(self, message: str, *, where: object | None = None, hint: str | None = None):
        self.message = message
        self.where = None if where is None else str(where)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return prefix + self.message


class Failed(UpdateError):
    """The tool could not complete (I/O error, missing file, wrong passphrase...)."""

    exit_code = 1


class Refused(UpdateError):
    """The input was examined and rejected; nothing was changed."""

    exit_code = 3


class AlreadyExists(Failed):
    """Keys, trust roots and bundles are created exclusively: an existing one is never overwritten."""


# --- trust layer -------------------------------------------------------------------------


class MalformedKey(Refused):
    """A public or secret key file does not have the expected format."""


class MalformedSignature(Refused):
    """A signature file does not have minisign's format."""


class BadSignature(Refused):
    """A well-formed signature does not verify over the given bytes with the given key."""


class MalformedTrustRoot(Refused):
    """A trust-root document is not valid JSON of the expected shape."""


class ThresholdNotMet(Refused):
    """Fewer distinct trusted keys signed than the threshold requires.

    ``result`` is the :class:`keys.threshold.ThresholdResult` that explains who signed.
    """

    def __init__(self, result, *, where: object | None = None, hint: str | None = None):
        self.result = result
        super().__init__(result.describe(), where=where, hint=hint)


class RotationRefused(Refused):
    """A newer trust root cannot be accepted from the trusted one (version rules, revocation)."""


class WrongPassphrase(Failed):
    """A secret key could not be decrypted with the passphrase given."""


class PassphraseUnavailable(Failed):
    """An encrypted key needs a passphrase and none could be obtained."""
