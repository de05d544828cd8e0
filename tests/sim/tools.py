"""The real tools: our command lines as subprocesses, and Debian tools installed on first use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, input: str | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run ``bundle``/``bundle-agent`` as a real process, exactly as an operator would."""
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    full_env.pop("BUNDLE_PASSPHRASE", None)
    full_env.update(env or {})
    result = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=full_env, input=input,
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


_apt_updated = False


def debian_tools(package: str, *commands: str) -> list[str]:
    """Paths of ``commands``, installing the Debian ``package`` first when one is missing.

    Skips the calling test, with the reason, when they cannot be had (not root, no mirror).
    """
    global _apt_updated
    if not all(shutil.which(c) for c in commands) and os.geteuid() == 0 and shutil.which("apt-get"):
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-q", package]  # wait for another apt
        if subprocess.run(install, env=env, **quiet).returncode and not _apt_updated:
            subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-q"], env=env, **quiet)
            _apt_updated = True
            subprocess.run(install, env=env, **quiet)
    missing = [c for c in commands if not shutil.which(c)]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed and the Debian package {package} could not be "
                    "installed with apt-get (needs root and a reachable Debian mirror)")
    return [shutil.which(c) for c in commands]


def make_unix_socket(path: Path) -> None:
    """A Unix socket file at ``path``, as a program leaves one. Bound by a child process in the
    folder: a socket's path is limited to 108 bytes, and a test's folder can be longer. The file
    stays after the child exits."""
    subprocess.run([sys.executable, "-c", "import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
                    Path(path).name], cwd=Path(path).parent, check=True)


def interruptible() -> None:
    """In the child, before it runs: SIGINT as a terminal's processes have it. A job a shell
    started in the background inherits it ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
