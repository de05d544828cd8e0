"""The device a command works on, opened only when the command needs it."""

from __future__ import annotations

from pathlib import Path

import click

from agent.config import load_config
from agent.device import Device
from agent.lock import hold_device_lock


class DeviceContext:
    """Opens the device only for commands that need it (``root verify`` needs none); ``device``
    holds the device's lock (agent/lock.py), ``device_to_read`` does not."""

    def __init__(self, config: Path, root: Path):
        self.config_path, self.root, self._device, self._lock = config, root, None, None

    @property
    def device_to_read(self) -> Device:
        if self._device is None:
            self._device = Device.open(load_config(self.config_path, system_root=self.root))
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
            self._lock = hold_device_lock(device.state_dir)
        return device


pass_device = click.make_pass_decorator(DeviceContext)
