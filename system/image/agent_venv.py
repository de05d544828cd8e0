"""The agent on the cabinet: a venv in /opt/bundle-agent made with the cabinet's own python3.

The wheels (this project and its runtime dependencies, no test extras) are made or fetched on
the build host, for the cabinet's Python version and C library, and installed in the tree
without an index: the tree never reaches the network, and the same wheels give the same agent.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tools import BuildError, in_chroot, run

VENV = "/opt/bundle-agent"
WHEELS_IN_TREE = "/tmp/cabinet-wheels"


def cabinet_python(root: Path) -> tuple[str, str]:
    """(python version "3.11", glibc version "2.36") of the tree, for choosing wheels."""
    out = in_chroot(root, ["python3", "-c", "import platform, sys; "
                           "print('%d.%d' % sys.version_info[:2], platform.libc_ver()[1])"], capture=True)
    python, libc = out.split()
    return python, libc


def build_wheels(project: Path, wheels: Path, python: str, libc: str) -> Path:
    """This project's wheel (rebuilt every time: the source changes) and its dependencies' wheels
    for the cabinet's Python (kept in ``wheels`` between builds). Returns the project's wheel."""
    wheels.mkdir(parents=True, exist_ok=True)
    project_wheels = wheels / "project"
    if project_wheels.exists():
        shutil.rmtree(project_wheels)
    # setuptools builds in the project's build/lib and keeps what it copied there: a module
    # deleted from the source would still reach the wheel. Start from nothing, leave nothing.
    stale = [project / "build/lib", *project.glob("build/bdist.*")]
    _remove_all(stale)
    try:
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", project_wheels, project],
            quiet=True)
    finally:
        _remove_all([project / "build/lib", *project.glob("build/bdist.*")])
    (wheel,) = project_wheels.glob("*.whl")
    # Binary wheels only, chosen for the cabinet rather than the build host: pynacl and
    # zstandard carry C code, and the host's Python may differ from the cabinet's.
    libc_tag = "manylinux_" + libc.replace(".", "_") + "_x86_64"
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", python,
                "--implementation", "cp", "--platform", libc_tag, "--platform", "manylinux2014_x86_64",
                "--dest", wheels / "deps", wheel]
    # The wheels of an earlier build first, without the index: a rebuild needs no network for
    # them. Only when they do not satisfy the project's requirements is PyPI asked.
    try:
        run([*download, "--no-index", "--find-links", wheels / "deps"], quiet=True)
    except BuildError:
        run(download, quiet=True)
    # pip download keeps a copy of the project's wheel among the dependencies; only the fresh
    # one may be installed.
    (wheels / "deps" / wheel.name).unlink(missing_ok=True)
    return wheel


def _remove_all(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)


def install_agent(root: Path, wheels: Path, wheel: Path) -> None:
    """Creates the venv inside the tree and installs the agent from the wheels, offline."""
    inside = root / WHEELS_IN_TREE.lstrip("/")
    if inside.exists():
        shutil.rmtree(inside)
    shutil.copytree(wheels / "deps", inside)
    shutil.copy(wheel, inside)
    try:
        in_chroot(root, ["python3", "-m", "venv", VENV], quiet=True)
        in_chroot(root, [f"{VENV}/bin/pip", "install", "--quiet", "--no-index", "--find-links", WHEELS_IN_TREE,
                         f"{WHEELS_IN_TREE}/{wheel.name}"], quiet=True)
        # pip and setuptools are not needed to run the agent; an update replaces the whole venv.
        in_chroot(root, [f"{VENV}/bin/pip", "uninstall", "--quiet", "--yes", "pip", "setuptools"], quiet=True)
    finally:
        shutil.rmtree(inside)
    link = root / "usr/sbin/bundle-agent"
    link.unlink(missing_ok=True)
    link.symlink_to(f"{VENV}/bin/bundle-agent")


def check_agent(root: Path) -> None:
    """The installed agent starts with the cabinet's Python and libraries."""
    out = in_chroot(root, ["/usr/sbin/bundle-agent", "--help"], capture=True)
    if "provision" not in out:
        raise RuntimeError(f"bundle-agent --help in the tree printed:\n{out}")
