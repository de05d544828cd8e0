"""One command line, consistent across ``bundle`` and ``bundle-agent`` (docs/OPERATOR.md):

* ``--root`` is a trust root in both (the agent's system root is ``--sysroot``), and a chain of
  trust roots is one ``--root`` per version everywhere;
* the agent's ``--config`` works before or after the command's name and from
  ``$BUNDLE_AGENT_CONFIG``;
* the same kind of error has the same exit code on both sides;
* every command, option and argument is explained in ``--help``, and docs/AGENT.md has no empty
  section.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import click
import pytest

from agent.cli import main as agent_main
from bundler.cli import main as bundle_main
from tests.sim.tools import run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


# --- --sysroot and --config ---------------------------------------------------------------------


def test_sysroot_names_the_system_and_root_is_refused_with_the_new_name(cabinet):
    sysroot = ["bundle-agent", "--sysroot", cabinet.dir, "--config", "/agent.toml", "status"]
    assert "demo-cabinet cab-a serial SN0001" in run_cli(*sysroot, check=True).stdout
    old = run_cli("bundle-agent", "--root", cabinet.dir, "--config", "/agent.toml", "status")
    assert old.returncode == 2 and "--root is now --sysroot" in old.stderr
    assert "Traceback" not in old.stderr


@pytest.mark.parametrize("where", ["before", "after", "environment"])
def test_config_before_or_after_the_command_or_from_the_environment(cabinet, where):
    """A copy of the configuration under another name: only a --config that reached the agent finds it."""
    shutil.copy(cabinet.dir / "agent.toml", cabinet.dir / "other.toml")
    (cabinet.dir / "agent.toml").unlink()
    other = "/other.toml"
    args = {"before": ["--sysroot", cabinet.dir, "--config", other, "status", "--json"],
            "after": ["--sysroot", cabinet.dir, "status", "--json", "--config", other],
            "environment": ["--sysroot", cabinet.dir, "status", "--json"]}[where]
    env = {"BUNDLE_AGENT_CONFIG": other} if where == "environment" else {}
    result = run_cli("bundle-agent", *args, env=env)
    assert result.returncode == 0, result.stderr
    assert '"product": "demo-cabinet"' in result.stdout


def test_config_after_the_command_wins_over_the_environment(cabinet):
    missing = run_cli("bundle-agent", "--sysroot", cabinet.dir, "status", "--config", "/missing.toml",
                      env={"BUNDLE_AGENT_CONFIG": "/agent.toml"})
    assert missing.returncode == 1 and "missing.toml: agent configuration not found" in missing.stderr
    both = run_cli("bundle-agent", "--sysroot", cabinet.dir, "--config", "/missing.toml", "status",
                   "--sysroot", cabinet.dir, "--config", "/agent.toml")
    assert both.returncode == 0, both.stderr


def test_sysroot_after_the_command(cabinet):
    result = run_cli("bundle-agent", "status", "--sysroot", cabinet.dir, "--config", "/agent.toml")
    assert result.returncode == 0, result.stderr


# --- a chain of trust roots is given the same way everywhere -------------------------------------


def _walk(group: click.Group, path: str):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield f"{path} {name}", command
            yield from _walk(command, f"{path} {name}")
        else:
            yield f"{path} {name}", command


COMMANDS = [("bundle", bundle_main), *_walk(bundle_main, "bundle"),
            ("bundle-agent", agent_main), *_walk(agent_main, "bundle-agent")]


def test_every_trust_root_option_is_root_and_repeats():
    """Whatever a command does with trust roots, it takes them as --root FILE, once per version."""
    for path, command in COMMANDS:
        for param in command.params:
            if not isinstance(param, click.Option) or param.hidden:
                continue
            if param.name in ("root_paths", "trusted_paths"):
                assert "--root" in param.opts and param.multiple, f"{path}: {param.opts}"
            else:
                assert "--root" not in param.opts, f"{path}: --root is something else here ({param.name})"


def test_root_verify_takes_older_roots_as_root(cli, trust):
    """`root verify ROOT.json --root OLDER.json`: as `bundle verify --root`, on both command lines."""
    for tool in ("bundle", "bundle-agent"):
        help_text = run_cli(tool, "root", "verify", "--help", check=True).stdout
        assert "--root" in help_text


# --- the same error, the same exit code ----------------------------------------------------------


@pytest.fixture
def broken(world, tmp_path):
    """d12 with its payload gone, and d12 with one signature's bytes flipped."""
    missing = tmp_path / "missing-payload"
    shutil.copytree(world.bundles / "d12", missing)
    for volume in (missing / "payload").iterdir():
        volume.unlink()
    forged = tmp_path / "forged-signature"
    shutil.copytree(world.bundles / "d12", forged)
    for signature in forged.glob("*.minisig"):
        lines = signature.read_text().splitlines(keepends=True)
        raw = bytearray(__import__("base64").b64decode(lines[1]))
        raw[20] ^= 1
        lines[1] = __import__("base64").b64encode(bytes(raw)).decode() + "\n"
        signature.write_text("".join(lines))
    return {"missing payload": missing, "bad signature": forged}


@pytest.mark.parametrize("case", ["missing payload", "bad signature"])
def test_a_broken_bundle_is_refused_with_3_by_both(world, cabinet, broken, case):
    vendor = run_cli("bundle", "verify", broken[case], "--root", world.root)
    device = cabinet.agent("install", broken[case])
    assert vendor.returncode == device.returncode == 3, vendor.stderr + device.stderr
    assert vendor.stderr.startswith("refused:") and device.stderr.startswith("refused:")


def test_a_missing_argument_file_and_a_usage_error_exit_2_on_both(world, cabinet, tmp_path):
    missing = tmp_path / "no-such-bundle"
    codes = {
        "bundle, missing path": run_cli("bundle", "verify", missing, "--root", world.root).returncode,
        "bundle-agent, missing path": cabinet.agent("install", missing).returncode,
        "bundle, unknown option": run_cli("bundle", "verify", "--bogus").returncode,
        "bundle-agent, unknown option": cabinet.agent("install", "--bogus").returncode,
        "bundle, missing option": run_cli("bundle", "verify", world.bundles / "d12").returncode,
        "bundle-agent, missing argument": cabinet.agent("install").returncode,
    }
    assert set(codes.values()) == {2}, codes


def test_a_file_a_description_names_and_that_is_missing_is_refused_by_both(world, cabinet, tmp_path):
    """A release.toml's component tree, an agent.toml's trust root: the input was examined and is
    wrong, nothing was changed (3) - on both sides, with the path named and no traceback."""
    release = tmp_path / "release.toml"
    release.write_text('product = "demo-cabinet"\nhardware = ["cab-a"]\n[components.platform]\n'
                       'path = "gone"\nversion = "1"\nsequence = 1\n')
    vendor = run_cli("bundle", "make", "--release", release, "--out", tmp_path / "b", "--key",
                     world.keys / "rel1.key")
    (cabinet.dir / "trust" / "root.json").rename(cabinet.dir / "trust" / "moved.json")
    device = cabinet.agent("install", world.bundles / "d12")
    assert (vendor.returncode, device.returncode) == (3, 3), vendor.stderr + device.stderr
    assert "gone" in vendor.stderr and "root.json" in device.stderr
    assert "Traceback" not in vendor.stderr + device.stderr


def test_a_missing_configuration_file_exits_1(cabinet):
    """The agent's own configuration is missing: it could not complete (1), as docs/OPERATOR.md says."""
    result = cabinet.agent("status", config=Path("/missing.toml"))
    assert result.returncode == 1 and "agent configuration not found" in result.stderr


# --- help for everything ------------------------------------------------------------------------


@pytest.mark.parametrize("path,command", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_option_and_argument_is_explained(path, command):
    assert (command.help or "").strip(), f"{path} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"{path} {'/'.join(param.opts)} has no help text"
        elif isinstance(param, click.Argument):
            metavar = (param.metavar or param.name.upper()).rstrip(".")
            for word in metavar.split("|"):  # BUNDLE|STICK: each is explained
                assert word in command.help, f"{path}: its help does not say what {word} is"


def test_docs_have_no_empty_section():
    for name in ("AGENT.md", "OPERATOR.md"):
        lines = (DOCS / name).read_text(encoding="utf-8").splitlines()
        headings = [i for i, line in enumerate(lines) if re.match(r"#{1,6} ", line)]
        fences = [i for i, line in enumerate(lines) if line.startswith("```")]
        for index, start in enumerate(headings):
            if any(a < start < b for a, b in zip(fences[::2], fences[1::2])):
                continue  # a "#" comment inside a code block
            end = headings[index + 1] if index + 1 < len(headings) else len(lines)
            body = [line for line in lines[start + 1:end] if line.strip()]
            level = len(lines[start]) - len(lines[start].lstrip("#"))
            nested = end < len(lines) and len(lines[end]) - len(lines[end].lstrip("#")) > level
            assert body or nested, f"docs/{name}: the section {lines[start]!r} is empty"
