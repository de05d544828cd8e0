"""Every path under the agent's state directory, named once (docs/AGENT.md, "State and crash safety").

    STATE/state.json      what is committed (agent/state.py)
    STATE/journal.json    the step in progress and the failed trials
    STATE/result.json     the last outcome, for status
    STATE/audit.log       every decision with its reason (agent/audit.py), rotated to audit.log.1
    STATE/agent.lock      one agent at a time (agent/lock.py)
    STATE/trust/          trust roots accepted since the anchor, provisioned or replaced (agent/trust_store.py)
    STATE/trust-anchor/   a trust root installed in place of the provisioned one by a technician token
                          (root-<N>.json and its signatures; agent/trust_store.py, agent/technician/trust.py)
    STATE/spool/<SHA-256> a chosen bundle's verified bytes, while it is installed
    STATE/chain/          the intermediate trees of a chain of deltas, while it is staged
    STATE/manifests/<SHA-256>/   the signed manifests (and signatures) of what is installed (agent/kept.py)
    STATE/environments/<ENV>.json  which kept manifest each component of an environment came from
    STATE/identity/       the device's own key pair, for signing reports (agent/identity.py)
    STATE/report-counter  the number of the last report (agent/device_report.py)
    STATE/tokens-used.json  technician tokens already used (agent/tokens.py)

The spool and the chain folder exist only during an install; after a crash the next command
removes them (agent/resume.py).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from keys.errors import Failed

STATE_FILE = "state.json"
JOURNAL_FILE = "journal.json"
RESULT_FILE = "result.json"
TRUST_ANCHOR_FOLDER = "trust-anchor"


class StateUnusable(Failed):
    """The state directory or a file in it cannot be read or written (rights, a file in its place)."""


def unusable(error: OSError, path: Path, doing: str) -> StateUnusable:
    """The typed error for an OSError met while ``doing`` something with the state at ``path``:
    the commands need the state, so they stop with a message that says what to check."""
    where = error.filename or path
    if error.errno in (errno.EACCES, errno.EPERM):
        return StateUnusable(f"no permission to {doing}", where=where,
                             hint=f"run bundle-agent as root, or check the owner and mode of {path}")
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return StateUnusable(f"cannot {doing}: a file stands where a folder is needed", where=where,
                             hint="[device] state_dir must name a directory (docs/AGENT.md, \"Configuration\")")
    if error.errno in (errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        return StateUnusable(f"cannot {doing}: {error.strerror}", where=where,
                             hint="the state directory's filesystem must be writable and have free space")
    return StateUnusable(f"cannot {doing}: {error.strerror or error}", where=where,
                         hint=f"check the state directory {path}")


@dataclass(frozen=True)
class StateDir:
    root: Path

    def file(self, name: str) -> Path:
        """One of the three state files (STATE_FILE, JOURNAL_FILE, RESULT_FILE)."""
        if name not in (STATE_FILE, JOURNAL_FILE, RESULT_FILE):
            raise ValueError(f"not a state file: {name}")  # a programmer's mistake, not input
        return self.root / name

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def lock(self) -> Path:
        return self.root / "agent.lock"

    @property
    def trust(self) -> Path:
        return self.root / "trust"

    @property
    def trust_anchor(self) -> Path:
        """Next to ``trust``, always: agent/trust_store.py finds it from the ``trust`` folder it is
        given, so no caller can forget the replaced anchor and fall back to the provisioned root."""
        return self.root / TRUST_ANCHOR_FOLDER

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    def spooled_bundle(self, manifest_sha256: str) -> Path:
        """Named by the hash the agent computed, never by a name from the medium (T-MEDIUM)."""
        return self.spool / manifest_sha256

    @property
    def chain(self) -> Path:
        return self.root / "chain"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def environments(self) -> Path:
        return self.root / "environments"

    @property
    def identity(self) -> Path:
        return self.root / "identity"

    @property
    def report_counter(self) -> Path:
        return self.root / "report-counter"

    @property
    def tokens_used(self) -> Path:
        return self.root / "tokens-used.json"

    @property
    def scratch(self) -> tuple[Path, ...]:
        """What only an install in progress holds: removed after it, and after a crash."""
        return self.spool, self.chain
