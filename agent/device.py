"""One device: its configuration, boot backend, state and audit log, opened together."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field

from agent import system_log
from agent.audit import AuditLog
from agent.boot import BootBackend, open_backend
from agent.config import AgentConfig, BadConfig
from agent.choice import DeviceFacts
from agent.state import StateStore
from agent.state_dir import StateDir


@dataclass
class Device:
    config: AgentConfig
    backend: BootBackend
    store: StateStore
    audit: AuditLog
    state_dir: StateDir
    reboot_command: list[str] | None = field(default=None, init=False)

    @classmethod
    def open(cls, config: AgentConfig) -> "Device":
        system_log.attach(config.syslog)  # first: a backend that cannot be opened is logged there
        backend = open_backend(config.backend, config.backend_settings, config.system_root)
        if backend.holds(config.state_dir):
            raise BadConfig(f"state_dir {config.state_dir} lies inside the boot environments",
                            hint="keep the agent's state outside every environment (its own filesystem or dataset)")
        state_dir = StateDir(config.state_dir)
        return cls(config=config, backend=backend, store=StateStore(state_dir),
                   audit=AuditLog.kept_within(state_dir.audit_log, config.log_keep_bytes), state_dir=state_dir)

    @property
    def facts(self) -> DeviceFacts:
        return DeviceFacts(product=self.config.product, hardware=self.config.hardware, serial=self.config.serial)

    def apply_reboot_policy(self, why: str) -> str:
        """Ask for the configured reboot; returns what will be done, in words. The reboot itself
        is :meth:`reboot_if_asked`, run by the command line last."""
        policy = self.config.reboot
        if policy == "never":
            return f"reboot to {why} (reboot policy: never)"
        command = ["shutdown", "-r", "now"] if policy == "now" else list(policy)
        if shutil.which(command[0]) is None:
            return f"reboot command {command[0]!r} not found or not executable; reboot to {why}"
        self.audit.record("reboot", command=command, why=why)
        self.reboot_command = command
        return f"rebooting to {why}"

    def reboot_if_asked(self) -> None:
        """Run the reboot :meth:`apply_reboot_policy` asked for. Only once every write of the
        command is done and its report printed: a reboot stops the system's services, the one
        this agent runs in included, and the agent would be interrupted in the middle."""
        if self.reboot_command is not None:
            subprocess.run(self.reboot_command, check=False)
