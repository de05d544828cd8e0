"""The device a command works on, opened only when the command needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, TypeVar

import click

from agent import system_log
from agent.config import load_config
from agent.device import Device
from agent.lock import hold_device_lock
from keys.errors import UpdateError

T = TypeVar("T")


class DeviceContext:
    """Opens the device only for commands that need it (``root verify`` needs none); ``device``
    holds the device's lock (agent/lock.py), ``device_to_read`` does not."""

    def __init__(self, config: Path, root: Path):
        self.config_path, self.root, self._device, self._lock = config, root, None, None
        self._failure: UpdateError | OSError | None = None

    @property
    def device_to_read(self) -> Device:
        if self._device is None:
            self._device = self._opening(lambda: Device.open(load_config(self.config_path, system_root=self.root)))
        return self._device

    def close(self) -> None:
        """When the command has finished (click's call_on_close), its report printed: the
        reboot it asked for, if any."""
        if self._device is not None:
            self._device.reboot_if_asked()

    @property
    def device(self) -> Device:
        device = self.device_to_read
        if self._lock is None:
            self._lock = self._opening(lambda: hold_device_lock(device.state_dir))
        return device

    def _opening(self, step: Callable[[], T]) -> T:
        """``step()``; a failure to open the device (its configuration missing or broken, its
        backend or state unusable, another agent holding it) also goes to the system log, once.
        The command's own failures are in its audit records; these come before there is an audit
        log, and an unattended command's standard error may reach nobody (FreeBSD's devd)."""
        if self._failure is not None:
            raise self._failure  # asked again on the way out (on-insert's report): logged already
        try:
            return step()
        except (UpdateError, OSError) as error:
            self._failure = error
            details = ({"error": error.message, "where": error.where, "hint": error.hint}
                       if isinstance(error, UpdateError) else {"error": error.strerror or str(error),
                                                                "where": error.filename})
            command = getattr(click.get_current_context(silent=True), "command_path", "bundle-agent")
            system_log.log_failure("failed", {"command": command,
                                              **{k: v for k, v in details.items() if v is not None}})
            raise


pass_device = click.make_pass_decorator(DeviceContext)
