"""docs/agent-config.schema.json and docs/release.schema.json against the real loaders.

Both schemas are published for integrators' tools (docs/AGENT.md, docs/FORMAT.md); these tests
keep them true as tests/test_manifest_schema.py keeps the manifest's: every configuration and
release the tests use validates, hand-broken ones do not, and on a table of cases the loader's
verdict (accepted or refused) is the schema's.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from agent.cli.config import resolved
from agent.config import BadConfig, load_config
from bundler.release import BadRelease, load_release
from keys.errors import UpdateError
from tests.sim.device import Cabinet, FACTORY_CONFIG
from tests.sim.device import MINIMAL_CONFIG as BASE

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((DOCS / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def config_schema():
    return _validator("agent-config.schema.json")


@pytest.fixture(scope="module")
def release_schema():
    return _validator("release.schema.json")


def _errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


# --- every configuration and release the tests use ------------------------------------------------

LAYOUTS = [None, {"platform": ".", "games": "usr/local/games", "preserve": ["etc/ssh"]}, {"games": "opt/games"}]


@pytest.mark.parametrize("backend", ["dirs", "bectl"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_simulated_devices_configurations_validate(world, tmp_path, config_schema, backend, layout):
    cabinet = Cabinet(world, tmp_path / "device", backend=backend, layout=layout, reboot="now", keep=3)
    for name in ("agent.toml", FACTORY_CONFIG.name):
        path = cabinet.dir / name
        if path.exists():
            assert _errors(config_schema, tomllib.loads(path.read_text())) == []
            resolved(load_config(Path("/") / name, system_root=cabinet.dir))  # and the loader accepts it


def test_the_documented_example_validates(config_schema):
    text = (DOCS / "AGENT.md").read_text(encoding="utf-8")
    example = text.split("## Configuration", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    assert _errors(config_schema, tomllib.loads(example)) == []


def test_every_release_the_tests_use_validates(world, release_schema):
    releases = sorted(world.dir.rglob("release.toml"))
    assert releases
    for path in releases:
        assert _errors(release_schema, tomllib.loads(path.read_text())) == [], path
        load_release(path)


# --- a table of cases: the schema and the loader agree ---------------------------------------------


CONFIG_CASES = [
    ("as-is", BASE, True),
    ("defaults-only", BASE.replace('state_dir = "/state"\n', "").replace("timeout = 20\n", ""), True),
    ("all-tables", BASE + '[layout]\nplatform = "."\ngames = "usr/local/games"\npreserve = []\n[reboot]\n'
                          'policy = ["/sbin/reboot"]\n[environments]\nkeep = 3\n[log]\nsyslog = ""\n'
                          'keep_bytes = 1048576\n', True),
    ("log-socket", BASE + '[log]\nsyslog = "/run/systemd/journal/dev-log"\n', True),
    ("bectl", BASE.replace('backend = "dirs"\nroot = "/envs"', 'backend = "bectl"\nberoot = "zroot/ROOT"\n'
                                                              'mount_dir = "/var/run/be"'), True),
    ("unknown-table", BASE + "[helth]\ntimeout = 5\n", False),
    ("unknown-key", BASE.replace("serial =", "serail ="), False),
    ("unknown-top-level-key", "verbose = true\n" + BASE, False),
    ("device-as-string", 'device = "cab"\n[trust]\nroot = "/trust/root.json"\n', False),
    ("no-device", '[trust]\nroot = "/trust/root.json"\n', False),
    ("no-serial", BASE.replace('serial = "SN0001"\n', ""), False),
    ("bad-label", BASE.replace('"cab-a"', '"cab a"'), False),
    ("relative-state-dir", BASE.replace('"/state"', '"state"'), False),
    ("relative-trust-root", BASE.replace('"/trust/root.json"', '"trust/root.json"'), False),
    ("boot-root-number", BASE.replace('root = "/envs"', "root = 5"), False),
    ("dirs-without-root", BASE.replace('root = "/envs"\n', ""), False),
    ("dirs-with-bectl-setting", BASE.replace('root = "/envs"', 'root = "/envs"\nberoot = "zroot/ROOT"'), False),
    ("bectl-with-root", BASE.replace('backend = "dirs"', 'backend = "bectl"'), False),
    ("bectl-bad-dataset", BASE.replace('backend = "dirs"\nroot = "/envs"', 'backend = "bectl"\nberoot = "zroot"'),
     False),
    ("grub-btrfs", BASE.replace('backend = "dirs"\nroot = "/envs"', 'backend = "grub-btrfs"\npool = "/pool"\n'
                                                                   'grubenv = "/efi/a/grubenv"'), True),
    ("grub-btrfs-defaults", BASE.replace('backend = "dirs"\nroot = "/envs"', 'backend = "grub-btrfs"'), True),
    ("grub-btrfs-relative-pool", BASE.replace('backend = "dirs"\nroot = "/envs"',
                                              'backend = "grub-btrfs"\npool = "pool"'), False),
    ("grub-btrfs-with-root", BASE.replace('backend = "dirs"', 'backend = "grub-btrfs"'), False),
    ("unknown-backend", BASE.replace('"dirs"', '"grub"'), False),
    ("hooks-string", BASE.replace('["/health"]', '"/health"'), False),
    ("hook-relative", BASE.replace('["/health"]', '["health"]'), False),
    ("timeout-zero", BASE.replace("timeout = 20", "timeout = 0"), False),
    ("timeout-bool", BASE.replace("timeout = 20", "timeout = true"), False),
    ("keep-one", BASE + "[environments]\nkeep = 1\n", False),
    ("reboot-word", BASE + '[reboot]\npolicy = "later"\n', False),
    ("reboot-empty-command", BASE + "[reboot]\npolicy = []\n", False),
    ("layout-number", BASE + "[layout]\nplatform = 7\n", False),
    ("preserve-string", BASE + '[layout]\npreserve = "etc/ssh"\n', False),
    ("keep-bytes-small", BASE + "[log]\nkeep_bytes = 4096\n", False),
    ("syslog-relative", BASE + '[log]\nsyslog = "dev/log"\n', False),
    ("syslog-number", BASE + "[log]\nsyslog = 1\n", False),
]


@pytest.mark.parametrize("name, text, valid", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_the_loader_and_the_schema_agree_on_configurations(tmp_path, config_schema, name, text, valid):
    (tmp_path / "health").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "health").chmod(0o755)
    (tmp_path / "agent.toml").write_text(text)
    schema_says = _errors(config_schema, tomllib.loads(text)) == []
    try:
        resolved(load_config(Path("/agent.toml"), system_root=tmp_path))  # what `config check` runs
        loader_says = True
    except UpdateError as error:
        assert isinstance(error, BadConfig) or "backend" in str(error), error
        loader_says = False
    assert (schema_says, loader_says) == (valid, valid)


RELEASE = """\
product = "demo-cabinet"
hardware = ["cab-a", "cab-b"]
[components.platform]
path = "platform"
version = "13.2.1"
sequence = 7
[components."game/lucky"]
path = "lucky"
version = "2.0"
sequence = 3
"""

RELEASE_CASES = [
    ("as-is", RELEASE, True),
    ("one-hardware", RELEASE.replace('["cab-a", "cab-b"]', '"cab-a"'), True),
    ("policies", RELEASE.replace("sequence = 7", 'sequence = 7\npolicy = "system"')
     .replace("sequence = 3", 'sequence = 3\npolicy = "content"'), True),
    ("unknown-top-level", "vendor = \"x\"\n" + RELEASE, False),
    ("misspelt-key", RELEASE.replace("version = \"2.0\"", "verison = \"2.0\""), False),
    ("unknown-component-key", RELEASE.replace("sequence = 3", "sequence = 3\nsigned = true"), False),
    ("no-hardware", RELEASE.replace('hardware = ["cab-a", "cab-b"]\n', ""), False),
    ("empty-hardware", RELEASE.replace('["cab-a", "cab-b"]', "[]"), False),
    ("bad-name", RELEASE.replace('"game/lucky"', '"Game/Lucky"'), False),
    ("negative-sequence", RELEASE.replace("sequence = 3", "sequence = -1"), False),
    ("string-sequence", RELEASE.replace("sequence = 3", 'sequence = "3"'), False),
    ("game-as-system", RELEASE.replace("sequence = 3", 'sequence = 3\npolicy = "system"'), False),
    ("platform-as-content", RELEASE.replace("sequence = 7", 'sequence = 7\npolicy = "content"'), False),
    ("no-components", RELEASE.split("[components")[0], False),
    ("component-not-a-table", RELEASE.split("[components")[0] + "components = 5\n", False),
]


@pytest.mark.parametrize("name, text, valid", RELEASE_CASES, ids=[c[0] for c in RELEASE_CASES])
def test_the_loader_and_the_schema_agree_on_releases(tmp_path, release_schema, name, text, valid):
    for tree in ("platform", "lucky"):
        (tmp_path / tree).mkdir()
    (tmp_path / "release.toml").write_text(text)
    schema_says = _errors(release_schema, tomllib.loads(text)) == []
    try:
        load_release(tmp_path / "release.toml")
        loader_says = True
    except BadRelease:
        loader_says = False
    assert (schema_says, loader_says) == (valid, valid)


def test_a_misspelt_release_key_names_the_nearest(tmp_path):
    (tmp_path / "platform").mkdir()
    (tmp_path / "release.toml").write_text(RELEASE.split('[components."game')[0].replace("version =", "verison ="))
    with pytest.raises(BadRelease, match=r"unknown key 'verison' in component 'platform' \(did you mean 'version'\?\)"):
        load_release(tmp_path / "release.toml")
