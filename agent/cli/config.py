"""``bundle-agent config check``: validate the configuration and print what it resolved to.

It runs every check the agent makes when it starts (agent/config.py, then the boot backend's own
settings) without taking the device's lock or reading the state, so it is safe on a running
machine and on an image being prepared.
"""

from __future__ import annotations

import os

import click

from agent.boot import open_backend
from agent.cli.context import DeviceContext
from agent.cli.output import json_option, print_json
from agent.config import AgentConfig, BadConfig, load_config
from keys.printable import echo

pass_context = click.make_pass_decorator(DeviceContext)


def resolved(config: AgentConfig) -> dict:
    """Every setting as the agent uses it: paths under the system root, the backend's settings
    as the backend read them, the layout, the hooks, the logs."""
    backend = open_backend(config.backend, config.backend_settings, config.system_root)
    if backend.holds(config.state_dir):
        raise BadConfig(f"state_dir {config.state_dir} lies inside the boot environments", where=config.source,
                        hint="keep the agent's state outside every environment (its own filesystem or dataset)")
    # The backend's own reading of [boot] (dirs: its resolved root; bectl: command, beroot, mount_dir).
    settings = {key: str(value) for key, value in vars(backend).items()
                if not key.startswith("_") and isinstance(value, (str, os.PathLike, int)) and value is not None}
    return {
        "config": str(config.source), "system_root": str(config.system_root),
        "device": {"product": config.product, "hardware": config.hardware, "serial": config.serial},
        "state_dir": str(config.state_dir), "trust_root": str(config.trust_root),
        "boot": {"backend": config.backend, "settings": settings},
        "layout": {"platform": config.layout.platform, "games": config.layout.games,
                   "preserve": list(config.layout.preserve)},
        "health": {"hooks": [str(h) for h in config.health_hooks], "timeout": config.health_timeout},
        "reboot": config.reboot if isinstance(config.reboot, str) else list(config.reboot),
        "environments": {"keep": config.keep},
        "log": {"syslog": config.syslog or None,
                "syslog_present": bool(config.syslog) and os.path.exists(config.syslog),
                "audit_log": str(config.state_dir / "audit.log"), "keep_bytes": config.log_keep_bytes},
    }


@click.group("config")
def config_group() -> None:
    """The agent's configuration file."""


@config_group.command("check")
@json_option
@pass_context
def check_command(context: DeviceContext, as_json: bool) -> None:
    """Validate the configuration (every check the agent makes when it starts) and print what it
    resolved: paths under the system root, the boot backend and its settings, layout, hooks, logs.
    Exit 0 valid, 1 invalid (the message names the setting)."""
    report = resolved(load_config(context.config_path, system_root=context.root))
    if as_json:
        print_json({"valid": True, **report})
        return
    echo(f"{report['config']}: valid")
    device = report["device"]
    echo(f"  device       {device['product']}, hardware {device['hardware']}, serial {device['serial']}")
    echo(f"  system root  {report['system_root']}")
    echo(f"  state_dir    {report['state_dir']}")
    echo(f"  trust root   {report['trust_root']}")
    boot = report["boot"]
    echo(f"  boot         {boot['backend']}" + "".join(f", {k} {v}" for k, v in sorted(boot["settings"].items())))
    layout = report["layout"]
    echo(f"  layout       platform {layout['platform']}, games {layout['games']}"
         + (f", preserve {', '.join(layout['preserve'])}" if layout["preserve"] else ""))
    health = report["health"]
    echo(f"  health       {', '.join(health['hooks']) or 'no hooks'} (timeout {health['timeout']} s)")
    reboot = report["reboot"]
    echo(f"  reboot       {reboot if isinstance(reboot, str) else ' '.join(reboot)}")
    echo(f"  keep         {report['environments']['keep']} environments")
    log = report["log"]
    syslog = f"{log['syslog']} ({'present' if log['syslog_present'] else 'missing: not logged'})" \
        if log["syslog"] else "off"
    echo(f"  syslog       {syslog}")
    echo(f"  audit log    {log['audit_log']} (kept within {log['keep_bytes']} bytes)")
