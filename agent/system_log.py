"""The system log: the agent's decisions and failures through the standard ``logging`` module to
syslog (docs/AGENT.md, "Logs") - journald's socket ``/dev/log`` on Linux, syslogd's
``/var/run/log`` on FreeBSD, or the ``[log] syslog`` socket of the configuration.

The system log is where administrators look first; the audit log (agent/audit.py) stays the
complete record on the device. Every audit record is also one syslog line (``AuditLog.record``).
Logging never stops the agent: a missing socket (a container, recovery media without syslogd)
means no system log, and a failed send is dropped without a traceback, because losing a log line
must not block a rollback or hide the real error.

A command that cannot open the device says so here too (agent/cli/context.py), on the platform's
default socket when the configuration could not be read: under FreeBSD's devd nobody reads the
standard error of an unattended ``on-insert``.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys

from keys.printable import printable

LOGGER = logging.getLogger("bundle-agent")
# Where the system log listens: journald's socket on Linux, syslogd's on FreeBSD.
DEFAULT_ADDRESS = "/var/run/log" if sys.platform.startswith("freebsd") else "/dev/log"
MAX_LINE = 1024  # syslog relays cut longer lines (RFC 3164 allows 1024 bytes); the audit log has the rest
_WARNINGS = ("refused", "failed", "rolled-back", "damaged", "cancelled", "error")


class _QuietSysLogHandler(logging.handlers.SysLogHandler):
    """Drops what cannot be sent instead of printing logging's own traceback on stderr."""

    def handleError(self, record) -> None:  # noqa: N802 (logging's name)
        pass

    def _connect_unixsocket(self, address) -> None:
        # Non-blocking, also after the reconnect emit() makes: a system log that stopped reading
        # (its buffer full) drops our lines instead of stopping an install or a rollback.
        super()._connect_unixsocket(address)
        self.socket.setblocking(False)


_chosen = False  # attach() ran: the configuration has said where the system log is, or that there is none


def attach(address: str) -> bool:
    """Send the agent's log records to the syslog socket at ``address`` ("" for none), as the
    configuration says. Returns whether the socket could be reached; the agent works the same
    either way."""
    global _chosen
    _chosen = True
    return _connect(address)


def _connect(address: str) -> bool:
    for handler in list(LOGGER.handlers):
        if isinstance(handler, _QuietSysLogHandler):
            LOGGER.removeHandler(handler)
            handler.close()
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False  # never to the root logger's stderr: the command line prints for people
    if not address or not os.path.exists(address):
        return False  # checked here: SysLogHandler would retry on every line, silently
    try:
        # Datagrams (journald's /dev/log, syslogd's /var/run/log), or a stream socket if that is what listens.
        handler = _QuietSysLogHandler(address=address, facility=logging.handlers.SysLogHandler.LOG_DAEMON)
    except OSError:
        return False
    handler.ident = f"bundle-agent[{os.getpid()}]: "  # the tag syslog and journald file it under
    handler.setFormatter(logging.Formatter("%(message)s"))
    LOGGER.addHandler(handler)
    return True


def level_of(event: str) -> int:
    return logging.WARNING if any(word in event for word in _WARNINGS) else logging.INFO


def line(event: str, details: dict) -> str:
    """``EVENT key=value ...``: one printable line, values as JSON, at most MAX_LINE characters."""
    parts = [printable(event)]
    for key, value in details.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        parts.append(f"{key}={printable(text)}")
    text = " ".join(parts).replace("\n", "\\x0a")
    return text if len(text) <= MAX_LINE else text[:MAX_LINE - 30] + " ... (more in the audit log)"


def log(event: str, details: dict) -> None:
    if LOGGER.handlers:
        LOGGER.log(level_of(event), line(event, details))


def log_failure(event: str, details: dict) -> None:
    """Log a failure where the configuration said, or on the platform's default socket if it was
    never read (missing, broken: whatever it says is unknown)."""
    if not _chosen:
        _connect(DEFAULT_ADDRESS)
    log(event, details)
