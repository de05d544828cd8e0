"""A small QMP client: QEMU's JSON machine protocol over a Unix socket.

The protocol (QEMU's docs/interop/qmp-spec): the server greets with ``{"QMP": {...}}``; the client
sends ``{"execute": "qmp_capabilities"}`` to leave negotiation; then each ``{"execute": NAME,
"arguments": {...}}`` gets exactly one ``{"return": ...}`` or ``{"error": {"class", "desc"}}``, and
asynchronous ``{"event": NAME, "data": ...}`` messages may arrive between them. One JSON document
per line.

Written here rather than taken from the ``qemu.qmp`` package: the harness needs five calls
(``cont``, ``blockdev-add``/``-del``, ``device_add``/``_del``, ``human-monitor-command``) and one
event (``DEVICE_DELETED``), synchronously; the package is asyncio-first and would be a new
test dependency for about sixty lines.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path


class QMPError(Exception):
    """QEMU answered a command with an error, or the connection broke."""


class QMP:
    """One connection to a QEMU monitor socket, negotiated and ready for commands."""

    def __init__(self, path: Path, timeout: float = 10.0):
        self.path = Path(path)
        self.events: list[dict] = []  # received and not yet taken by wait_event
        self._buffer = b""
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:  # QEMU creates the socket a moment after it starts
            try:
                self._socket.connect(str(self.path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise QMPError(f"QMP: no monitor socket at {self.path} after {timeout:.0f} s") from None
                time.sleep(0.05)
        greeting = self._read(timeout)
        if "QMP" not in greeting:
            raise QMPError(f"QMP: expected a greeting, got {greeting}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self._socket.close()

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 30.0) -> object:
        """Run ``command`` with ``arguments`` (QMP's own names, e.g. ``node-name``) and return its
        ``return`` value.

        Raises QMPError with QEMU's description when it answers with an error or goes away.
        """
        message: dict = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._socket.sendall(json.dumps(message).encode() + b"\n")
        except OSError as error:
            raise QMPError(f"QMP: cannot send {command}: {error}") from error
        while True:
            reply = self._read(timeout)
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QMPError(f"QMP: {command} failed: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(self, name: str, timeout: float = 30.0, **data) -> dict:
        """The first event ``name`` whose data contains ``data`` (already received or arriving within
        ``timeout`` seconds). Raises QMPError when it does not come."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name and all(event.get("data", {}).get(k) == v for k, v in data.items()):
                    self.events.remove(event)
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"QMP: no {name} event {data or ''} within {timeout:.0f} s")
            try:
                self.events.append(self._read(left))
            except QMPError as error:
                if "timed out" not in str(error):
                    raise
                continue

    def _read(self, timeout: float) -> dict:
        """The next JSON message. Raises QMPError on timeout or when QEMU closed the socket."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError(f"QMP: timed out after {timeout:.0f} s waiting for QEMU")
            self._socket.settimeout(left)
            try:
                chunk = self._socket.recv(65536)
            except socket.timeout:
                continue
            except OSError as error:
                raise QMPError(f"QMP: connection lost: {error}") from error
            if not chunk:
                raise QMPError("QMP: QEMU closed the monitor connection (it exited)")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)
