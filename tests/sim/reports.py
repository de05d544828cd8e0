"""Device reports made as the agent makes them, for the tests of both sides: a cabinet's report
written in-process to a stick folder, and the vendor's registry holding its device key."""

from __future__ import annotations

from pathlib import Path

from agent.device import Device
from agent.device_report import write_report
from agent.identity import ensure_identity


def open_device(cabinet) -> Device:
    return Device.open(cabinet.config)


def signed_report(cabinet, stick: Path, registry: Path | None = None, **options) -> Path:
    """A new report of ``cabinet`` on ``stick`` (its key made first if need be); with ``registry``,
    the device's public key is registered there as SERIAL.pub. Returns the report's path."""
    device = open_device(cabinet)
    public_key = ensure_identity(device.state_dir, device.audit)
    if registry is not None:
        registry.mkdir(parents=True, exist_ok=True)
        (registry / f"{device.facts.serial}.pub").write_bytes(public_key.to_bytes())
    stick.mkdir(parents=True, exist_ok=True)
    return write_report(device, stick, **options)
