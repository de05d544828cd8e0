"""The agent's configuration (TOML; default ``/etc/bundle-agent.toml``), docs/AGENT.md.

    [device]
    product = "demo-cabinet"
    hardware = "cab-a"
    serial = "SN0001"
    state_dir = "/var/db/bundle-agent"
    [trust]
    root = "/etc/bundle-agent/root.json"     # provisioned at the factory, signatures beside it
    [boot]
    backend = "dirs"                         # or "bectl"
    root = "/opt/environments"               # dirs: where environments live
    [layout]
    platform = "platform"                    # where each component lives inside an environment
    games = "games"                          # game/<id> lives in games/<id>
    [health]
    hooks = ["/usr/libexec/cabinet-health"]  # executables; all must exit 0 within timeout
    timeout = 120
    [reboot]
    policy = "never"                         # "never", "now", or a command: ["/sbin/shutdown", "-r", "now"]
    [environments]
    keep = 2                                 # committed environments kept (the running one included)

Every path the agent touches derives from one root (``--root``, default ``/``): absolute paths in
the file are taken relative to it, so a technician's recovery system or a test can point the
agent at a mounted system (like ``bectl -r``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent.format.manifest import LABEL
from agent.layout import Layout, check_layout_path
from agent.system_root import under
from keys.errors import Failed
from keys.files import read_capped

DEFAULT_CONFIG = Path("/etc/bundle-agent.toml")


class BadConfig(Failed):
    """The configuration file is missing or invalid."""


@dataclass(frozen=True)
class AgentConfig:
    product: str
    hardware: str
    serial: str
    state_dir: Path
    trust_root: Path
    backend: str
    backend_settings: dict  # [boot] without "backend": read by the backend (agent/boot/)
    layout: Layout = field(default_factory=Layout)
    health_hooks: tuple[Path, ...] = ()
    health_timeout: int = 120
    reboot: str | tuple[str, ...] = "never"
    keep: int = 2
    system_root: Path = field(default=Path("/"))


def _layout(table, config_path: Path) -> Layout:
    """[layout]: where components live (docs/AGENT.md, "Layout"). Paths are "." or relative and
    pass the manifest's path rules: an absolute path or ".." would make installs build and
    delete outside the environments (``platform = "/"`` would rebuild the host's root)."""
    if not isinstance(table, dict):
        raise BadConfig("[layout] must be a table", where=config_path)
    unknown = sorted(set(table) - {"platform", "games", "preserve"})
    if unknown:
        raise BadConfig(f"[layout] has unknown setting(s) {', '.join(unknown)}", where=config_path,
                        hint="[layout] takes platform, games and preserve (docs/AGENT.md)")
    preserve = table.get("preserve", [])
    if not isinstance(preserve, list) or not all(isinstance(v, str) for v in preserve):
        raise BadConfig("[layout] preserve must be a list of paths inside the platform", where=config_path)
    try:
        return Layout(platform=check_layout_path(table.get("platform", "platform"), "platform"),
                      games=check_layout_path(table.get("games", "games"), "games"), preserve=tuple(preserve))
    except ValueError as error:
        raise BadConfig(f"[layout] {error}", where=config_path, hint='see docs/AGENT.md, "Layout"') from None


def load_config(path: Path, *, system_root: Path = Path("/")) -> AgentConfig:
    """Raises BadConfig naming the file and the setting."""
    config_path = under(system_root, str(path)) if system_root != Path("/") else Path(path)
    try:
        text = read_capped(config_path, 1 << 20, what="agent configuration").decode("utf-8")
        document = tomllib.loads(text)
    except Failed as error:
        raise BadConfig(error.message, where=config_path, hint="give --config PATH") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BadConfig(f"not valid TOML: {error}", where=config_path) from None

    def setting(table: str, key: str, kind: type, default=None):
        value = document.get(table, {}).get(key, default)
        if value is None:
            raise BadConfig(f"[{table}] {key} is required", where=config_path, hint="see docs/AGENT.md")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadConfig(f"[{table}] {key} must be a {kind.__name__}", where=config_path)
        return value

    for key in ("product", "hardware", "serial"):
        if not LABEL.fullmatch(setting("device", key, str)):
            raise BadConfig(f"[device] {key} must be letters, digits and ._+:~@-", where=config_path)
    reboot = document.get("reboot", {}).get("policy", "never")
    if isinstance(reboot, list) and reboot and all(isinstance(p, str) for p in reboot):
        reboot = tuple(reboot)
    elif reboot not in ("never", "now"):
        raise BadConfig('[reboot] policy must be "never", "now" or a command (a list of strings)', where=config_path)
    hooks = setting("health", "hooks", list, [])
    if not all(isinstance(h, str) for h in hooks):
        raise BadConfig("[health] hooks must be a list of executable paths", where=config_path)
    backend = setting("boot", "backend", str, "dirs")
    # The rest of [boot] is the backend's to read and check; it gets the system root too.
    settings = {k: v for k, v in document.get("boot", {}).items() if k != "backend"}
    keep = setting("environments", "keep", int, 2)
    if keep < 2:
        raise BadConfig("[environments] keep must be at least 2: the running one and one to go back to",
                        where=config_path)
    return AgentConfig(
        product=setting("device", "product", str), hardware=setting("device", "hardware", str),
        serial=setting("device", "serial", str),
        state_dir=under(system_root, setting("device", "state_dir", str, "/var/db/bundle-agent")),
        trust_root=under(system_root, setting("trust", "root", str)),
        backend=backend, backend_settings=settings,
        layout=_layout(document.get("layout", {}), config_path),
        health_hooks=tuple(under(system_root, h) for h in hooks),
        health_timeout=setting("health", "timeout", int, 120), reboot=reboot, keep=keep, system_root=system_root)
