"""The agent's configuration (TOML; default ``/etc/bundle-agent.toml``), docs/AGENT.md, "Configuration".

    [device]
    product = "demo-cabinet"
    hardware = "cab-a"
    serial = "SN0001"
    state_dir = "/var/db/bundle-agent"       # absolute
    [trust]
    root = "/etc/bundle-agent/root.json"     # provisioned at the factory, signatures beside it
    [boot]
    backend = "dirs"                         # or "bectl", "grub-btrfs"
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
    [log]
    syslog = "/dev/log"                      # the system log's socket; "" for none
    keep_bytes = 16777216                    # the audit log and its rotated parts, together

Every path the agent touches derives from one root (``--sysroot``, default ``/``): absolute paths in
the file are taken relative to it, so a technician's recovery system or a test can point the
agent at a mounted system (like ``bectl -r``). The syslog socket is the exception: it belongs to
the running system, which logs for the system being managed.

The file is strict (docs/agent-config.schema.json): an unknown table or key is refused with the
nearest known name, because a misspelt key silently taking its default (``[helth]``, a health
check that never runs) is worse than a refusal before anything is done. Whatever can be checked
without reading a stick is checked here, so a mistake shows when the agent starts, not at the
first trial (a missing health hook would otherwise roll back every update).
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from agent import system_log
from agent.boot import BACKENDS
from agent.format.manifest import LABEL
from agent.layout import Layout, check_layout_path
from agent.system_root import under
from keys.errors import Failed
from keys.files import read_capped

DEFAULT_CONFIG = Path("/etc/bundle-agent.toml")
DEFAULT_SYSLOG = system_log.DEFAULT_ADDRESS
DEFAULT_KEEP_BYTES = 16 << 20  # the audit log with its rotated parts (agent/audit.py)
MIN_KEEP_BYTES = 256 << 10  # room for a few parts of whole records (MAX_RECORD_BYTES is 16 KiB)

# Every table and the keys it takes. [boot] takes "backend" here, and the chosen backend's
# settings (BootBackend.settings), whose values the backend checks (agent/boot/).
TABLES: dict[str, tuple[str, ...]] = {
    "device": ("product", "hardware", "serial", "state_dir"),
    "trust": ("root",),
    "boot": ("backend",),
    "layout": ("platform", "games", "preserve"),
    "health": ("hooks", "timeout"),
    "reboot": ("policy",),
    "environments": ("keep",),
    "log": ("syslog", "keep_bytes"),
}
_EXAMPLE = {"device": 'product = "..."', "trust": 'root = "/etc/bundle-agent/root.json"', "boot": 'backend = "dirs"',
            "layout": 'platform = "platform"', "health": 'hooks = ["/usr/libexec/cabinet-health"]',
            "reboot": 'policy = "never"', "environments": "keep = 2", "log": 'syslog = "/dev/log"'}


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
    syslog: str = DEFAULT_SYSLOG  # "" for none; a path of the running system, not under system_root
    log_keep_bytes: int = DEFAULT_KEEP_BYTES
    source: Path | None = None  # the file it was read from


def did_you_mean(name: str, known) -> str:
    """`` (did you mean X?)`` for the nearest known name, or nothing when none is near."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def _check_shape(document: dict, config_path: Path) -> None:
    """Unknown tables and keys, and tables that are not tables (``device = "cab"``)."""
    for name, value in document.items():
        if name not in TABLES:
            what = f"[{name}]" if isinstance(value, dict) else f"top-level key {name}"
            raise BadConfig(f"unknown {what}{did_you_mean(name, TABLES)}", where=config_path,
                            hint=f"the tables are {', '.join(f'[{t}]' for t in TABLES)} (docs/AGENT.md, "
                                 f"\"Configuration\")")
        if not isinstance(value, dict):
            raise BadConfig(f"{name} must be a table, not a {_kind(value)} ({name} = {value!r})", where=config_path,
                            hint=f"write it as a table: [{name}] on a line of its own, then {_EXAMPLE[name]}")
        known, leave = TABLES[name], set()
        if name == "boot":  # the rest of [boot] is the backend's; it checks the values
            backend = BACKENDS.get(value.get("backend", "dirs"))
            if backend is None:
                continue  # open_backend names the backends there are
            known = known + backend.settings
            # Another backend's setting: that backend mix-up is the backend's to explain.
            leave = {key for other in BACKENDS.values() for key in other.settings}
        for key in value:
            if key not in known and key not in leave:
                raise BadConfig(f"[{name}] has an unknown key {key}{did_you_mean(key, known)}",
                                where=config_path, hint=f"[{name}] takes {', '.join(known)} (docs/AGENT.md)")


def _kind(value) -> str:
    return {str: "string", int: "number", float: "number", bool: "boolean", list: "list"}.get(type(value),
                                                                                               type(value).__name__)


def _layout(table, config_path: Path) -> Layout:
    """[layout]: where components live (docs/AGENT.md, "Layout"). Paths are "." or relative and
    pass the manifest's path rules: an absolute path or ".." would make installs build and
    delete outside the environments (``platform = "/"`` would rebuild the host's root)."""
    preserve = table.get("preserve", [])
    if not isinstance(preserve, list) or not all(isinstance(v, str) for v in preserve):
        raise BadConfig("[layout] preserve must be a list of paths inside the platform", where=config_path)
    try:
        return Layout(platform=check_layout_path(table.get("platform", "platform"), "platform"),
                      games=check_layout_path(table.get("games", "games"), "games"), preserve=tuple(preserve))
    except (ValueError, TypeError) as error:
        raise BadConfig(f"[layout] {error}", where=config_path, hint='see docs/AGENT.md, "Layout"') from None


def _absolute(table: str, key: str, value: str, config_path: Path) -> str:
    if not value.startswith("/"):
        raise BadConfig(f"[{table}] {key} must be an absolute path, not {value!r}", where=config_path,
                        hint="a relative path would depend on the directory the agent was started from")
    return value


def _check_state_dir(path: Path, config_path: Path) -> None:
    """A state directory that is something else is a configuration mistake, said now rather than
    as a failure of whichever command first writes there."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # made by the first command that writes state
    except OSError as error:
        raise BadConfig(f"[device] state_dir {path} cannot be examined: {error.strerror}", where=config_path,
                        hint="run bundle-agent as root, or check the owner and mode of the folders above it") from None
    if not stat.S_ISDIR(mode):
        raise BadConfig(f"[device] state_dir {path} is not a directory", where=config_path,
                        hint="name a directory (it is created if missing), for example /var/db/bundle-agent")


def _check_hook(hook: Path, config_path: Path) -> None:
    """Found when the configuration is loaded: a hook that cannot run would fail every trial,
    rolling back every update (docs/AGENT.md, "Trial boot")."""
    try:
        mode = os.stat(hook).st_mode
    except OSError as error:
        raise BadConfig(f"[health] hook {hook} cannot be found: {error.strerror}", where=config_path,
                        hint="install the health check there, or correct [health] hooks") from None
    if not stat.S_ISREG(mode) or not os.access(hook, os.X_OK):
        raise BadConfig(f"[health] hook {hook} is not an executable file", where=config_path,
                        hint=f"make it executable (chmod 755 {hook}), or correct [health] hooks")


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
    _check_shape(document, config_path)

    def setting(table: str, key: str, kind: type, default=None):
        value = document.get(table, {}).get(key, default)
        if value is None:
            raise BadConfig(f"[{table}] {key} is required", where=config_path, hint="see docs/AGENT.md")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadConfig(f"[{table}] {key} must be a {_kind(kind())}, not {value!r}", where=config_path)
        return value

    for key in ("product", "hardware", "serial"):
        if not LABEL.fullmatch(setting("device", key, str)):
            raise BadConfig(f"[device] {key} must be letters, digits and ._+:~@-", where=config_path)
    reboot = document.get("reboot", {}).get("policy", "never")
    if isinstance(reboot, list) and reboot and all(isinstance(p, str) and p for p in reboot):
        reboot = tuple(reboot)
    elif reboot not in ("never", "now"):
        raise BadConfig('[reboot] policy must be "never", "now" or a command (a list of strings)', where=config_path)
    hooks = setting("health", "hooks", list, [])
    if not all(isinstance(h, str) and h for h in hooks):
        raise BadConfig("[health] hooks must be a list of executable paths", where=config_path)
    health_hooks = tuple(under(system_root, _absolute("health", "hooks", h, config_path)) for h in hooks)
    for hook in health_hooks:
        _check_hook(hook, config_path)
    timeout = setting("health", "timeout", int, 120)
    if timeout < 1:
        raise BadConfig("[health] timeout must be at least 1 (seconds)", where=config_path)
    backend = setting("boot", "backend", str, "dirs")
    # The rest of [boot] is the backend's to read and check; it gets the system root too.
    settings = {k: v for k, v in document.get("boot", {}).items() if k != "backend"}
    keep = setting("environments", "keep", int, 2)
    if keep < 2:
        raise BadConfig("[environments] keep must be at least 2: the running one and one to go back to",
                        where=config_path)
    state_dir = under(system_root, _absolute("device", "state_dir",
                                             setting("device", "state_dir", str, "/var/db/bundle-agent"), config_path))
    _check_state_dir(state_dir, config_path)
    syslog = setting("log", "syslog", str, DEFAULT_SYSLOG)
    if syslog:
        _absolute("log", "syslog", syslog, config_path)
    keep_bytes = setting("log", "keep_bytes", int, DEFAULT_KEEP_BYTES)
    if keep_bytes < MIN_KEEP_BYTES:
        raise BadConfig(f"[log] keep_bytes must be at least {MIN_KEEP_BYTES} (256 KiB)", where=config_path)
    return AgentConfig(
        product=setting("device", "product", str), hardware=setting("device", "hardware", str),
        serial=setting("device", "serial", str), state_dir=state_dir,
        trust_root=under(system_root, _absolute("trust", "root", setting("trust", "root", str), config_path)),
        backend=backend, backend_settings=settings,
        layout=_layout(document.get("layout", {}), config_path),
        health_hooks=health_hooks, health_timeout=timeout, reboot=reboot, keep=keep,
        system_root=system_root, syslog=syslog, log_keep_bytes=keep_bytes, source=config_path)
